"""The CUDA kernels against the float64 oracle with the DESIGN §9 tolerance rule (marker ``gpu``).

Every kernel (CSR SIMT, BSR SIMT, BSR tensor cores) x dtype (float64, float32, float16, bfloat16)
x softcap x GQA/MQA x per-head patterns x empty rows x ragged last blocks x ``n_q != n_k``. The GPU
tests skip when CuPy cannot see a GPU; the block-form conversion tests run everywhere.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest

from sparse_ref import Pattern
from sparse_ref.backends import cupy as gpu
from sparse_ref.backends.cupy import metadata
from sparse_ref.testing import assert_close_to_oracle

try:
    import ml_dtypes

    BF16: Any = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cases skip
    BF16 = None

needs_gpu = pytest.mark.skipif(
    not gpu.is_available(), reason="CuPy with a CUDA GPU is not available"
)
DTYPES = ["float64", "float32", "float16", "bfloat16"]


# ------------------------------------------------------------------------------ patterns (NumPy)
def random_mask(rng: np.random.Generator, P: int, n_q: int, n_k: int, density: float) -> np.ndarray:
    return rng.random((P, n_q, n_k)) < density


def window_mask(P: int, n_q: int, n_k: int, left: int, right: int) -> np.ndarray:
    i = np.arange(n_q)[:, None]
    j = np.arange(n_k)[None, :]
    m = (j >= i - left) & (j <= i + right)
    return np.broadcast_to(m, (P, n_q, n_k)).copy()


def block_mask(
    rng: np.random.Generator, P: int, n_q: int, n_k: int, block: tuple[int, int]
) -> np.ndarray:
    """Random block layout: about a third of the blocks full, a third partial, the rest empty."""
    bq, bk = block
    nbq, nbk = -(-n_q // bq), -(-n_k // bk)
    kind = rng.integers(0, 3, size=(P, nbq, nbk))  # 0 empty, 1 full, 2 partial
    dense = np.repeat(np.repeat(kind, bq, axis=1), bk, axis=2)[:, :n_q, :n_k]
    noise = rng.random((P, n_q, n_k)) < 0.4
    return (dense == 1) | ((dense == 2) & noise)


def with_empty_rows(mask: np.ndarray, rows: list[int]) -> np.ndarray:
    mask = mask.copy()
    mask[:, [r for r in rows if r < mask.shape[1]], :] = False
    return mask


# ------------------------------------------------------------------------------ inputs
def make_inputs(
    rng: np.random.Generator,
    dtype: str,
    B: int,
    H: int,
    Hkv: int,
    n_q: int,
    n_k: int,
    d: int,
    dv: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes is needed for bfloat16 references")
    np_dtype = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    q = rng.standard_normal((B, H, n_q, d)).astype(np_dtype)
    k = rng.standard_normal((B, Hkv, n_k, d)).astype(np_dtype)
    v = rng.standard_normal((B, Hkv, n_k, dv)).astype(np_dtype)
    return q, k, v


def to_device(x: np.ndarray) -> Any:
    import cupy

    return cupy.asarray(x.view(np.uint16) if x.dtype == BF16 else x)


def run(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    dtype: str,
    *,
    scale: float,
    softcap: float | None,
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    import cupy

    out, lse = gpu.forward(
        to_device(q), to_device(k), to_device(v), pattern, scale, softcap,
        dtype="bfloat16" if dtype == "bfloat16" else None, **kw,
    )  # fmt: skip
    out_np = cupy.asnumpy(out)
    if dtype == "bfloat16":
        out_np = out_np.view(BF16)
    assert out_np.dtype == q.dtype and out_np.shape == q.shape[:3] + (v.shape[3],)
    lse_np = cupy.asnumpy(lse)
    assert lse_np.dtype == (np.float64 if dtype == "float64" else np.float32)
    return out_np, lse_np


def check(q, k, v, pattern, dtype, *, scale, softcap, **kw) -> tuple[np.ndarray, np.ndarray]:
    out, lse = run(q, k, v, pattern, dtype, scale=scale, softcap=softcap, **kw)
    assert_close_to_oracle(
        out, q, k, v, pattern, lse=lse, scale=scale, softcap=softcap, dtype=q.dtype
    )
    return out, lse


# ------------------------------------------------------------------------------ cases
#: (B, H, H_kv, n_q, n_k, d, d_v, P, pattern kind)
SHAPES = {
    "mha_random": (2, 4, 4, 100, 100, 32, 32, 1, "random"),
    "gqa_perhead_empty_rows_nq_ne_nk": (1, 4, 2, 130, 77, 64, 32, 4, "random_empty"),
    "mqa_odd_dims_window": (1, 2, 1, 67, 300, 24, 40, 2, "window"),
    "causal_window_d128": (1, 2, 2, 257, 257, 128, 128, 1, "causal_window"),
}


def build_pattern(rng: np.random.Generator, kind: str, P: int, n_q: int, n_k: int) -> Pattern:
    if kind == "random":
        mask = random_mask(rng, P, n_q, n_k, 0.3)
    elif kind == "random_empty":
        mask = with_empty_rows(random_mask(rng, P, n_q, n_k, 0.2), [0, 5, 64, 129])
    elif kind == "window":
        mask = window_mask(P, n_q, n_k, 20, 45)
    else:
        mask = window_mask(P, n_q, n_k, 63, 0)
    return Pattern.from_dense(mask if P > 1 else mask[0])


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("softcap", [None, 2.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_csr_kernel_matches_oracle(shape: str, dtype: str, softcap: float | None) -> None:
    B, H, Hkv, n_q, n_k, d, dv, P, kind = SHAPES[shape]
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype, softcap)).encode()))
    pattern = build_pattern(rng, kind, P, n_q, n_k)
    q, k, v = make_inputs(rng, dtype, B, H, Hkv, n_q, n_k, d, dv)
    out, lse = check(q, k, v, pattern, dtype, scale=1.5 / np.sqrt(d), softcap=softcap, kernel="csr")
    if kind == "random_empty":
        assert np.all(out[:, :, [0, 5, 64, 129]].astype(np.float64) == 0)
        assert np.all(lse[:, :, [0, 5, 64, 129]] == -np.inf)


#: (n_q, n_k, block, d, d_v, H, H_kv, P)
BSR_CASES = {
    "b16_ragged": (70, 90, (16, 16), 32, 32, 2, 2, 1),
    "b32x64_gqa_perhead": (130, 100, (32, 64), 64, 64, 4, 2, 4),
    "b64_nq_ne_nk": (200, 129, (64, 64), 64, 32, 2, 1, 1),
    "b128_d128": (300, 300, (128, 128), 128, 128, 2, 2, 1),
    "b48x80_odd": (100, 170, (48, 80), 32, 16, 2, 2, 2),
}


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("softcap", [None, 2.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(BSR_CASES), ids=list(BSR_CASES))
def test_bsr_kernel_matches_oracle(case: str, dtype: str, softcap: float | None) -> None:
    n_q, n_k, block, d, dv, H, Hkv, P = BSR_CASES[case]
    rng = np.random.default_rng(zlib.crc32(repr((case, dtype, softcap)).encode()))
    mask = with_empty_rows(block_mask(rng, P, n_q, n_k, block), [1, n_q - 1])
    pattern = Pattern.from_dense(mask if P > 1 else mask[0])
    q, k, v = make_inputs(rng, dtype, 1, H, Hkv, n_q, n_k, d, dv)
    out, lse = check(
        q, k, v, pattern, dtype, scale=1.5 / np.sqrt(d), softcap=softcap, kernel="bsr", block=block
    )
    assert np.all(out[:, :, [1, n_q - 1]].astype(np.float64) == 0)
    assert np.all(lse[:, :, [1, n_q - 1]] == -np.inf)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("scale", [-0.4, 0.0], ids=["negative", "zero"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mma_forward_nonpositive_scale(dtype: str, scale: float) -> None:
    """The tensor-core forward folds a positive scale into the exponent after the row max; a
    negative or zero scale takes its other path (scores scaled first), which must agree too."""
    rng = np.random.default_rng(zlib.crc32(repr((dtype, scale)).encode()))
    mask = with_empty_rows(block_mask(rng, 1, 200, 200, (64, 64)), [3])[0]
    q, k, v = make_inputs(rng, dtype, 1, 2, 2, 200, 200, 64, 64)
    check(q, k, v, Pattern.from_dense(mask), dtype, scale=scale, softcap=None, kernel="bsr",
          block=(64, 64))  # fmt: skip


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bsr_simt_on_half_and_single(dtype: str) -> None:
    """The SIMT BSR kernel (used for float32/64 block patterns and non-finite v) on its own."""
    rng = np.random.default_rng(7)
    mask = block_mask(rng, 1, 150, 150, (64, 64))[0]
    pattern = Pattern.from_dense(mask)
    q, k, v = make_inputs(rng, dtype, 1, 2, 2, 150, 150, 64, 64)
    check(q, k, v, pattern, dtype, scale=0.2, softcap=None, kernel="bsr_simt", block=(64, 64))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kernel", ["csr", "bsr_simt"])
@pytest.mark.parametrize("simt", sorted(gpu.SIMT_CONFIGS))
def test_simt_configs(simt: str, kernel: str, dtype: str) -> None:
    """Every SIMT tile configuration, with GQA, per-head patterns, empty rows and ragged blocks."""
    rng = np.random.default_rng(zlib.crc32(repr((simt, kernel, dtype)).encode()))
    n_q, n_k, P = 300, 213, 4
    mask = with_empty_rows(block_mask(rng, P, n_q, n_k, (64, 64)), [0, 150, 299])
    mask |= window_mask(P, n_q, n_k, 40, 0) & (rng.random((P, n_q, n_k)) < 0.7)
    pattern = Pattern.from_dense(with_empty_rows(mask, [0, 150, 299]))
    q, k, v = make_inputs(rng, dtype, 2, 4, 2, n_q, n_k, 64, 64)
    check(q, k, v, pattern, dtype, scale=0.2, softcap=3.0, kernel=kernel, block=(64, 64), simt=simt)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize(("warps", "mt"), [(4, 1), (8, 1), (4, 2)])
def test_mma_shapes(warps: int, mt: int, d: int) -> None:
    """Every CTA shape of the tensor-core kernel (64 or 128 rows, 1 or 2 m-tiles per warp)."""
    import cupy

    rng = np.random.default_rng(warps * 10 + mt)
    n = 384
    mask = window_mask(1, n, n, 200, 0)[0]
    pattern = Pattern.from_dense(mask)
    q, k, v = make_inputs(rng, "float16", 1, 2, 2, n, n, d, d)
    bsr = gpu.device_bsr(*gpu.bsr_from_csr(*pattern.stacked_csr(), (n, n), (128, 128)), n, n)
    out, lse = gpu.forward_bsr(
        to_device(q), to_device(k), to_device(v), bsr, 0.1, None, dtype="float16", warps=warps,
        mt=mt,
    )  # fmt: skip
    assert_close_to_oracle(cupy.asnumpy(out), q, k, v, pattern, lse=cupy.asnumpy(lse), scale=0.1)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["csr", "bsr", "bsr_simt"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_nonfinite_semantics(kernel: str, dtype: str) -> None:
    """A NaN in an allowed score makes exactly its row NaN; inf in v at an excluded key does not
    leak into rows that exclude it (the oracle sums over allowed keys only)."""
    rng = np.random.default_rng(3)
    n, d = 96, 32
    mask = window_mask(1, n, n, 10, 0)[0]
    pattern = Pattern.from_dense(mask)
    q, k, v = make_inputs(rng, dtype, 1, 1, 1, n, n, d, d)
    q[0, 0, 40, 3] = np.nan  # row 40 -> NaN
    v[0, 0, 80, :] = np.inf  # key 80 is allowed only for rows 80..90
    out, lse = run(q, k, v, pattern, dtype, scale=0.3, softcap=None, kernel=kernel, block=(32, 32))
    nan_rows = np.isnan(out[0, 0].astype(np.float64)).any(axis=1)
    assert nan_rows[40] and np.isnan(lse[0, 0, 40])
    finite_rows = [r for r in range(n) if r != 40 and not (80 <= r <= 90)]
    assert np.isfinite(out[0, 0, finite_rows].astype(np.float64)).all()
    assert np.isfinite(lse[0, 0, finite_rows]).all()
    assert_close_to_oracle(out, q, k, v, pattern, lse=lse, scale=0.3)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_pattern_without_entries(dtype: str) -> None:
    rng = np.random.default_rng(0)
    pattern = Pattern.from_dense(np.zeros((50, 40), dtype=bool))
    q, k, v = make_inputs(rng, dtype, 1, 2, 2, 50, 40, 32, 32)
    for kernel in ("csr", "bsr"):
        out, lse = run(q, k, v, pattern, dtype, scale=0.1, softcap=None, kernel=kernel)
        assert np.all(out.astype(np.float64) == 0) and np.all(lse == -np.inf)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize(("kernel", "dtype"), [("csr", "float32"), ("bsr", "bfloat16")])
def test_deterministic(kernel: str, dtype: str) -> None:
    import cupy

    rng = np.random.default_rng(11)
    n = 500
    pattern = Pattern.from_dense(random_mask(rng, 1, n, n, 0.3)[0])
    q, k, v = make_inputs(rng, dtype, 1, 4, 4, n, n, 64, 64)
    qd, kd, vd = to_device(q), to_device(k), to_device(v)
    kw = {"dtype": "bfloat16" if dtype == "bfloat16" else None, "kernel": kernel}
    a = gpu.forward(qd, kd, vd, pattern, 0.125, None, **kw)
    b = gpu.forward(qd, kd, vd, pattern, 0.125, None, **kw)
    assert bool((a[0] == b[0]).all()) and bool(cupy.array_equal(a[1], b[1]))


@needs_gpu
@pytest.mark.gpu
def test_torch_tensors_round_trip() -> None:
    """torch CUDA tensors in (bfloat16 included), torch tensors out."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or BF16 is None:
        pytest.skip("needs torch with CUDA and ml_dtypes")
    rng = np.random.default_rng(5)
    n = 130
    pattern = Pattern.from_dense(window_mask(1, n, n, 31, 0)[0])
    q, k, v = make_inputs(rng, "bfloat16", 1, 2, 2, n, n, 64, 64)
    tq, tk, tv = (torch.from_numpy(x.view(np.int16)).cuda().view(torch.bfloat16) for x in (q, k, v))
    out, lse = gpu.forward(tq, tk, tv, pattern, 0.125, None)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    assert lse.dtype == torch.float32 and out.shape == (1, 2, n, 64)
    out_np = out.view(torch.int16).cpu().numpy().view(BF16)
    assert_close_to_oracle(out_np, q, k, v, pattern, lse=lse.cpu().numpy(), scale=0.125)


