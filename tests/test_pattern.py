"""The Pattern type: constructors, validation, algebra, identity, conversions, immutability."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import assert_canonical_csr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sparse_ref.pattern as pattern_module
from sparse_ref import patterns
from sparse_ref.pattern import Pattern, StackedCSR

# At least 50 examples per property (more under HYPOTHESIS_PROFILE=slow, see conftest.py).
FAST = settings(max_examples=max(50, settings.default.max_examples), deadline=None)

MASK = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=bool)


def masks(shape=None, heads=None):
    """Random bool masks of shape (n_q, n_k) or (H, n_q, n_k) with small sides."""
    if shape is None:
        shape = hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=12)
    if heads is not None:
        shape = shape.map(lambda s: (heads, *s))
    return hnp.arrays(bool, shape)


pairs = st.tuples(st.integers(0, 10), st.integers(0, 10)).flatmap(
    lambda s: st.tuples(masks(st.just(s)), masks(st.just(s)))
)


# --------------------------------------------------------------------------- constructors
@FAST
@given(masks())
def test_from_dense_round_trip(mask):
    p = Pattern.from_dense(mask)
    np.testing.assert_array_equal(p.to_dense(), mask)
    assert p.shape == mask.shape and p.num_heads == 1 and p.nnz == mask.sum()
    assert p.family == "custom" and p.params == {}
    size = mask.size
    assert p.density == (mask.sum() / size if size else 0.0)
    assert_canonical_csr(p)


@FAST
@given(masks(heads=3))
def test_from_dense_heads(mask):
    p = Pattern.from_dense(mask)
    assert p.num_heads == 3 and p.shape == mask.shape[1:]
    np.testing.assert_array_equal(p.to_dense(), mask)
    for h in range(3):
        np.testing.assert_array_equal(p.head(h).to_dense(), mask[h])
        np.testing.assert_array_equal(p.to_csr(h).toarray(), mask[h])


def test_from_dense_rejects():
    with pytest.raises(TypeError, match="bool"):
        Pattern.from_dense(np.ones((2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        Pattern.from_dense(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="at least one head"):
        Pattern.from_dense(np.ones((0, 2, 2), dtype=bool))


def test_pattern_is_not_built_directly():
    with pytest.raises(TypeError, match="from_dense"):
        Pattern()


@FAST
@given(masks())
def test_from_csr_scipy_and_tuple(mask):
    want = Pattern.from_dense(mask)
    for matrix in (sp.csr_array(mask), sp.csr_matrix(mask), sp.coo_array(mask), sp.csc_array(mask)):
        assert Pattern.from_csr(matrix) == want
    csr = sp.csr_array(mask)
    assert Pattern.from_csr((csr.indptr, csr.indices, mask.shape)) == want
    assert (
        Pattern.from_csr((csr.indptr.astype(np.int64), csr.indices.astype(np.uint16), mask.shape))
        == want
    )


def test_from_csr_drops_explicit_zeros_and_does_not_touch_the_input():
    m = sp.csr_array((np.array([1, 0, 1]), np.array([0, 1, 2]), np.array([0, 2, 3])), shape=(2, 3))
    p = Pattern.from_csr(m)
    np.testing.assert_array_equal(p.to_dense(), [[1, 0, 0], [0, 0, 1]])
    assert m.nnz == 3 and m.indices.flags.writeable


@FAST
@given(st.integers(1, 8), st.integers(1, 8), st.data())
def test_from_csr_sort_dedupes(n_q, n_k, data):
    rows = data.draw(
        st.lists(st.lists(st.integers(0, n_k - 1), max_size=6), min_size=n_q, max_size=n_q)
    )
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([k for r in rows for k in r], dtype=np.int64)
    p = Pattern.from_csr((indptr, indices, (n_q, n_k)), sort=True)
    want = np.zeros((n_q, n_k), dtype=bool)
    for i, r in enumerate(rows):
        want[i, r] = True
    np.testing.assert_array_equal(p.to_dense(), want)
    if any(list(r) != sorted(set(r)) for r in rows):
        with pytest.raises(ValueError, match=r"strictly increasing.*row \d+"):
            Pattern.from_csr((indptr, indices, (n_q, n_k)))


@pytest.mark.parametrize(
    ("indptr", "indices", "shape", "exc", "message"),
    [
        ([0, 1], [0], (2, 2), ValueError, r"indptr must have length n_q \+ 1 = 3, got 2"),
        ([1, 1, 1], [0], (2, 2), ValueError, r"indptr\[0\] must be 0"),
        ([0, 2, 1, 2], [0, 1], (3, 2), ValueError, r"non-decreasing.*\(row 1\)"),
        ([0, 1, 2], [0], (2, 2), ValueError, r"indptr\[-1\] = 2 must equal len\(indices\) = 1"),
        ([0, 1, 1, 2], [0, 5], (3, 2), ValueError, r"out of range: row 2 has key 5"),
        ([0, 1, 2], [0, -1], (2, 2), ValueError, r"out of range: row 1 has key -1"),
        ([0, 0, 2, 2], [1, 0], (3, 2), ValueError, r"strictly increasing.*row 1 is not"),
        ([0, 0, 2, 2], [1, 1], (3, 2), ValueError, r"strictly increasing.*row 1 is not"),
        ([0, 1], [0.0], (1, 2), TypeError, r"indices must have an integer dtype"),
        ([0.0, 1.0], [0], (1, 2), TypeError, r"indptr must have an integer dtype"),
        ([0, 1], [True], (1, 2), TypeError, r"indices must have an integer dtype"),
        ([[0, 1]], [0], (1, 2), ValueError, r"indptr must be 1-D"),
        ([0, 1], [0], (1, -2), ValueError, r"shape must be a pair"),
        ([0, 1], [0], (1, 2, 3), ValueError, r"shape must be a pair"),
    ],
)
def test_from_csr_validation_names_rule_and_row(indptr, indices, shape, exc, message):
    with pytest.raises(exc, match=message):
        Pattern.from_csr((np.asarray(indptr), np.asarray(indices), shape))


def test_from_csr_rejects_other_types():
    with pytest.raises(TypeError, match="tuple"):
        Pattern.from_csr(np.eye(2, dtype=bool))


def test_int64_indices_when_n_k_needs_them():
    p = Pattern.from_csr(([0, 1, 2], [0, 2**31 + 5], (2, 2**31 + 10)))
    assert p.to_csr().indices.dtype == np.int64
    assert p.to_csr().indices.tolist() == [0, 2**31 + 5]


@FAST
@given(st.integers(0, 23), st.integers(0, 23), st.integers(1, 7))
def test_from_predicate_tiles(n_q, n_k, tile):
    def fn(i, j):
        assert i.dtype == np.int64 and j.dtype == np.int64 and i.shape[1] == 1 and j.shape[0] == 1
        assert i.shape[0] <= tile and j.shape[1] <= tile
        return ((i * 7 + j * 3) % 5 == 0) | (j == i + 1)

    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    want = ((i * 7 + j * 3) % 5 == 0) | (j == i + 1)
    p = Pattern.from_predicate(fn, n_q, n_k, tile=tile)
    np.testing.assert_array_equal(p.to_dense(), want)
    assert p == Pattern.from_dense(want)


def test_from_predicate_defaults_and_errors():
    assert Pattern.from_predicate(lambda i, j: j <= i, 5) == patterns.causal(5)
    assert Pattern.from_predicate(lambda i, j: np.True_, 3, 2) == patterns.dense(3, 2)  # broadcast
    with pytest.raises(TypeError, match="bool"):
        Pattern.from_predicate(lambda i, j: i + j, 3)
    with pytest.raises(ValueError, match="broadcastable"):
        Pattern.from_predicate(lambda i, j: np.ones((2, 2), dtype=bool), 3)
    with pytest.raises(ValueError, match="tile"):
        Pattern.from_predicate(lambda i, j: j <= i, 3, tile=0)


def test_stack_and_head():
    a, b = patterns.causal(4), patterns.sliding_window(4, 1, 0)
    s = Pattern.stack([a, b])
    assert s.num_heads == 2 and s.nnz == a.nnz + b.nnz
    assert s.head(0) == a and s.head(1) == b
    assert Pattern.stack([s, a]).num_heads == 3  # multi-head inputs are stacked head by head
    assert a.head(5) is a  # one head means "the same for every head"
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        s.head(2)
    with pytest.raises(TypeError, match="int"):
        s.head(True)
    with pytest.raises(ValueError, match="at least one"):
        Pattern.stack([])
    with pytest.raises(TypeError, match=r"heads\[1\]"):
        Pattern.stack([a, "b"])
    with pytest.raises(ValueError, match=r"heads\[1\] has shape"):
        Pattern.stack([a, patterns.causal(5)])


# --------------------------------------------------------------------------- algebra
@FAST
@given(pairs)
def test_algebra_matches_boolean_ops(pair):
    x, y = pair
    a, b = Pattern.from_dense(x), Pattern.from_dense(y)
    np.testing.assert_array_equal((a | b).to_dense(), x | y)
    np.testing.assert_array_equal((a & b).to_dense(), x & y)
    np.testing.assert_array_equal((a - b).to_dense(), x & ~y)
    assert (a | b).family == "union" and (a & b).family == "intersection"
    assert (a - b).family == "difference"
    for p in (a | b, a & b, a - b):
        assert_canonical_csr(p)


@FAST
@given(masks(heads=2), masks(st.just((1, 1))))
def test_algebra_broadcasts_one_head(multi, _):
    single = multi[0] ^ True
    a, b = Pattern.from_dense(multi), Pattern.from_dense(single)
    np.testing.assert_array_equal((a | b).to_dense(), multi | single)
    np.testing.assert_array_equal((b & a).to_dense(), multi & single)


def test_algebra_errors():
    a = patterns.causal(3)
    with pytest.raises(ValueError, match="shapes differ"):
        a | patterns.causal(4)
    two = Pattern.stack([a, a])
    three = Pattern.stack([a, a, a])
    with pytest.raises(ValueError, match="head counts differ"):
        two & three
    with pytest.raises(TypeError):
        a | np.ones((3, 3), dtype=bool)
    with pytest.raises(TypeError, match="ambiguous"):
        bool(a)
    with pytest.raises(TypeError, match="ambiguous"):
        a or a  # noqa: B018


@FAST
@given(masks(), st.sampled_from(["top_left", "bottom_right"]))
def test_causal_method(mask, align):
    n_q, n_k = mask.shape
    offset = 0 if align == "top_left" else n_k - n_q
    p = Pattern.from_dense(mask).causal(align)
    np.testing.assert_array_equal(p.to_dense(), mask & np.tri(n_q, n_k, offset, dtype=bool))
    assert p.family == "causal_of" and p.params["align"] == align


def test_causal_method_rejects_align():
    with pytest.raises(ValueError, match="align"):
        patterns.dense(3).causal("bottom-right")


@FAST
@given(masks(heads=2))
def test_transpose(mask):
    p = Pattern.from_dense(mask)
    t = p.transpose()
    assert t.shape == p.shape[::-1]
    np.testing.assert_array_equal(t.to_dense(), mask.transpose(0, 2, 1))
    assert t.transpose() == p
    assert_canonical_csr(t)


# --------------------------------------------------------------------------- identity
@FAST
@given(pairs)
def test_equality_and_hash(pair):
    x, y = pair
    a, b = Pattern.from_dense(x), Pattern.from_dense(y)
    assert (a == b) == np.array_equal(x, y)
    assert (a.fingerprint() == b.fingerprint()) == np.array_equal(x, y)
    same = Pattern.from_csr(sp.csr_array(x))
    assert a == same and hash(a) == hash(same) and len({a, same}) == 1


def test_equality_is_structural_and_typed():
    assert patterns.causal(4) == Pattern.from_dense(np.tril(np.ones((4, 4), dtype=bool)))
    assert patterns.causal(4) != patterns.causal(4, 5)
    assert patterns.dense(0, 3) != patterns.dense(3, 0)
    assert patterns.causal(2) != Pattern.stack([patterns.causal(2)] * 2)
    assert (patterns.causal(2) == "causal") is False


def test_fingerprint_is_stable():
    # Pinned: changing the canonical encoding must be a deliberate, versioned decision.
    p = Pattern.from_dense(MASK)
    assert p.fingerprint() == "6146e75d0a1976f985198f8a3cc943f6d4fc85a71678a85134bc3a25b8a3bcbc"
    # ... and it is the documented recipe: sha256(header, row counts as <i8, keys as <i8).
    digest = hashlib.sha256()
    header = {"format": "sparse-ref-pattern-v1", "shape": [3, 3], "heads": 1}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(np.array([2, 0, 3], "<i8").tobytes())
    digest.update(np.array([0, 2, 0, 1, 2], "<i8").tobytes())
    assert p.fingerprint() == digest.hexdigest()
    # Independent of how it was built and of the family label.
    assert (
        Pattern.from_csr(([0, 2, 2, 5], [0, 2, 0, 1, 2], (3, 3))).fingerprint() == p.fingerprint()
    )
    assert Pattern.stack([p, p]).fingerprint() != p.fingerprint()
    assert Pattern.from_dense(MASK.T).fingerprint() != p.fingerprint()


# --------------------------------------------------------------------------- conversions
def test_to_dense_limit(monkeypatch):
    monkeypatch.setattr(pattern_module, "DENSE_LIMIT", 8)
    p = patterns.causal(3)
    with pytest.raises(ValueError, match="DENSE_LIMIT"):
        p.to_dense()
    np.testing.assert_array_equal(p.to_dense(force=True), np.tri(3, dtype=bool))
    assert patterns.causal(2, 4).to_dense().shape == (2, 4)  # exactly at the limit is fine
    with pytest.raises(ValueError, match="force=True"):
        Pattern.stack([patterns.causal(2, 4)] * 2).to_dense()  # heads count


def test_to_dense_limit_default_needs_no_memory():
    n_q, n_k = 1 << 15, 1 << 14  # 2**29 > DENSE_LIMIT = 2**28, yet an empty pattern
    big = Pattern.from_csr(
        (np.zeros(n_q + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), (n_q, n_k))
    )
    with pytest.raises(ValueError, match="DENSE_LIMIT"):
        big.to_dense()


@FAST
@given(masks(heads=3))
def test_stacked_csr(mask):
    p = Pattern.from_dense(mask)
    s = p.stacked_csr()
    assert isinstance(s, StackedCSR)
    n_q = mask.shape[1]
    assert s.indptr.shape == (3, n_q + 1) and s.indptr.dtype == np.int64
    assert s.indices.dtype == np.int32 and len(s.indices) == p.nnz
    for h in range(3):
        for i in range(n_q):
            keys = s.indices[s.indptr[h, i] : s.indptr[h, i + 1]]
            np.testing.assert_array_equal(keys, np.flatnonzero(mask[h, i]))
    assert p.stacked_csr() is s  # cached
    assert not s.indptr.flags.writeable


def test_stacked_csr_one_head():
    p = patterns.sliding_window(6, 1, 1)
    s = p.stacked_csr()
    assert s.indptr.shape == (1, 7)
    np.testing.assert_array_equal(s.indptr[0], p.to_csr().indptr)
    np.testing.assert_array_equal(s.indices, p.to_csr().indices)


# --------------------------------------------------------------------------- immutability
def test_immutable():
    p = patterns.causal(4)
    with pytest.raises(AttributeError, match="immutable"):
        p.family = "x"
    with pytest.raises(AttributeError, match="immutable"):
        p._heads = ()
    csr = p.to_csr()
    for arr in (csr.indptr, csr.indices, csr.data):
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
    params = p.params
    params["n_q"] = 99
    assert p.params["n_q"] == 4  # params hands out a copy
    assert p == patterns.causal(4)


def test_repr():
    assert repr(patterns.causal(4)) == (
        "Pattern(family='causal', shape=(4, 4), heads=1, nnz=10, density=0.625)"
    )


# --------------------------------------------------------------------------- block form
block_sizes = st.tuples(st.integers(1, 5), st.integers(1, 5))


@st.composite
def layouts(draw, heads=None):
    """(layout (H, nbq, nbk), block, n_q, n_k) with a ragged last block row/column."""
    bq, bk = draw(block_sizes)
    h = heads or draw(st.integers(1, 3))
    nbq, nbk = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    layout = draw(hnp.arrays(bool, (h, nbq, nbk)))
    n_q = draw(st.integers((nbq - 1) * bq + 1, nbq * bq))
    n_k = draw(st.integers((nbk - 1) * bk + 1, nbk * bk))
    return layout, (bq, bk), n_q, n_k


def layout_mask(layout, block, n_q, n_k):
    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    return layout[:, i // block[0], j // block[1]]


@FAST
@given(layouts())
def test_from_block_layout(args):
    layout, block, n_q, n_k = args
    p = Pattern.from_block_layout(layout, block, n_q=n_q, n_k=n_k)
    want = layout_mask(layout, block, n_q, n_k)
    assert p.block == block and p.num_heads == len(layout) and p.shape == (n_q, n_k)
    np.testing.assert_array_equal(p.to_dense(), want if len(layout) > 1 else want[0])
    assert p.nnz == want.sum()
    assert (
        p == Pattern.from_dense(want) and p.fingerprint() == Pattern.from_dense(want).fingerprint()
    )
    assert patterns.build(p.family, **json.loads(json.dumps(p.params))) == p
    for h in range(p.num_heads):
        np.testing.assert_array_equal(p.to_csr(h).toarray(), want[h])  # materialised on demand
        rows = np.arange(0, n_q, 2)
        np.testing.assert_array_equal(p.mask_rows(rows, h), want[h][rows])
    s = p.stacked_csr()
    assert s.indptr.shape == (p.num_heads, n_q + 1) and len(s.indices) == p.nnz


@FAST
@given(masks(), block_sizes)
def test_to_bsr_from_bsr_round_trip(mask, block):
    p = Pattern.from_dense(mask)
    bs = p.to_bsr(block)
    assert p.to_bsr(block) is bs  # cached
    q = Pattern.from_bsr(bs)
    assert q.block == block and q == p and p == q and hash(q) == hash(p)
    assert q.fingerprint() == p.fingerprint()
    both = p.with_block_form(block)
    assert both.block == block and both == p and both.to_csr() is p.to_csr()
    n_q, n_k = mask.shape
    padded = np.zeros((-(-n_q // block[0]) * block[0], -(-n_k // block[1]) * block[1]), bool)
    padded[:n_q, :n_k] = mask
    if padded.size:
        scipy_bsr = sp.bsr_array(padded, blocksize=block)  # may store block columns unsorted
        assert Pattern.from_bsr(scipy_bsr, shape=mask.shape, sort=True) == p


def test_block_form_errors():
    p = patterns.causal(4)
    with pytest.raises(ValueError, match="no block form"):
        p.to_bsr()
    with pytest.raises(TypeError, match="BlockSparse or a scipy BSR"):
        Pattern.from_bsr(sp.csr_array(np.eye(2, dtype=bool)))
    with pytest.raises(ValueError, match="n_q = 9 does not fit"):
        Pattern.from_bsr(sp.bsr_array(np.eye(4, dtype=bool), blocksize=(2, 2)), shape=(9, 4))
    with pytest.raises(ValueError, match=r"block columns must be strictly increasing.*block row 0"):
        bad = sp.bsr_array(
            (np.ones((2, 2, 2), dtype=bool), np.array([1, 0]), np.array([0, 2, 2])), shape=(4, 4)
        )
        Pattern.from_bsr(bad)


@FAST
@given(layouts(heads=2), masks(st.just((1, 1))), st.sampled_from(["top_left", "bottom_right"]))
def test_block_form_algebra_transpose_causal(args, _, align):
    layout, block, n_q, n_k = args
    a = Pattern.from_block_layout(layout, block, n_q=n_q, n_k=n_k)
    x = layout_mask(layout, block, n_q, n_k)
    y = np.random.default_rng(n_q * 31 + n_k).random((n_q, n_k)) < 0.4
    b = Pattern.from_dense(y)  # token CSR only
    b_blocked = b.with_block_form(block)
    for other, form in ((b, None), (b_blocked, block)):
        for got, want in ((a | other, x | y), (a & other, x & y), (a - other, x & ~y)):
            assert got.block == form  # stays blockwise only between block forms of one size
            np.testing.assert_array_equal(got.to_dense(), want)
    t = a.transpose()
    assert t.block == block[::-1] and t.shape == (n_k, n_q)
    np.testing.assert_array_equal(t.to_dense(), x.transpose(0, 2, 1))
    offset = 0 if align == "top_left" else n_k - n_q
    c = a.causal(align)
    assert c.block == block
    np.testing.assert_array_equal(c.to_dense(), x & np.tri(n_q, n_k, offset, dtype=bool))
    assert a.head(1).block == block and a.head(1) == Pattern.from_dense(x[1])
    s = Pattern.stack([a.head(0), a.head(1)])
    assert s.block == block and s == a
    mixed = Pattern.stack([a.head(0), b])
    assert mixed.block is None and mixed == Pattern.from_dense(np.stack([x[0], y]))
    for p in (c, t, s, a.head(1), a | a.head(0)):
        assert patterns.build(p.family, **json.loads(json.dumps(p.params))) == p


def test_from_csr_leaves_the_callers_arrays_alone():
    indptr, indices = np.array([0, 1, 2]), np.array([0, 2**31 + 5])  # int64 all the way through
    p = Pattern.from_csr((indptr, indices, (2, 2**31 + 10)))
    assert indptr.flags.writeable and indices.flags.writeable
    indices[1] = 7
    assert p.to_csr().indices.tolist() == [0, 2**31 + 5]


def test_from_csr_accepts_empty_lists():
    p = Pattern.from_csr(([0, 0, 0], [], (2, 3)))
    assert p.nnz == 0 and p.shape == (2, 3)
