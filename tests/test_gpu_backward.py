"""The CUDA backward kernels against the float64 oracle with the DESIGN §9 rule (marker ``gpu``).

``csr_backward_dq`` / ``csr_backward_dkdv`` (``gpu/kernels/csr_backward.cu``) over the catalog
families x float32/float64, GQA/MQA, per-head patterns, softcap, empty rows, ``n_q != n_k``, odd
head dims, every tile shape, float16/bfloat16 (computed in float32), NaN/inf semantics and bitwise
determinism. The GPU tests skip when CuPy cannot see a GPU; the host-side checks run everywhere.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest

import sparse_ref
from sparse_ref import Pattern, patterns
from sparse_ref.backends import cupy as gpu
from sparse_ref.backends.cupy import tiles as tiles_mod
from sparse_ref.testing import assert_grads_close_to_oracle

try:
    import ml_dtypes

    BF16: Any = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cases skip
    BF16 = None

needs_gpu = pytest.mark.skipif(
    not gpu.is_available(), reason="CuPy with a CUDA GPU is not available"
)


# ------------------------------------------------------------------------------ helpers
def seeded(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_inputs(
    rng: np.random.Generator,
    dtype: Any,
    B: int,
    H: int,
    Hkv: int,
    n_q: int,
    n_k: int,
    d: int,
    dv: int,
    std: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v and dout, drawn in float64 and rounded to ``dtype``."""
    if dtype == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes is needed for bfloat16 references")
        dtype = BF16
    shapes = [(B, H, n_q, d), (B, Hkv, n_k, d), (B, Hkv, n_k, dv), (B, H, n_q, dv)]
    q, k, v, g = (std * rng.standard_normal(s) for s in shapes)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), g.astype(dtype)


def to_device(x: np.ndarray) -> Any:
    import cupy

    return cupy.asarray(x.view(np.uint16) if x.dtype == BF16 else x)


def to_host(x: Any, dtype: np.dtype) -> np.ndarray:
    import cupy

    out = cupy.asnumpy(x)
    return out.view(BF16) if dtype == BF16 else out


