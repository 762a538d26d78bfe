"""The block form: BlockSparse, its builders, CSR <-> BSR, and block-only Patterns."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import Pattern, blocks, patterns
from sparse_ref import pattern as pattern_module

# (family, kwargs) of the families described by terms: token CSR and block form from one list
FAMILIES = [
    ("causal", dict(n_q=37, n_k=37)),
    ("causal", dict(n_q=20, n_k=53, align="bottom_right")),
    ("causal", dict(n_q=53, n_k=20, align="bottom_right")),
    ("causal", dict(n_q=40, n_k=29, align="top_left")),
    ("dense", dict(n_q=19, n_k=33)),
    ("sliding_window", dict(n=61, left=9, right=3)),
    ("sliding_window", dict(n=45, left=0, right=0)),
    ("causal_sliding_window", dict(n=70, window=13)),
    ("causal_sliding_window", dict(n=70, window=0)),
    ("causal_sliding_window", dict(n=30, window=100)),
    ("sinks", dict(n=66, num_sinks=3, window=7)),
    ("sinks", dict(n=66, num_sinks=0, window=0)),
    ("prefix_lm", dict(n=50, prefix=17)),
    ("global_local", dict(n=64, left=4, right=2, global_tokens=[0, 1, 2, 30, -1])),
    ("global_local", dict(n=33, left=1, right=1, global_tokens=[])),
]
BLOCKS = [1, 4, (8, 5), (3, 16), 16, 64]


def _catalog(name: str, kwargs: dict) -> Pattern:
    return getattr(patterns, name)(**kwargs)


def _blocked(name: str, kwargs: dict, block) -> Pattern:
    """The family's block form (``blocks.from_terms``) alone, without its params."""
    return Pattern.from_bsr(getattr(patterns, name)(**kwargs, block=block).block_form)


@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_block_form_of_terms_equals_their_token_csr(name, kwargs, block):
    ref = _catalog(name, kwargs)
    p = _blocked(name, kwargs, block)
    assert p.block == blocks.check_block(block)
    assert p == ref and ref == p
    assert p.nnz == ref.nnz
    assert p.fingerprint() == ref.fingerprint()
    assert hash(p) == hash(ref)
    np.testing.assert_array_equal(p.to_dense(), ref.to_dense())
    csr = p.to_csr()
    np.testing.assert_array_equal(csr.indptr, ref.to_csr().indptr)
    np.testing.assert_array_equal(csr.indices, ref.to_csr().indices)
    # the direct builder and the CSR conversion give the same canonical arrays
    assert ref.to_bsr(block) == p.to_bsr()


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES[:12], ids=[f[0] for f in FAMILIES[:12]])
def test_block_algebra_matches_csr_algebra(name, kwargs):
    ref = _catalog(name, kwargs)
    p = _blocked(name, kwargs, (4, 8))
    n_q, n_k = ref.shape
    other_ref = Pattern.from_dense(np.random.default_rng(3).random((n_q, n_k)) < 0.2)
    other = other_ref.with_block_form((4, 8))
    for a, b in (
        (p | other, ref | other_ref),
        (p & other, ref & other_ref),
        (p - other, ref - other_ref),
        (other - p, other_ref - ref),
    ):
        assert a.block == (4, 8)  # stays a block form
        assert a == b
    assert p.transpose() == ref.transpose()
    assert p.transpose().block == (8, 4)
    for align in ("top_left", "bottom_right"):
        assert p.causal(align) == ref.causal(align)
        assert p.causal(align).block == (4, 8)
    assert (p | other_ref) == (ref | other_ref)  # mixed forms go through CSR


def test_block_form_stays_in_blocks_at_a_million_tokens():
    n, window = 1 << 20, 4096
    bs = patterns.causal_sliding_window(n, window, block=128).block_form
    p = Pattern.from_bsr(bs)
    assert p.nnz == n * window - window * (window - 1) // 2
    assert bs.nblocks < 300_000 and len(bs.mask_table) == 2  # deduplicated partial masks
    rows = np.array([0, 1, 4095, 4096, 500_000, n - 1])
    mask = p.mask_rows(rows)
    cols = np.arange(n)
    expected = (cols[None, :] <= rows[:, None]) & (cols[None, :] > rows[:, None] - window)
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(ValueError, match="CSR_LIMIT"):
        p.to_csr()
    assert p.transpose().shape == (n, n)
    assert (p & p) == p  # blockwise equality, no token CSR


