"""sparse_ref.interop.torch: FlexAttention BlockMask and torch sparse CSR, run against the oracle.

FlexAttention runs eagerly on the CPU (its unfused path evaluates ``mask_mod`` everywhere); the
block lists themselves are checked against FlexAttention's own ``create_block_mask``, by the round
trip (``from_flex_block_mask`` reads only the lists and evaluates ``mask_mod`` on partial blocks),
and by a compiled run (marked ``slow``: inductor compiles for ~20 s).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the torch extra) is not installed")
flex = pytest.importorskip(
    "torch.nn.attention.flex_attention", reason="FlexAttention needs torch >= 2.5"
)

import sparse_ref  # noqa: E402
from sparse_ref import patterns, testing  # noqa: E402
from sparse_ref.interop.torch import (  # noqa: E402
    from_flex_block_mask,
    from_mask_mod,
    from_torch_sparse_csr,
    to_flex_block_mask,
    to_torch_sparse_csr,
)
from sparse_ref.pattern import Pattern  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _with_empty_rows(n: int) -> Pattern:
    mask = np.random.default_rng(7).random((n, n)) < 0.1
    mask[::5] = False  # every fifth query sees no key
    return Pattern.from_dense(mask)


CASES = {
    "causal window, ragged n": lambda: patterns.causal_sliding_window(300, 50),
    "bigbird 2 heads": lambda: patterns.bigbird(200, 16, num_heads=2, seed=1),
    "random (all partial)": lambda: patterns.random(130, per_row=7, seed=2),
    "document": lambda: patterns.document(lengths=[100, 60, 40]),
    "empty rows": lambda: _with_empty_rows(90),
    "rectangular causal": lambda: patterns.causal(70, 150, align="bottom_right"),
}


@pytest.fixture(params=list(CASES), scope="module")
def pattern(request) -> Pattern:
    return CASES[request.param]()


@pytest.mark.parametrize("block", [64, (32, 16)])
def test_block_mask_round_trip(pattern, block):
    bm = to_flex_block_mask(pattern, block)
    bq, bk = (block, block) if isinstance(block, int) else block
    assert tuple(bm.BLOCK_SIZE) == (bq, bk)
    assert tuple(bm.seq_lengths) == pattern.shape
    assert bm.kv_num_blocks.shape == (1, pattern.num_heads, -(-pattern.shape[0] // bq))
    assert from_flex_block_mask(bm) == pattern


def test_block_lists_are_full_and_partial_blocks(pattern):
    bsr = pattern.to_bsr(64)
    bm = to_flex_block_mask(pattern, 64)
    heads, nbq = bsr.num_heads, bsr.grid[0]
    flat_row = np.repeat(np.arange(heads * nbq), np.diff(bsr.indptr, axis=1).ravel())
    full = np.bincount(flat_row, weights=bsr.full, minlength=heads * nbq)
    part = np.bincount(flat_row, weights=~bsr.full, minlength=heads * nbq)
    np.testing.assert_array_equal(bm.full_kv_num_blocks[0].numpy().ravel(), full)
    np.testing.assert_array_equal(bm.kv_num_blocks[0].numpy().ravel(), part)
    # listed columns are the stored blocks, ascending
    for h in range(heads):
        for bi in range(nbq):
            lo, hi = bsr.indptr[h, bi], bsr.indptr[h, bi + 1]
            cols, is_full = bsr.indices[lo:hi], bsr.full[lo:hi]
            nf, npart = int(full[h * nbq + bi]), int(part[h * nbq + bi])
            assert bm.full_kv_indices[0, h, bi, :nf].tolist() == cols[is_full].tolist()
            assert bm.kv_indices[0, h, bi, :npart].tolist() == cols[~is_full].tolist()


def test_eager_flex_attention_matches_the_oracle(pattern):
    torch.manual_seed(0)
    n_q, n_k = pattern.shape
    H = 2
    q = torch.randn(1, H, n_q, 16, dtype=torch.float64)
    k = torch.randn(1, H, n_k, 16, dtype=torch.float64)
    v = torch.randn(1, H, n_k, 8, dtype=torch.float64)
    bm = to_flex_block_mask(pattern, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, lse = flex.flex_attention(q, k, v, block_mask=bm, return_lse=True)
    testing.assert_close_to_oracle(
        out.numpy(), q.numpy(), k.numpy(), v.numpy(), pattern, lse=lse.numpy()
    )


def test_float32_flex_attention_with_gqa_matches_the_oracle():
    p = patterns.global_local(256, 20, 20, [0, 100])
    torch.manual_seed(1)
    q = torch.randn(1, 4, 256, 32)
    k = torch.randn(1, 2, 256, 32)
    v = torch.randn(1, 2, 256, 32)
    bm = to_flex_block_mask(p, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex.flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    testing.assert_close_to_oracle(out.numpy(), q.numpy(), k.numpy(), v.numpy(), p)


def test_block_classification_equals_create_block_mask():
    n, w = 300, 50

    def window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < w)

    theirs = flex.create_block_mask(window, 1, 1, n, n, device="cpu", BLOCK_SIZE=64)
    mine = to_flex_block_mask(patterns.causal_sliding_window(n, w), 64)
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        a, b = getattr(theirs, num)[0, 0], getattr(mine, num)[0, 0]
        assert torch.equal(a, b), num
        for row, count in enumerate(a.tolist()):
            assert set(getattr(theirs, idx)[0, 0, row, :count].tolist()) == set(
                getattr(mine, idx)[0, 0, row, :count].tolist()
            )


def test_from_create_block_mask_with_user_mask_mods():
    n = 200
    doc = torch.tensor([0] * 70 + [1] * 90 + [2] * 40)

    def same_doc_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx)

    bm = flex.create_block_mask(same_doc_causal, 1, 1, n, n, device="cpu", BLOCK_SIZE=32)
    expected = patterns.document(lengths=[70, 90, 40]) & patterns.causal(n)
    assert from_flex_block_mask(bm) == expected


def test_from_block_mask_without_mask_mod_treats_partial_blocks_as_allowed():
    kv_num = torch.tensor([[[1, 0]]], dtype=torch.int32)
    kv_idx = torch.tensor([[[[1, 0], [0, 0]]]], dtype=torch.int32)
    bm = flex.BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=4, seq_lengths=(8, 6))
    p = from_flex_block_mask(bm)
    dense = np.zeros((8, 6), dtype=bool)
    dense[0:4, 4:6] = True  # the listed block, clipped to the sequence length
    np.testing.assert_array_equal(p.to_dense(), dense)


def test_from_block_mask_validation():
    bm = to_flex_block_mask(patterns.causal(16), 8)
    with pytest.raises(ValueError, match="batch"):
        from_flex_block_mask(bm, batch=1)


def _document_block_mask(lengths_per_batch, n, block=16):
    docs = torch.stack(
        [
            torch.repeat_interleave(torch.arange(len(ls)), torch.tensor(ls))
            for ls in lengths_per_batch
        ]
    )

    def doc_causal(b, h, q_idx, kv_idx):
        return (docs[b, q_idx] == docs[b, kv_idx]) & (kv_idx <= q_idx)

    bm = flex.create_block_mask(
        doc_causal, len(lengths_per_batch), 1, n, n, device="cpu", BLOCK_SIZE=block
    )
    expected = [patterns.document(lengths=ls) & patterns.causal(n) for ls in lengths_per_batch]
    return bm, expected


def test_from_block_mask_converts_every_batch_element():
    n = 96
    bm, expected = _document_block_mask([[30, 66], [50, 20, 26]], n)
    got = from_flex_block_mask(bm, per_batch=True)
    assert got == expected  # element 1 too, not batch 0 twice
    assert from_flex_block_mask(bm, batch=1) == expected[1]
    with pytest.raises(ValueError, match="batch 1 differs from batch 0"):
        from_flex_block_mask(bm)
    with pytest.raises(ValueError, match="not both"):
        from_flex_block_mask(bm, batch=0, per_batch=True)
    # a batch whose elements agree gives one pattern
    same, expected = _document_block_mask([[40, 56], [40, 56]], n)
    assert from_flex_block_mask(same) == expected[0]
    # and the list runs as per-batch patterns, equal to FlexAttention on each element
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, n, 16, dtype=torch.float64) for _ in range(3))
    ours = sparse_ref.attention(q.numpy(), k.numpy(), v.numpy(), got)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = flex.flex_attention(q, k, v, block_mask=bm)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)


def _gym_document_mask(doc):
    def document_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    return document_causal


def test_from_mask_mod_equals_the_catalog_and_create_block_mask():
    n = 150
    doc = torch.tensor([0] * 60 + [1] * 50 + [2] * 40)
    mm = _gym_document_mask(doc)
    expected = patterns.document(lengths=[60, 50, 40]) & patterns.causal(n)
    assert from_mask_mod(mm, n, tile=32) == expected  # several tiles, ragged edge
    bm = flex.create_block_mask(mm, 1, 1, n, n, device="cpu", BLOCK_SIZE=32)
    assert from_flex_block_mask(bm) == expected

    def window(b, h, q_idx, kv_idx):  # rectangular, and non-causal
        return (kv_idx - q_idx).abs() <= 3

    assert from_mask_mod(window, 40, 50, tile=16) == Pattern.from_predicate(
        lambda i, j: np.abs(j - i) <= 3, 40, 50
    )


def test_from_mask_mod_heads_batch_and_scalar_only_mask_mods():
    n = 64

    def per_head(b, h, q_idx, kv_idx):  # head h sees a window of h + 1 tokens, batch b shifts it
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= h + b)

    got = from_mask_mod(per_head, n, heads=3, batch=2, tile=24)
    assert isinstance(got, list) and len(got) == 2
    for b, p in enumerate(got):
        assert p.num_heads == 3
        for h in range(3):
            assert p.head(h) == patterns.causal_sliding_window(n, h + b + 1)
    layout = np.random.default_rng(5).random((4, 4)) < 0.5
    table = torch.from_numpy(layout)

    def chained(b, h, q_idx, kv_idx):  # right on scalars only (FlexAttention calls it so)
        return table[q_idx // 16][kv_idx // 16]

    expected = Pattern.from_predicate(lambda i, j: layout[i // 16, j // 16], n)
    assert from_mask_mod(chained, n, tile=24) == expected
    with pytest.raises(TypeError, match="mask_mod must be callable"):
        from_mask_mod(None, n)
    with pytest.raises(ValueError, match="heads"):
        from_mask_mod(per_head, n, heads=0)


def test_from_mask_mod_never_evaluates_more_than_a_tile():
    n, tile = 300, 64
    sizes = []

    def causal(b, h, q_idx, kv_idx):
        sizes.append(int(torch.broadcast_shapes(q_idx.shape, kv_idx.shape).numel()))
        return q_idx >= kv_idx

    assert from_mask_mod(causal, n, tile=tile) == patterns.causal(n)
    assert max(sizes) <= tile * tile and len(sizes) == (-(-n // tile)) ** 2


def test_document_from_cu_seqlens_follows_flash_attention_varlen():
    cu = torch.tensor([0, 5, 5, 12, 20], dtype=torch.int32)  # an empty document in the middle
    p = patterns.document(cu_seqlens=cu)
    assert p == patterns.document(lengths=[5, 0, 7, 8])
    assert p.shape == (20, 20)
    assert patterns.build(p.family, **p.params) == p
    with pytest.raises(ValueError, match="start at 0"):
        patterns.document(cu_seqlens=[1, 4])
    with pytest.raises(
        ValueError, match=r"non-decreasing.*cu_seqlens\[2\] = 3 < cu_seqlens\[1\] = 4"
    ):
        patterns.document(cu_seqlens=[0, 4, 3])
    with pytest.raises(ValueError, match="num_docs \\+ 1"):
        patterns.document(cu_seqlens=[])
    with pytest.raises(TypeError, match="cu_seqlens must hold ints"):
        patterns.document(cu_seqlens=[0.0, 2.0])
    with pytest.raises(ValueError, match="exactly one"):
        patterns.document(lengths=[2], cu_seqlens=[0, 2])


@pytest.mark.slow
def test_compiled_flex_attention_uses_the_block_lists():
    # inductor trusts kv_indices/full_kv_indices and calls mask_mod on partial blocks only
    p = patterns.bigbird(256, 32, num_heads=2, seed=4) | patterns.causal_sliding_window(256, 20)
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 256, 32) for _ in range(3))
    bm = to_flex_block_mask(p, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.compile(flex.flex_attention)(q, k, v, block_mask=bm)
    testing.assert_close_to_oracle(out.numpy(), q.numpy(), k.numpy(), v.numpy(), p)


# ----------------------------------------------------------------------------- torch sparse CSR
def test_torch_sparse_csr_round_trip_one_head():
    p = patterns.sparse_transformer_fixed(64, 8, 2)
    t = to_torch_sparse_csr(p)
    assert t.layout == torch.sparse_csr and t.shape == (64, 64) and t.dtype == torch.bool
    assert t.crow_indices().dtype == torch.int32
    np.testing.assert_array_equal(t.to_dense().numpy(), p.to_dense())
    assert from_torch_sparse_csr(t) == p
    assert from_torch_sparse_csr(to_torch_sparse_csr(p, dtype=torch.float32)) == p


def test_torch_sparse_csr_batched_heads():
    a = patterns.sliding_window(40, 2, 1)
    b = patterns.sliding_window(40, 1, 2)  # same nnz, different structure
    p = Pattern.stack([a, b])
    t = to_torch_sparse_csr(p)
    assert t.shape == (2, 40, 40)
    assert from_torch_sparse_csr(t) == p
    uneven = Pattern.stack([a, patterns.causal(40)])
    with pytest.raises(ValueError, match="head=h"):
        to_torch_sparse_csr(uneven)
    assert from_torch_sparse_csr(to_torch_sparse_csr(uneven, head=1)) == patterns.causal(40)


def test_from_torch_other_layouts_zeros_and_order():
    dense = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    expected = Pattern.from_dense(dense.numpy() != 0)
    assert from_torch_sparse_csr(dense) == expected
    assert from_torch_sparse_csr(dense.to_sparse()) == expected
    # explicit zeros are not allowed keys; unsorted columns are fine
    crow = torch.tensor([0, 3, 3, 4])
    col = torch.tensor([2, 0, 1, 1])
    vals = torch.tensor([1.0, 1.0, 0.0, 5.0])
    t = torch.sparse_csr_tensor(crow, col, vals, size=(3, 3))
    assert from_torch_sparse_csr(t) == expected
    with pytest.raises(TypeError, match="torch.Tensor"):
        from_torch_sparse_csr(np.eye(3))


# -------------------------------------------------------------------------- DLPack / torch inputs
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_accepts_torch_tensors_through_dlpack(dtype):
    p = patterns.causal_sliding_window(64, 9)
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 64, 16, dtype=dtype) for _ in range(3))
    out = sparse_ref.attention(q, k, v, p)
    assert isinstance(out, np.ndarray) and out.dtype == np.dtype(str(dtype).removeprefix("torch."))
    np.testing.assert_array_equal(out, sparse_ref.attention(q.numpy(), k.numpy(), v.numpy(), p))
    testing.assert_close_to_oracle(out, q, k, v, p)
    back = torch.from_dlpack(out)  # and out again, without a copy
    assert back.data_ptr() == out.ctypes.data
