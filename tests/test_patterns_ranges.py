"""``patterns._ranges``: the rectangular and ragged fill paths of ``progressions_csr`` agree, slices
of ``extra`` are copied, and ``terms_csr`` gives the union of any terms."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FAST, expect_pattern, grid
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.blocks import Term
from sparse_ref.patterns import (
    _ranges,
    causal_sliding_window,
    dense,
    dilated,
    document,
    global_local,
    sinks,
    strided,
)


def test_large_builds_use_the_rectangular_path():
    # Big enough that the bulk goes through the broadcast fill and the edges through the ragged one.
    n, w = 3000, 300
    p = causal_sliding_window(n, w)
    csr = p.to_csr()
    assert p.nnz == sum(min(i + 1, w) for i in range(n))
    np.testing.assert_array_equal(csr.indices[csr.indptr[2999] :], np.arange(2700, 3000))
    np.testing.assert_array_equal(csr.indices[csr.indptr[5] : csr.indptr[6]], np.arange(6))
    expect_pattern(p, np.tri(n, k=0, dtype=bool) & ~np.tri(n, k=-w, dtype=bool))
    g = global_local(3000, 200, 100, [0, 1, 2, 1500, 2999])
    i, j = grid(3000)
    is_g = np.isin(np.arange(3000), [0, 1, 2, 1500, 2999])
    expect_pattern(g, ((i - 200 <= j) & (j <= i + 100)) | is_g[:, None] | is_g[None, :])
    d = document(lengths=[700, 1, 1200, 99])
    ids = np.repeat(np.arange(4), [700, 1, 1200, 99])
    expect_pattern(d, ids[:, None] == ids[None, :])


@pytest.mark.parametrize(("min_keys", "chunk"), [(1, 1 << 22), (1 << 60, 5), (1 << 60, 1 << 22)])
def test_fill_paths_agree(monkeypatch, min_keys, chunk):
    # The rectangular fill, the ragged fill and its chunking must give the same arrays.
    cases = [
        lambda: causal_sliding_window(300, 40),
        lambda: sinks(200, 3, 17),
        lambda: dilated(250, 9, 3),
        lambda: strided(90, 4, causal=True),
        lambda: global_local(150, 5, 9, [0, 1, 70, 149]),
        lambda: document(lengths=[50, 1, 80, 0, 20]),
        lambda: dense(40, 30),
    ]
    want = [make() for make in cases]
    monkeypatch.setattr(_ranges, "_MIN_KEYS_PER_CALL", min_keys)
    monkeypatch.setattr(_ranges, "_RAGGED_CHUNK", chunk)
    for make, p in zip(cases, want, strict=True):
        got = make()
        assert got == p, got.family
        np.testing.assert_array_equal(got.to_csr().indices, p.to_csr().indices)


@pytest.mark.parametrize(("min_keys", "chunk"), [(1, 1 << 22), (1 << 60, 5), (1 << 60, 1 << 22)])
def test_progressions_copy_slices_of_extra(monkeypatch, min_keys, chunk):
    # Positions >= n_k stand for extra[p - n_k]. Equal lengths down the rows but different
    # starts (slices of extra in some rows, counted runs in others) make one rectangle.
    n_k, extra = 20, np.array([1, 5, 9, 13, 17])
    rows = 12
    r = np.arange(rows)
    start = np.stack([np.where(r % 2, n_k + r % 3, 2), np.full(rows, 18)], axis=1)
    count = np.stack([np.full(rows, 2), np.where(r < 6, 2, 1)], axis=1)
    want = [
        [*(extra[i % 3 : i % 3 + 2] if i % 2 else [2, 3]), *range(18, 18 + int(count[i, 1]))]
        for i in range(rows)
    ]
    monkeypatch.setattr(_ranges, "_MIN_KEYS_PER_CALL", min_keys)
    monkeypatch.setattr(_ranges, "_RAGGED_CHUNK", chunk)
    indptr, indices = _ranges.progressions_csr(start, count, n_k, extra=extra)
    np.testing.assert_array_equal(indptr, np.cumsum([0] + [len(w) for w in want]))
    np.testing.assert_array_equal(indices, np.concatenate(want))
    assert indices.dtype == np.int32


bound = st.one_of(st.none(), st.integers(-12, 40))


@st.composite
def terms(draw):
    """A random ``blocks.Term``: each bound absent (unbounded) or a small int."""
    values = {}
    for lo, hi in (("lo_d", "hi_d"), ("lo_j", "hi_j"), ("lo_i", "hi_i")):
        for name in (lo, hi):
            v = draw(bound)
            if v is not None:
                values[name] = v
    return Term(**values)


@FAST
@given(st.integers(0, 30), st.integers(0, 30), st.lists(terms(), max_size=10))
def test_terms_csr_against_brute_force(n_q, n_k, some_terms):
    # Constant terms (rows, columns, blocks), diagonal ones, terms on some rows only: the union.
    i, j = grid(n_q, n_k)
    mask = np.zeros((n_q, n_k), dtype=bool)
    for t in some_terms:
        mask |= (
            (t.lo_d <= j - i)
            & (j - i <= t.hi_d)
            & (t.lo_j <= j)
            & (j <= t.hi_j)
            & (t.lo_i <= i)
            & (i <= t.hi_i)
        )
    indptr, indices = _ranges.terms_csr(some_terms, (n_q, n_k))
    np.testing.assert_array_equal(indptr, np.concatenate(([0], np.cumsum(mask.sum(axis=1)))))
    np.testing.assert_array_equal(indices, np.nonzero(mask)[1])
