"""sparse_ref.interop.flashinfer and .huggingface (neither peer is imported: no GPU needed).

FlashInfer's arrays are checked by rebuilding the dense mask from them with SciPy's BSR convention
(which FlashInfer's ``plan`` documents). Hugging Face BigBird is checked by an independent NumPy
transcription of its five-part block computation (``modeling_big_bird.py``, no padding) against the
oracle on the pattern :func:`from_hf_bigbird_rand_attn` builds.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sparse_ref import oracle, patterns
from sparse_ref.interop.flashinfer import to_flashinfer_bsr
from sparse_ref.interop.huggingface import from_hf_bigbird_rand_attn, hf_bigbird_layout
from sparse_ref.pattern import Pattern


# ----------------------------------------------------------------------------------- FlashInfer
def _dense_from_flashinfer(b) -> np.ndarray:
    nbq, nbk = len(b.indptr) - 1, -(-b.N // b.C)
    data = np.ones((len(b.indices), b.R, b.C), dtype=bool) if b.mask is None else b.mask
    m = sp.bsr_array(
        (data, b.indices, b.indptr), shape=(nbq * b.R, nbk * b.C), blocksize=(b.R, b.C)
    )
    return m.toarray()[: b.M, : b.N]


@pytest.mark.parametrize(
    "pattern,R,C",
    [
        (patterns.causal(4), 2, None),
        (patterns.causal_sliding_window(100, 17), 16, 20),  # ragged last block row
        (patterns.random(64, per_row=5, seed=3), 8, 8),
        (patterns.bigbird(128, 16), 16, 16),
        (patterns.causal(50, 80, align="bottom_right"), 7, 16),
    ],
)
def test_flashinfer_arrays_rebuild_the_mask(pattern, R, C):
    b = to_flashinfer_bsr(pattern, R, C)
    C = R if C is None else C
    assert (b.M, b.N, b.R, b.C) == (*pattern.shape, R, C)
    assert b.indptr.dtype == np.int32 and b.indices.dtype == np.int32
    assert len(b.indptr) == -(-pattern.shape[0] // R) + 1
    assert b.mask is None or b.mask.shape == (len(b.indices), R, C)
    np.testing.assert_array_equal(_dense_from_flashinfer(b), pattern.to_dense())
    assert b.plan_kwargs()["indptr"] is b.indptr


def test_flashinfer_example_and_full_blocks():
    b = to_flashinfer_bsr(patterns.causal(4), 2)
    assert b.indptr.tolist() == [0, 1, 3] and b.indices.tolist() == [0, 0, 1]
    assert b.mask.astype(int).tolist() == [[[1, 0], [1, 1]], [[1, 1], [1, 1]], [[1, 0], [1, 1]]]
    layout = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=bool)
    full = to_flashinfer_bsr(Pattern.from_block_layout(layout, 4), 4)
    assert full.mask is None  # every block full: FlashInfer needs no mask
    assert full.indices.tolist() == [0, 2, 1, 0, 1, 2]


def test_flashinfer_validation():
    with pytest.raises(ValueError, match="N % C"):
        to_flashinfer_bsr(patterns.causal(10), 4)
    assert to_flashinfer_bsr(patterns.causal(10), 4, require_divisible=False).N == 10
    two = patterns.bigbird(64, 8, num_heads=2)
    with pytest.raises(ValueError, match="head=h"):
        to_flashinfer_bsr(two, 8)
    b = to_flashinfer_bsr(two, 8, head=1)
    np.testing.assert_array_equal(_dense_from_flashinfer(b), two.head(1).to_dense())


def test_flashinfer_torch_tensors():
    torch = pytest.importorskip("torch")
    b = to_flashinfer_bsr(patterns.causal(8), 4, device="cpu")
    assert isinstance(b.indptr, torch.Tensor) and b.indptr.dtype == torch.int32
    assert b.mask.dtype == torch.bool


# -------------------------------------------------------------------------------- Hugging Face
def _hf_reference(q, k, v, rand_attn, bs):
    """Hugging Face's BigBirdBlockSparseAttention (ITC, no padding), transcribed to NumPy.

    q, k, v: (H, n, d). Each query block gathers its key blocks as HF concatenates them and takes
    one softmax over the concatenation (so a repeated block would count twice).
    """
    H, n, d = q.shape
    nb = n // bs
    out = np.zeros_like(q)
    kb = k.reshape(H, nb, bs, d)
    vb = v.reshape(H, nb, bs, -1)
    for h in range(H):
        for qb in range(nb):
            if qb in (0, nb - 1):
                keys = list(range(nb))  # first and last query blocks: all keys
            elif qb == 1:
                keys = [0, 1, 2, nb - 1, *rand_attn[h, 0]]
            elif qb == nb - 2:
                keys = [0, nb - 3, nb - 2, nb - 1, *rand_attn[h, -1]]
            else:
                keys = [0, qb - 1, qb, qb + 1, *rand_attn[h, qb - 1], nb - 1]
            kk = np.concatenate([kb[h, j] for j in keys])
            vv = np.concatenate([vb[h, j] for j in keys])
            s = q[h, qb * bs : (qb + 1) * bs] @ kk.T / np.sqrt(d)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[h, qb * bs : (qb + 1) * bs] = (p @ vv) / p.sum(axis=1, keepdims=True)
    return out


def _plan(nb, r, heads, seed):
    """A valid plan: per query block 1 .. nb - 2, r distinct blocks outside its window and the
    global blocks (what HF's _bigbird_block_rand_mask_with_head guarantees)."""
    rng = np.random.default_rng(seed)
    plan = np.zeros((heads, nb - 2, r), dtype=np.int32)
    for h in range(heads):
        for t in range(nb - 2):
            qb = t + 1
            allowed = [b for b in range(1, nb - 1) if abs(b - qb) > 1]
            plan[h, t] = rng.choice(allowed, size=r, replace=False)
    return plan


@pytest.mark.parametrize("nb,bs,r,heads", [(8, 4, 2, 2), (12, 8, 3, 1), (6, 2, 1, 3)])
def test_hf_bigbird_pattern_reproduces_hf_attention(nb, bs, r, heads):
    plan = _plan(nb, r, heads, seed=nb)
    p = from_hf_bigbird_rand_attn(plan, bs, seq_len=nb * bs)
    assert p.shape == (nb * bs, nb * bs) and p.num_heads == heads and p.block == (bs, bs)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((heads, nb * bs, 8)) for _ in range(3))
    np.testing.assert_allclose(
        oracle.attention(q, k, v, p), _hf_reference(q, k, v, plan, bs), atol=1e-12
    )