def test_to_csr_refuses_above_the_limit(monkeypatch):
    p = Pattern.from_bsr(patterns.causal_sliding_window(100, 10, block=16).block_form)
    monkeypatch.setattr(pattern_module, "CSR_LIMIT", 100)
    with pytest.raises(ValueError, match=r"CSR_LIMIT = 100"):
        p.to_csr()
    assert p.mask_rows([5]).sum() == 6  # the block form still answers


def test_mask_limit_refuses_unstructured_patterns(monkeypatch):
    p = patterns.random(256, 256, per_row=8, seed=0)
    monkeypatch.setattr(blocks.form, "MASK_LIMIT", 1000)  # where the builders read it
    with pytest.raises(ValueError, match="MASK_LIMIT"):
        p.to_bsr(16)


# ----------------------------------------------------------------------------- round trips
@st.composite
def masks_and_blocks(draw):
    heads = draw(st.integers(1, 2))
    n_q = draw(st.integers(0, 23))
    n_k = draw(st.integers(0, 23))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**31))
    mask = np.random.default_rng(seed).random((heads, n_q, n_k)) < density
    block = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    return mask, block


@given(masks_and_blocks())
def test_bsr_csr_round_trip(case):
    mask, block = case
    p = Pattern.from_dense(mask)
    bs = p.to_bsr(block)
    assert bs.block == block and bs.num_heads == mask.shape[0]
    b = Pattern.from_bsr(bs)
    assert b == p and p == b
    assert b.nnz == p.nnz == int(mask.sum())
    assert b.fingerprint() == p.fingerprint()
    np.testing.assert_array_equal(b.to_dense(), p.to_dense())
    for h in range(mask.shape[0]):
        np.testing.assert_array_equal(b.to_csr(h).indices, p.to_csr(h).indices)
        np.testing.assert_array_equal(b.to_csr(h).indptr, p.to_csr(h).indptr)
        rows = np.arange(mask.shape[1])[::-1]
        np.testing.assert_array_equal(b.mask_rows(rows, head=h), mask[h][rows])
    # canonical: full flags exact, partial masks not empty, not full
    nr = np.minimum(block[0], p.shape[0] - bs.block_rows() * block[0])
    nc = np.minimum(block[1], p.shape[1] - bs.indices.astype(np.int64) * block[1])
    for i in range(min(bs.nblocks, 50)):
        h = np.searchsorted(bs.indptr[:, -1], i, side="right")
        r0, c0 = bs.block_rows()[i] * block[0], bs.indices[i] * block[1]
        sub = mask[h, r0 : r0 + nr[i], c0 : c0 + nc[i]]
        assert sub.any()
        assert bool(bs.full[i]) == bool(sub.all())
    assert b.transpose() == p.transpose()
    assert Pattern.from_bsr(p.transpose().to_bsr(block[::-1])) == p.transpose()


@given(masks_and_blocks())
def test_scipy_bsr_round_trip(case):
    mask, block = case
    p = Pattern.from_dense(mask[0])
    a = p.to_bsr(block).to_scipy()
    assert isinstance(a, sp.bsr_array) and a.blocksize == block
    padded = a.toarray()
    np.testing.assert_array_equal(padded[: p.shape[0], : p.shape[1]], mask[0])
    assert not padded[p.shape[0] :].any() and not padded[:, p.shape[1] :].any()
    assert Pattern.from_bsr(a, shape=p.shape) == p


def test_scipy_bsr_input_with_zeros_and_unsorted_blocks():
    data = np.zeros((3, 2, 2), dtype=bool)
    data[0] = [[1, 0], [0, 0]]
    data[1] = True  # full
    # data[2] all False: dropped
    a = sp.bsr_array(
        (data, np.array([1, 0, 1]), np.array([0, 2, 3])), shape=(4, 4), blocksize=(2, 2)
    )
    with pytest.raises(ValueError, match="block row 0"):
        Pattern.from_bsr(a)  # block columns 1, 0 are not increasing
    p = Pattern.from_bsr(a, sort=True)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 2] = True
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(p.to_dense(), expected)
    assert p.to_bsr().nblocks == 2  # the all-False block is gone
    assert p.to_bsr().full.tolist() == [True, False]