def run(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    dout: np.ndarray,
    pattern: Pattern,
    *,
    scale: float,
    softcap: float | None,
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``gpu.backward`` on device copies; the gradients back on the host, checked for shape/dtype."""
    bf16 = q.dtype == BF16
    grads = gpu.backward(
        to_device(q), to_device(k), to_device(v), pattern, to_device(dout), None, None, scale,
        softcap, dtype="bfloat16" if bf16 else None, **kw,
    )  # fmt: skip
    host = tuple(to_host(g, q.dtype) for g in grads)
    for g, x in zip(host, (q, k, v), strict=True):
        assert g.dtype == x.dtype and g.shape == x.shape
    return host  # type: ignore[return-value]


def check(q, k, v, dout, pattern, *, scale, softcap, **kw) -> tuple[np.ndarray, ...]:
    grads = run(q, k, v, dout, pattern, scale=scale, softcap=softcap, **kw)
    assert_grads_close_to_oracle(
        grads, q, k, v, pattern, dout, scale=scale, softcap=softcap, dtype=q.dtype
    )
    return grads


def random_mask(rng: np.random.Generator, P: int, n_q: int, n_k: int, density: float) -> np.ndarray:
    return rng.random((P, n_q, n_k)) < density


def with_empty_rows(mask: np.ndarray, rows: list[int]) -> np.ndarray:
    mask = mask.copy()
    mask[:, [r for r in rows if r < mask.shape[1]], :] = False
    return mask


# ------------------------------------------------------------------------------ the catalog
#: (id, family, params, (H, H_kv, d, d_v)): every catalog family that needs no data, rows spanning
#: several key windows, n_q != n_k, empty rows (causal bottom-right), a block form (bigbird)
CATALOG = [
    ("dense-q70k90", "dense", {"n_q": 70, "n_k": 90}, (2, 2, 32, 32)),
    ("causal-br-q150k100", "causal", {"n_q": 150, "n_k": 100, "align": "bottom_right"},
     (2, 1, 64, 64)),
    ("sliding_window-l40r20-n200", "sliding_window", {"n": 200, "left": 40, "right": 20},
     (4, 2, 64, 64)),
    ("causal_sliding_window-w70-n200", "causal_sliding_window", {"n": 200, "window": 70},
     (2, 2, 128, 128)),
    ("dilated-w8d5-n180", "dilated", {"n": 180, "window": 8, "dilation": 5}, (2, 1, 32, 32)),
    ("strided-s7-causal-n160", "strided", {"n": 160, "stride": 7, "causal": True}, (2, 2, 32, 48)),
    ("sparse_transformer_strided-s12-n160", "sparse_transformer_strided",
     {"n": 160, "stride": 12}, (2, 2, 64, 64)),
    ("sparse_transformer_fixed-s16c4-n160", "sparse_transformer_fixed",
     {"n": 160, "stride": 16, "c": 4}, (2, 1, 64, 64)),
    ("global_local-l8r8-g3-n190", "global_local",
     {"n": 190, "left": 8, "right": 8, "global_tokens": [0, 77, 189]}, (2, 2, 64, 64)),
    ("bigbird-b16-n200", "bigbird", {"n": 200, "block": 16, "seed": 1}, (2, 2, 64, 64)),
    ("random-k9-q130k170", "random", {"n_q": 130, "n_k": 170, "per_row": 9, "seed": 2},
     (4, 1, 32, 32)),
    ("sinks-s3w20-n150", "sinks", {"n": 150, "num_sinks": 3, "window": 20}, (2, 2, 64, 64)),
    ("prefix_lm-p50-n140", "prefix_lm", {"n": 140, "prefix": 50}, (2, 2, 64, 64)),
    ("document-30-70-45", "document", {"lengths": [30, 70, 45]}, (2, 2, 32, 32)),
    ("neighborhood_2d-12x14-k5", "neighborhood_2d", {"height": 12, "width": 14, "kernel": 5},
     (2, 2, 32, 32)),
    ("vertical_slash-n160", "vertical_slash",
     {"n": 160, "vertical": [0, 5, 99], "slash": [0, 1, 17, 64]}, (2, 1, 64, 64)),
]  # fmt: skip


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CATALOG, ids=[c[0] for c in CATALOG])
def test_catalog_matches_oracle(case: tuple[Any, ...], dtype: str) -> None:
    cid, family, params, (H, Hkv, d, dv) = case
    pattern = patterns.build(family, **params)
    n_q, n_k = pattern.shape
    rng = seeded(cid, dtype)
    q, k, v, g = make_inputs(rng, dtype, 1, H, Hkv, n_q, n_k, d, dv)
    check(q, k, v, g, pattern, scale=1.3 / np.sqrt(d), softcap=None)


# ------------------------------------------------------------------------------ edge cases
#: (B, H, H_kv, n_q, n_k, d, d_v, P, empty rows)
SHAPES = {
    "mha": (2, 2, 2, 100, 100, 32, 32, 1, []),
    "gqa_perhead_empty_rows_nq_ne_nk": (1, 4, 2, 130, 77, 64, 32, 4, [0, 5, 64, 129]),
    "mqa_odd_dims": (1, 3, 1, 67, 150, 18, 40, 1, [66]),
    "d256": (1, 2, 1, 90, 90, 256, 200, 1, [3]),
}


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("softcap", [None, 2.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_gqa_softcap_empty_rows(shape: str, dtype: str, softcap: float | None) -> None:
    B, H, Hkv, n_q, n_k, d, dv, P, empty = SHAPES[shape]
    rng = seeded(shape, dtype, softcap)
    mask = with_empty_rows(random_mask(rng, P, n_q, n_k, 0.25), empty)
    pattern = Pattern.from_dense(mask if P > 1 else mask[0])
    q, k, v, g = make_inputs(rng, dtype, B, H, Hkv, n_q, n_k, d, dv, std=1.5)
    dq, dk, dv_ = check(q, k, v, g, pattern, scale=1.5 / np.sqrt(d), softcap=softcap)
    if empty:
        assert np.all(dq[:, :, empty] == 0)
    unattended = ~mask.any(axis=(0, 1))  # keys no query head attends: zero dk and dv
    assert np.all(dk[:, :, unattended] == 0) and np.all(dv_[:, :, unattended] == 0)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dtype", "tiles"),
    [("float32", (4, 4)), ("float32", (2, 2)), ("float32", (1, 2)), ("float32", (2, 4)),
     ("float64", (2, 2)), ("float64", (1, 2)), ("float64", (4, 4))],
)  # fmt: skip
def test_tile_shapes(dtype: str, tiles: tuple[int, int]) -> None:
    """Every tile shape: long rows over many windows, a ragged last tile, GQA, per-head patterns."""
    rng = seeded(dtype, tiles)
    n_q, n_k, P = 301, 277, 4
    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    mask = ((j <= i) & (j > i - 150)) | random_mask(rng, P, n_q, n_k, 0.05)
    pattern = Pattern.from_dense(with_empty_rows(mask, [7, 300]))
    q, k, v, g = make_inputs(rng, dtype, 2, 4, 2, n_q, n_k, 64, 64)
    check(q, k, v, g, pattern, scale=0.15, softcap=3.0, tiles=tiles)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_inputs_computed_in_float32(dtype: str) -> None:
    rng = seeded(dtype)
    pattern = patterns.causal_sliding_window(160, 50)
    q, k, v, g = make_inputs(rng, dtype, 1, 4, 2, 160, 160, 64, 64)
    check(q, k, v, g, pattern, scale=0.125, softcap=None)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonfinite_semantics(dtype: str) -> None:
    """A NaN in q reaches exactly the gradients of its row and of its keys; an infinite key or
    value that no query attends does not leak (the oracle sums over allowed pairs only)."""
    rng = seeded("nonfinite", dtype)
    n, d = 96, 32
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = (j <= i) & (j > i - 12)
    mask[:, 50] = False  # key 50: nobody attends it
    pattern = Pattern.from_dense(mask)
    q, k, v, g = make_inputs(rng, dtype, 1, 2, 1, n, n, d, d)
    q[0, 0, 40, 3] = np.nan
    k[0, 0, 50] = np.inf
    v[0, 0, 50] = -np.inf
    dq, dk, dv = run(q, k, v, g, pattern, scale=0.3, softcap=None)
    assert np.isnan(dq[0, 0, 40]).all() and not np.isnan(np.delete(dq, 40, axis=2)).any()
    assert np.array_equal(np.isnan(dk[0, 0]).any(axis=1), mask[40])
    assert np.all(dk[0, 0, 50] == 0) and np.all(dv[0, 0, 50] == 0)
    assert_grads_close_to_oracle((dq, dk, dv), q, k, v, pattern, g, scale=0.3)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_values_of_a_row_without_gradient_do_not_leak(dtype: str) -> None:
    """A row whose scores are all -inf gets no gradient and the oracle skips it: the inf in its q
    and the NaN in its dout must not reach its keys' dk/dv (a weight 0 times inf is NaN)."""
    rng = seeded("dead-row", dtype)
    n, d = 80, 16
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    pattern = Pattern.from_dense((j <= i) & (j > i - 10))
    q, k, v, g = make_inputs(rng, dtype, 1, 2, 1, n, n, d, d)
    k[..., 0] = np.abs(k[..., 0]) + 0.5
    q[0, 1, 9] = 0
    q[0, 1, 9, 0] = -np.inf  # scores -inf * k0 = -inf for every key of row 9
    g[0, 1, 9, 1] = np.nan
    dq, dk, dv = run(q, k, v, g, pattern, scale=0.3, softcap=None)
    assert all(np.isfinite(x).all() for x in (dq, dk, dv))
    assert not dq[0, 1, 9].any()
    assert_grads_close_to_oracle((dq, dk, dv), q, k, v, pattern, g, scale=0.3)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pattern_without_entries(dtype: str) -> None:
    rng = seeded("empty", dtype)
    pattern = Pattern.from_dense(np.zeros((50, 40), dtype=bool))
    q, k, v, g = make_inputs(rng, dtype, 1, 2, 2, 50, 40, 32, 32)
    for grad in run(q, k, v, g, pattern, scale=0.1, softcap=None):
        assert np.all(grad == 0)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_deterministic(dtype: str) -> None:
    """Bitwise identical over repeated runs (no atomics, fixed reduction order)."""
    import cupy

    rng = seeded("det", dtype)
    n = 700
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = ((j <= i) & (j > i - 200)) | random_mask(rng, 1, n, n, 0.1)[0]
    pattern = Pattern.from_dense(mask)
    arrays = [to_device(x) for x in make_inputs(rng, dtype, 2, 8, 2, n, n, 64, 64)]
    first = gpu.backward(*arrays[:3], pattern, arrays[3], None, None, 0.125, 5.0)
    for _ in range(3):
        again = gpu.backward(*arrays[:3], pattern, arrays[3], None, None, 0.125, 5.0)
        for a, b in zip(first, again, strict=True):
            assert bool(cupy.array_equal(a, b))


@needs_gpu
@pytest.mark.gpu
def test_public_api_backend_cupy() -> None:
    """``attention_backward(..., backend="cupy")``: CuPy in, CuPy out, the caller's rank kept."""
    import cupy

    rng = seeded("api")
    pattern = patterns.causal(90)
    q, k, v, g = make_inputs(rng, "float32", 1, 2, 2, 90, 90, 32, 32)
    q, k, v, g = (x[0] for x in (q, k, v, g))  # 3-D
    grads = sparse_ref.attention_backward(
        *(cupy.asarray(x) for x in (q, k, v)), pattern, cupy.asarray(g), backend="cupy"
    )
    assert all(isinstance(x, cupy.ndarray) for x in grads)
    assert [x.shape for x in grads] == [q.shape, k.shape, v.shape]
    assert_grads_close_to_oracle(tuple(cupy.asnumpy(x) for x in grads), q, k, v, pattern, g)


@needs_gpu
@pytest.mark.gpu
def test_device_transpose_matches_pattern_transpose() -> None:
    rng = seeded("transpose")
    mask = with_empty_rows(random_mask(rng, 3, 41, 57, 0.2), [0, 40])
    pattern = Pattern.from_dense(mask)
    csr = pattern.stacked_csr()
    t = gpu.device_csr_transpose(gpu.device_csr(csr.indptr, csr.indices, 41, 57))
    want = pattern.transpose().stacked_csr()
    assert np.array_equal(t.indptr.get(), want.indptr)
    assert np.array_equal(t.indices.get()[: len(want.indices)], want.indices)
    assert (t.n_q, t.n_k) == (57, 41)


# ------------------------------------------------------------------------------ without a GPU
@pytest.mark.skipif(gpu.is_available(), reason="a GPU is available")
def test_clear_error_without_cupy_or_gpu() -> None:
    x = np.ones((4, 2))
    with pytest.raises(RuntimeError, match="'cupy' backend needs"):
        sparse_ref.attention_backward(x, x, x, patterns.causal(4), x, backend="cupy")


@pytest.mark.parametrize(
    ("dtype", "dmax", "tiles"),
    [("float32", 64, (4, 4)), ("float32", 128, (4, 4)), ("float32", 256, (2, 2)),
     ("bfloat16", 192, (2, 2)), ("float64", 128, (2, 2)), ("float64", 192, (2, 2)),
     ("float64", 256, (1, 2))],
)  # fmt: skip
def test_tile_choice_fits_shared_memory(dtype: str, dmax: int, tiles: tuple[int, int]) -> None:
    assert tiles_mod._bwd_tiles(dtype, dmax, None) == tiles
    assert tiles_mod._bwd_smem(dtype, dmax, *tiles) <= 227 * 1024
    dq, dkdv = gpu.bwd_kernel_names(dtype, dmax)
    assert dq.startswith("sparse_ref::csr_backward_dq<") and f", {dmax}>" in dq
    assert dkdv.startswith("sparse_ref::csr_backward_dkdv<")


def test_tile_override_is_validated() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        tiles_mod._bwd_tiles("float64", 256, (4, 4))
    with pytest.raises(ValueError, match="TM in"):
        tiles_mod._bwd_tiles("float32", 128, (3, 4))


# ------------------------------------------------------------------------------ block form
#: (id, pattern builder, (B, H, H_kv, d, d_v)): patterns that carry a block form, run by
#: bsr_backward_dq / bsr_backward_dkdv: native (bigbird), ragged last block row and column,
#: blocks narrower and taller than a CTA's tile, per-head patterns with GQA, empty rows, n_q != n_k
def _block_window(n: int, w: int, block: tuple[int, int]) -> Pattern:
    return patterns.causal_sliding_window(n, w).with_block_form(block)


def _block_random(seed: int, P: int, n_q: int, n_k: int, block: tuple[int, int]) -> Pattern:
    rng = seeded("block-random", seed)
    i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
    mask = ((j <= i + 5) & (j > i - 40)) | random_mask(rng, P, n_q, n_k, 0.04)
    mask = with_empty_rows(mask, [0, 63, n_q - 1])
    return Pattern.from_dense(mask if P > 1 else mask[0]).with_block_form(block)


BLOCK_CASES = [
    ("bigbird-b16-n200", lambda: patterns.bigbird(200, block=16, seed=1), (1, 2, 2, 64, 64)),
    ("window-w70-n200-b32", lambda: _block_window(200, 70, (32, 32)), (2, 4, 2, 32, 32)),
    ("window-w150-n301-b64x128", lambda: _block_window(301, 150, (64, 128)), (1, 2, 1, 64, 64)),
    ("random-perhead-q150k130-b16x48", lambda: _block_random(1, 4, 150, 130, (16, 48)),
     (1, 4, 2, 48, 40)),
    ("random-q200k170-b128x32", lambda: _block_random(2, 1, 200, 170, (128, 32)),
     (2, 3, 1, 128, 128)),
]  # fmt: skip


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("softcap", [None, 3.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_block_form_matches_oracle(
    case: tuple[Any, ...], dtype: str, softcap: float | None
) -> None:
    cid, build, (B, H, Hkv, d, dv) = case
    pattern = build()
    assert pattern.block is not None
    n_q, n_k = pattern.shape
    rng = seeded(cid, dtype, softcap)
    q, k, v, g = make_inputs(rng, dtype, B, H, Hkv, n_q, n_k, d, dv)
    grads = check(q, k, v, g, pattern, scale=1.2 / np.sqrt(d), softcap=softcap, kernel="bsr_simt")
    # "auto" takes the block form for a pattern that carries one: the same bits
    auto = run(q, k, v, g, pattern, scale=1.2 / np.sqrt(d), softcap=softcap)
    for a, b in zip(grads, auto, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    mask = pattern.to_dense() if pattern.num_heads == 1 else None
    if mask is not None:  # rows without keys: dq = 0; keys nobody attends: dk = dv = 0
        assert np.all(grads[0][:, :, ~mask.any(axis=1)] == 0)
        assert np.all(grads[1][:, :, ~mask.any(axis=0)] == 0)
        assert np.all(grads[2][:, :, ~mask.any(axis=0)] == 0)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dtype", "tiles"), [("float32", (2, 2)), ("float32", (1, 2)), ("float64", (1, 2))]
)
def test_block_form_tile_shapes(dtype: str, tiles: tuple[int, int]) -> None:
    pattern = _block_random(3, 4, 170, 150, (64, 64))
    rng = seeded("block-tiles", dtype, tiles)
    q, k, v, g = make_inputs(rng, dtype, 1, 4, 2, 170, 150, 64, 64)
    check(q, k, v, g, pattern, scale=0.15, softcap=None, kernel="bsr_simt", tiles=tiles)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_block_form_half_inputs(dtype: str) -> None:
    rng = seeded("block-half", dtype)
    pattern = _block_window(160, 50, (32, 32))
    q, k, v, g = make_inputs(rng, dtype, 1, 4, 2, 160, 160, 64, 64)
    check(q, k, v, g, pattern, scale=0.125, softcap=None, kernel="bsr_simt")


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_block_form_nonfinite_semantics(dtype: str) -> None:
    """As test_nonfinite_semantics, over a block form: the NaN row reaches exactly its keys, and the
    infinite key and value that no query attends (inside stored partial blocks) do not leak."""
    rng = seeded("block-nonfinite", dtype)
    n, d = 96, 32
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = (j <= i) & (j > i - 12)
    mask[:, 50] = False
    pattern = Pattern.from_dense(mask).with_block_form((16, 16))
    q, k, v, g = make_inputs(rng, dtype, 1, 2, 1, n, n, d, d)
    q[0, 0, 40, 3] = np.nan
    k[0, 0, 50] = np.inf
    v[0, 0, 50] = -np.inf
    dq, dk, dv = run(q, k, v, g, pattern, scale=0.3, softcap=None, kernel="bsr_simt")
    assert np.isnan(dq[0, 0, 40]).all() and not np.isnan(np.delete(dq, 40, axis=2)).any()
    assert np.array_equal(np.isnan(dk[0, 0]).any(axis=1), mask[40])
    assert np.all(dk[0, 0, 50] == 0) and np.all(dv[0, 0, 50] == 0)
    assert_grads_close_to_oracle((dq, dk, dv), q, k, v, pattern, g, scale=0.3)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_block_form_without_entries(dtype: str) -> None:
    rng = seeded("block-empty", dtype)
    pattern = Pattern.from_dense(np.zeros((50, 40), dtype=bool)).with_block_form((16, 16))
    q, k, v, g = make_inputs(rng, dtype, 1, 2, 2, 50, 40, 32, 32)
    for grad in run(q, k, v, g, pattern, scale=0.1, softcap=None, kernel="bsr_simt"):
        assert np.all(grad == 0)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_block_form_deterministic(dtype: str) -> None:
    """Bitwise identical over repeated runs, GQA (4 query heads per kv head), global block rows."""
    import cupy

    rng = seeded("block-det", dtype)
    pattern = patterns.bigbird(640, block=32, seed=3)
    arrays = [to_device(x) for x in make_inputs(rng, dtype, 2, 8, 2, 640, 640, 64, 64)]
    first = gpu.backward(*arrays[:3], pattern, arrays[3], None, None, 0.125, 5.0, kernel="bsr_simt")
    for _ in range(3):
        again = gpu.backward(
            *arrays[:3], pattern, arrays[3], None, None, 0.125, 5.0, kernel="bsr_simt"
        )
        for a, b in zip(first, again, strict=True):
            assert bool(cupy.array_equal(a, b))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["csr", "bsr_simt", "bsr_mma"])
def test_pattern_with_wrong_head_count_is_refused_before_launch(kernel: str) -> None:
    """A 2-head pattern with H = 4 used to read past indptr on the device (illegal address, the
    CUDA context lost); every path now refuses it, and the device stays usable."""
    import cupy

    dtype = "float16" if kernel == "bsr_mma" else "float32"
    pattern = _block_random(5, 2, 96, 96, (32, 32))
    q, k, v, g = (
        cupy.asarray(x) for x in make_inputs(seeded("heads"), dtype, 1, 4, 2, 96, 96, 32, 32)
    )
    with pytest.raises(ValueError, match="pattern has 2 heads; expected 1"):
        gpu.backward(q, k, v, pattern, g, None, None, 0.2, None, kernel=kernel)
    with pytest.raises(ValueError, match="pattern has 2 heads; expected 1"):
        gpu.forward(q, k, v, pattern, 0.2, None, kernel="csr" if kernel == "csr" else "bsr")
    good = _block_random(5, 4, 96, 96, (32, 32))
    grads = gpu.backward(q, k, v, good, g, None, None, 0.2, None, kernel=kernel)
    assert all(bool(cupy.isfinite(x).all()) for x in grads)