def test_hf_bigbird_layout_rows():
    plan = [[[3], [4], [1], [2]]]  # nb = 6
    layout = hf_bigbird_layout(plan)[0].astype(int)
    assert layout.tolist() == [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 1],  # 0, 1, 2, last + random 3
        [1, 1, 1, 1, 1, 1],  # 0, 1, 2, 3, last + random 4
        [1, 1, 1, 1, 1, 1],  # 0, 2, 3, 4, last + random 1
        [1, 0, 1, 1, 1, 1],  # 0, nb-3, nb-2, last + random 2
        [1, 1, 1, 1, 1, 1],
    ]
    # a plan in HF's forward-pass shape (batch, heads, nb - 2, r): one copy per batch element
    batched = np.broadcast_to(np.asarray(plan), (3, 1, 4, 1))
    assert (hf_bigbird_layout(batched) == hf_bigbird_layout(plan)).all()


def test_hf_bigbird_duplicates():
    dup = [[[3], [1], [1], [2]]]  # query block 2 already has key block 1 in its window
    with pytest.raises(ValueError, match="counts that block twice"):
        from_hf_bigbird_rand_attn(dup, 4)
    repeated = [[[3, 3], [4, 0 + 5], [1, 5], [1, 2]]]
    with pytest.raises(ValueError, match=r"rand_attn\[0, 0\]"):
        hf_bigbird_layout(repeated)
    merged = from_hf_bigbird_rand_attn(dup, 4, duplicates="merge")
    assert merged.nnz == hf_bigbird_layout(dup, duplicates="merge").sum() * 16


def test_hf_bigbird_validation():
    plan = [[[3], [4], [1], [2]]]
    with pytest.raises(ValueError, match="seq_len"):
        from_hf_bigbird_rand_attn(plan, 4, seq_len=20)
    with pytest.raises(ValueError, match=r"\[0, nb = 6\)"):
        hf_bigbird_layout([[[9], [4], [1], [2]]])
    with pytest.raises(ValueError, match="at least 4"):
        hf_bigbird_layout([[[0]]])
    with pytest.raises(TypeError, match="integer"):
        hf_bigbird_layout([[[0.5]]])
    with pytest.raises(ValueError, match="differs between batch"):
        hf_bigbird_layout(np.stack([np.asarray(plan), np.asarray([[[3], [4], [1], [1]]])]))
    with pytest.raises(ValueError, match="duplicates"):
        hf_bigbird_layout(plan, duplicates="ignore")
    with pytest.raises(ValueError, match="block_size"):
        from_hf_bigbird_rand_attn(plan, 0)