def test_multihead_stack_and_head():
    a = Pattern.from_bsr(patterns.causal_sliding_window(40, 5, block=8).block_form)
    b = Pattern.from_bsr(patterns.sinks(40, 2, 3, block=8).block_form)
    s = Pattern.stack([a, b])
    assert s.block == (8, 8) and s.num_heads == 2
    assert s.to_bsr().num_heads == 2
    assert s.head(0) == a and s.head(1) == b
    assert s == Pattern.stack([patterns.causal_sliding_window(40, 5), patterns.sinks(40, 2, 3)])
    csr_stack = Pattern.stack([Pattern.from_csr(a.to_csr()), Pattern.from_csr(b.to_csr())])
    assert s.fingerprint() == csr_stack.fingerprint()
    assert s.nnz == a.nnz + b.nnz
    mixed = Pattern.stack([a, patterns.sinks(40, 2, 3)])  # forms differ: CSR
    assert mixed.block is None and mixed == s


def test_from_block_layout_ragged_and_per_head():
    rng = np.random.default_rng(0)
    layout = rng.random((3, 4, 5)) < 0.5
    layout[1, 2] = False  # an empty block row
    p = Pattern.from_block_layout(layout, (8, 7), n_q=29, n_k=30)
    dense = np.kron(layout, np.ones((8, 7), dtype=bool))[:, :29, :30]
    np.testing.assert_array_equal(p.to_dense(), dense)
    assert p.block == (8, 7) and p.family == "block_sparse"
    assert p.to_bsr().full.all()
    if "block_sparse" in patterns.available():  # once the catalog registers patterns/block.py
        assert patterns.build(p.family, **p.params) == p


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_q=33), "n_q = 33 does not fit"),
        (dict(n_q=24), "n_q = 24 does not fit"),
        (dict(n_k=0), "n_k = 0 does not fit"),
    ],
)
def test_from_block_layout_rejects_shapes_that_miss_the_last_block(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Pattern.from_block_layout(np.ones((4, 5), dtype=bool), 8, **kwargs)


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (0, ValueError),
        (-4, ValueError),
        ((16, 0), ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("16", TypeError),
        ((16, 8, 4), TypeError),
        ((16, 2.0), TypeError),
        (None, TypeError),
    ],
)
def test_bad_block_sizes(block, error):
    with pytest.raises(error, match="block"):
        blocks.check_block(block)
    if block is not None:  # to_bsr(None): the pattern's own block form; block=None: token CSR
        with pytest.raises(error, match="block"):
            patterns.causal(8).to_bsr(block)
        with pytest.raises(error, match="block"):
            patterns.causal_sliding_window(8, 2, block=block)
    with pytest.warns(DeprecationWarning), pytest.raises(error, match="block"):
        blocks.causal_sliding_window(8, 2, block=block)  # the deprecated alias requires a block
    with pytest.raises(error, match="block"):
        Pattern.from_block_layout(np.ones((2, 2), dtype=bool), block)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (dict(indptr=[0, 2, 1], indices=[0, 1]), r"non-decreasing \(head 0, block row 1\)"),
        (dict(indptr=[0, 1, 2], indices=[0, 5]), "block row 1 has 5"),
        (dict(indptr=[0, 2, 2], indices=[1, 0]), "block row 0 is not"),
        (dict(indptr=[0, 1], indices=[0]), "length nbq"),
        (dict(indptr=[0, 1, 3], indices=[0, 1]), "must equal len"),
        (dict(indptr=[0.0, 1, 2], indices=[0, 1]), "integer dtype"),
        (
            dict(
                indptr=[0, 1, 2],
                indices=[0, 1],
                full=[True, False],
                masks=np.ones((1, 4, 4), dtype=bool),
            ),
            "block row 1, block column 1 allows entries outside",
        ),
    ],
)
def test_from_arrays_validation_names_rule_and_block_row(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        blocks.BlockSparse.from_arrays(block=4, shape=(7, 6), **args)


@pytest.mark.parametrize(
    ("family", "args"),
    [
        ("causal", (30, 20, "bottom_right")),
        ("sliding_window", (30, 2, 5)),
        ("global_local", (30, 1, 1, [0, 7])),
    ],
)
def test_deprecated_block_builders_give_the_catalog_block_form(family, args):
    with pytest.warns(DeprecationWarning, match=f"patterns.{family}"):
        old = getattr(blocks, family)(*args, block=(8, 4))
    assert old == getattr(patterns, family)(*args, block=(8, 4)).block_form


def test_check_format_finds_non_canonical_masks():
    good = patterns.causal(10, block=4).block_form
    good.check_format(full_check=True)
    table = np.concatenate([good.mask_table, good.mask_table[:1]])
    dup = blocks.BlockSparse(
        good.block, good.shape, good.indptr, good.indices, good.mask_index, table
    )
    with pytest.raises(ValueError, match="canonical"):
        dup.check_format(full_check=True)
    fill = blocks.BlockSparse(
        good.block,
        good.shape,
        good.indptr,
        good.indices,
        np.zeros_like(good.mask_index),
        np.ones((1, 4, 4), dtype=bool),
    )
    with pytest.raises(ValueError, match="empty, full, or allows entries outside"):
        fill.check_format()


def test_construction_checks_dtypes_and_endpoints_cheaply():
    good = patterns.causal(10, block=4).block_form
    with pytest.raises(ValueError, match="int32"):
        blocks.BlockSparse(
            good.block,
            good.shape,
            good.indptr,
            good.indices.astype(np.int64),
            good.mask_index,
            good.mask_table,
        )
    with pytest.raises(ValueError, match=r"indptr\[-1\] = 6 must equal len\(indices\) = 5"):
        blocks.BlockSparse(
            good.block,
            good.shape,
            good.indptr,
            good.indices[:-1],
            good.mask_index[:-1],
            good.mask_table,
        )
    bad = good.indices.copy()
    bad[1] = 7  # out of range: found by the full check only
    unchecked = blocks.BlockSparse(
        good.block, good.shape, good.indptr, bad, good.mask_index, good.mask_table
    )
    with pytest.raises(ValueError, match="block column out of range: block row 1 has 7"):
        unchecked.check_format()
    with pytest.raises(ValueError, match="block column out of range"):
        Pattern.from_bsr(unchecked).check_format()


def test_dedup_and_kernel_form():
    bs = patterns.causal_sliding_window(4096, 300, block=(64, 32)).block_form
    kb = Pattern.from_bsr(bs).stacked_bsr()
    assert kb.block == (64, 32) and kb.indptr.shape == (1, 65) and kb.indptr.dtype == np.int64
    assert kb.indices.dtype == np.int32 and kb.mask_index.dtype == np.int32
    assert len(kb.masks) < 30  # distinct masks only
    assert (kb.mask_index < len(kb.masks)).all()
    np.testing.assert_array_equal(bs.masks, bs.mask_table[bs.mask_index[bs.mask_index >= 0]])
    assert not bs.indices.flags.writeable and not bs.mask_table.flags.writeable


def test_with_block_form_keeps_csr_and_adds_blocks():
    p = patterns.sliding_window(50, 3, 3)
    q = p.with_block_form(8)
    assert p.block is None and q.block == (8, 8)
    assert q == p and q.to_csr() is p.to_csr()
    assert q.to_bsr() is q.to_bsr(8)
    with pytest.raises(ValueError, match="pass block"):
        p.to_bsr()


@pytest.mark.parametrize("max_cells", [1, 100, 5000, 1 << 22])
def test_streamed_rows_split_heavy_block_rows(max_cells):
    bs = patterns.global_local(300, 3, 3, [0, 1, 150, 299], block=(32, 16)).block_form
    ref = patterns.global_local(300, 3, 3, [0, 1, 150, 299]).to_csr()
    chunks = list(bs.iter_csr(0, max_cells))
    starts = [c[0] for c in chunks]
    assert starts == sorted(starts) and starts[0] == 0
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), np.diff(ref.indptr))
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), ref.indices)
    counts = np.concatenate(list(bs.iter_row_counts(0, max_cells)))
    np.testing.assert_array_equal(counts, np.diff(ref.indptr))
