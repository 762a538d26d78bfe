"""``patterns._ranges``: the rectangular and ragged fill paths of ``progressions_csr`` agree."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import expect_pattern, grid

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