@needs_gpu
@pytest.mark.gpu
def test_public_api_backend_cupy() -> None:
    import cupy

    import sparse_ref

    rng = np.random.default_rng(2)
    n = 120
    pattern = Pattern.from_dense(window_mask(1, n, n, 17, 3)[0])
    q, k, v = make_inputs(rng, "float32", 1, 2, 2, n, n, 32, 32)
    out, lse = sparse_ref.attention(
        cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), pattern, backend="cupy", return_lse=True
    )
    assert isinstance(out, cupy.ndarray)
    assert_close_to_oracle(cupy.asnumpy(out), q, k, v, pattern, lse=cupy.asnumpy(lse))


# ------------------------------------------------------------------------------ CPU-only helpers
@pytest.mark.parametrize("block", [(16, 16), (32, 64), (48, 80), (128, 128)])
def test_bsr_from_csr_round_trip(block: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    P, n_q, n_k = 2, 150, 170
    mask = block_mask(rng, P, n_q, n_k, block)
    pattern = Pattern.from_dense(mask)
    (bq, bk), indptr, bcols, mask_index, masks = gpu.bsr_from_csr(
        *pattern.stacked_csr(), (n_q, n_k), block
    )
    nbq = -(-n_q // bq)
    assert indptr.shape == (P, nbq + 1) and indptr.dtype == np.int64
    rebuilt = np.zeros((P, nbq * bq, -(-n_k // bk) * bk), dtype=bool)
    for p in range(P):
        for bi in range(nbq):
            cols = bcols[indptr[p, bi] : indptr[p, bi + 1]]
            assert np.all(np.diff(cols) > 0)
            for blk, bj in zip(range(indptr[p, bi], indptr[p, bi + 1]), cols, strict=True):
                mi = mask_index[blk]
                tile = np.ones((bq, bk), dtype=bool) if mi < 0 else masks[mi]
                rebuilt[p, bi * bq : (bi + 1) * bq, bj * bk : (bj + 1) * bk] = tile
    np.testing.assert_array_equal(rebuilt[:, :n_q, :n_k], mask)
    # every stored mask is used, and equal masks are stored once
    assert set(mask_index[mask_index >= 0].tolist()) == set(range(len(masks)))
    assert len({m.tobytes() for m in masks}) == len(masks)


def test_heaviest_first_order() -> None:
    indptr = np.array([[0, 1, 5, 5, 9, 10], [0, 0, 0, 0, 0, 3]])
    np.testing.assert_array_equal(
        metadata._heaviest_first(indptr, 1), [[1, 3, 0, 4, 2], [4, 0, 1, 2, 3]]
    )
    np.testing.assert_array_equal(metadata._heaviest_first(indptr, 2), [[0, 1, 2], [2, 0, 1]])
    # a GQA group of two heads: entries summed, [1, 4, 0, 4, 4] -> heaviest first
    np.testing.assert_array_equal(metadata._heaviest_first(indptr, 1, 2), [[1, 3, 4, 0, 2]])


def test_pack_masks_bit_order() -> None:
    m = np.zeros((1, 2, 40), dtype=bool)
    m[0, 0, 0] = m[0, 0, 33] = m[0, 1, 31] = True
    packed = gpu.pack_masks(m)
    assert packed.shape == (1, 2, 2) and packed.dtype == np.uint32
    assert packed[0, 0, 0] == 1 and packed[0, 0, 1] == 2 and packed[0, 1, 0] == 1 << 31


def test_kernel_names_and_source() -> None:
    name = gpu.csr_kernel_name("float32", 128, "4x4")
    assert name == "sparse_ref::csr_forward_simt<float, float, 4, 4, 128, false>"
    assert "double, double, 2, 2, 64, false" in gpu.bsr_kernel_name("float64", 64)
    assert "bf16_t, 64, 4, 2>" in gpu.mma_kernel_name("bfloat16", 64, 4, 2)
    src = gpu.kernel_source("bsr_forward.cu")
    assert "bsr_forward_mma" in src and "struct Simt" in src and '#include "' not in src
    assert (
        gpu.wgmma_kernel_name("float16", 1, 3)
        == "sparse_ref::bsr_forward_wgmma<sparse_ref::f16_t, 1, 3, 64>"
    )
    src = gpu.kernel_source("bsr_forward_wgmma.cu")
    assert "wgmma.mma_async" in src and "ChunkCursor" in src and '#include "' not in src


def test_wgmma_shapes() -> None:
    """The wgmma forward's CTA shape, schedule and key chunk: defaults by block shape, overrides,
    errors, and shared memory that fits (two CTAs per SM for one warpgroup with 64-key chunks, up
    to 3 stages)."""
    from sparse_ref.backends.cupy.tiles import _SMEM_LIMIT, _wgmma_shape, _wgmma_smem

    assert _wgmma_shape(128, 128, None, None, None) == (2, 3, 128)
    assert _wgmma_shape(256, 256, None, None, None) == (2, 3, 128)
    assert _wgmma_shape(128, 192, None, None, None) == (2, 3, 64)
    assert _wgmma_shape(64, 64, None, None, None) == (1, 2, 64)
    assert _wgmma_shape(16, 16, None, None, None) == (1, 2, 64)
    assert _wgmma_shape(128, 128, 2, None, 64) == (2, 2, 64)
    assert _wgmma_shape(128, 64, 3, 1, 128) == (1, 3, 128)
    for stages, wgs, keys in ((4, None, None), (1, None, None), (None, 3, None), (2, 0, None),
                              (None, None, 96), (None, None, 256)):  # fmt: skip
        with pytest.raises(ValueError, match="stages|warpgroups|key_tile"):
            _wgmma_shape(128, 128, stages, wgs, keys)
    assert _wgmma_smem(2, 3, 128) <= _SMEM_LIMIT
    assert 2 * (_wgmma_smem(1, 3) + 1024) <= 228 * 1024  # two CTAs, 1 KiB reserved each


def test_unavailable_message_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "cupy":
            raise ImportError("no cupy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert gpu.is_available() is False
    with pytest.raises(RuntimeError, match=r"sparse-ref\[gpu\]"):
        gpu.array_module()
