"""Hopper's warpgroup tensor-core forward (``gpu/kernels/bsr_forward_wgmma.cu``, float16/bfloat16,
head dims in (96, 128]) against the float64 oracle with the DESIGN §9 rule (marker ``gpu``).

Every block structure of ``block_cases`` (ragged last blocks, partial blocks, empty block rows,
``n_q != n_k``) at blocks of 64 (one warpgroup per CTA) and 128 (two), every CTA shape,
schedule and key chunk (1 or 2 warpgroups, 2 or 3 stages, 64 or 128 keys; 128 over blocks of 64
and 192 as well), GQA/MQA, per-head patterns, softcap, non-positive
scales, head dims ``d != d_v`` below 128, bitwise determinism, a NaN query, agreement with the
``mma.sync`` kernel, and the errors where the kernel cannot run. Skips off a compute capability
9.0 GPU (the kernel is built for sm_90a).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from block_cases import STRUCTURES
from helpers import BF16, half_inputs, to_device, to_host

from sparse_ref import Pattern
from sparse_ref.backends import cupy as gpu
from sparse_ref.testing import assert_close_to_oracle


def _hopper() -> bool:
    return gpu.is_available() and gpu.has_wgmma()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _hopper(), reason="needs CuPy and a compute capability 9.0 GPU"),
]


def inputs(pattern: Pattern, dtype: str, **kw: int) -> list[np.ndarray]:
    """q, k, v (``helpers.half_inputs`` without dout)."""
    return half_inputs(pattern, dtype, **kw)[:3]


def forward(
    arrays: list[np.ndarray], pattern: Pattern, block: int, scale: float,
    softcap: float | None = None, **kw: Any,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``forward_bsr`` over the pattern's block form at ``block``; (out, lse) on the host."""
    q = arrays[0]
    dtype = "bfloat16" if q.dtype == BF16 else "float16"
    bsr = gpu.device_bsr(
        *gpu.bsr_from_csr(*pattern.stacked_csr(), pattern.shape, (block, block)), *pattern.shape
    )
    kw.setdefault("wgmma", True)
    out, lse = gpu.forward_bsr(
        *(to_device(x) for x in arrays), bsr, scale, softcap, dtype=dtype, **kw
    )
    return to_host(out, q.dtype), to_host(lse, lse.dtype)


def check(arrays, pattern, block, scale, softcap=None) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    out, lse = forward(arrays, pattern, block, scale, softcap)
    assert out.dtype == arrays[0].dtype and lse.dtype == np.float32
    assert_close_to_oracle(
        out, *arrays, pattern, lse=lse, scale=scale, softcap=softcap, dtype=arrays[0].dtype
    )
    return out, lse


@pytest.mark.parametrize("block", [64, 128])
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_block_structures(name: str, block: int) -> None:
    pattern = STRUCTURES[name](block)
    arrays = inputs(pattern, "bfloat16", heads=2, kv_heads=1, d=128, dv=128, seed=block)
    check(arrays, pattern, block, 1.0 / np.sqrt(128))


@pytest.mark.parametrize(
    ("warpgroups", "stages", "key_tile"),
    [(1, 2, 64), (1, 3, 64), (2, 2, 64), (2, 3, 64), (1, 3, 128), (2, 2, 128), (2, 3, 128)],
)
@pytest.mark.parametrize("name", ["global_local", "all_partial", "causal_top_left_nq>nk"])
def test_cta_shapes_and_schedules(name: str, warpgroups: int, stages: int, key_tile: int) -> None:
    """Every CTA shape, schedule and key chunk, at blocks of 128 (one warpgroup: two CTAs per
    block row)."""
    pattern = STRUCTURES[name](128)
    arrays = inputs(pattern, "bfloat16", heads=2, kv_heads=1, d=128, dv=128, seed=stages)
    out, lse = forward(
        arrays, pattern, 128, 0.1, warpgroups=warpgroups, stages=stages, key_tile=key_tile
    )
    assert_close_to_oracle(out, *arrays, pattern, lse=lse, scale=0.1, dtype=arrays[0].dtype)


@pytest.mark.parametrize("block", [64, 192])
@pytest.mark.parametrize("name", ["global_local", "all_partial", "layout_empty_rows"])
def test_key_tile_128_over_narrower_blocks(name: str, block: int) -> None:
    """128-key chunks over blocks that are not a multiple of 128 wide: a block of 64 is one chunk
    half past its keys, a block of 192 a full chunk and a half one (their masks' words 4 to 5)."""
    pattern = STRUCTURES[name](block)
    arrays = inputs(pattern, "bfloat16", heads=2, kv_heads=1, d=128, dv=128, seed=block)
    out, lse = forward(arrays, pattern, block, 0.1, key_tile=128)
    assert_close_to_oracle(out, *arrays, pattern, lse=lse, scale=0.1, dtype=arrays[0].dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "heads,kv_heads,d,dv,softcap",
    [(4, 2, 128, 128, None), (4, 1, 128, 72, None), (2, 2, 96, 128, 5.0), (3, 3, 112, 112, 2.0)],
)
def test_gqa_head_dims_softcap(
    dtype: str, heads: int, kv_heads: int, d: int, dv: int, softcap: float | None
) -> None:
    pattern = STRUCTURES["causal_sliding_window"](128)
    arrays = inputs(pattern, dtype, heads=heads, kv_heads=kv_heads, d=d, dv=dv, seed=d + dv)
    check(arrays, pattern, 128, 1.0 / np.sqrt(d), softcap)


@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
def test_nonpositive_scale(scale: float) -> None:
    """A non-positive scale takes the path that scales the scores before the row max."""
    pattern = STRUCTURES["all_partial"](64)
    arrays = inputs(pattern, "float16", heads=2, kv_heads=2, d=128, dv=128, seed=3)
    check(arrays, pattern, 64, scale)


def test_per_head_patterns_and_empty_rows() -> None:
    """One pattern per query head (P = H) with GQA, empty rows and a ragged last block."""
    rng = np.random.default_rng(5)
    n_q, n_k = 333, 290
    mask = rng.random((4, n_q, n_k)) < 0.1
    mask[:, [0, 100, 332]] = False
    pattern = Pattern.from_dense(mask)
    arrays = inputs(pattern, "bfloat16", heads=4, kv_heads=2, d=128, dv=128, seed=6)
    out, lse = check(arrays, pattern, 128, 0.09)
    assert np.all(out[:, :, [0, 100, 332]].astype(np.float64) == 0)
    assert np.all(lse[:, :, [0, 100, 332]] == -np.inf)


def test_agrees_with_mma_sync_and_is_deterministic() -> None:
    """Two runs are bitwise equal; the mma.sync kernel gives the same result within rounding of
    the weights to bfloat16 (both sum in the same key order, in fp32)."""
    pattern = STRUCTURES["global_local"](128)
    arrays = inputs(pattern, "bfloat16", heads=2, kv_heads=2, d=128, dv=128, seed=9)
    a = forward(arrays, pattern, 128, 0.1)
    b = forward(arrays, pattern, 128, 0.1)
    assert np.array_equal(a[0].view(np.uint16), b[0].view(np.uint16))
    assert np.array_equal(a[1], b[1])
    ref = forward(arrays, pattern, 128, 0.1, wgmma=False)
    np.testing.assert_allclose(a[1], ref[1], rtol=1e-5, atol=1e-5)
    diff = np.abs(a[0].astype(np.float64) - ref[0].astype(np.float64))
    assert diff.max() <= 2 * 2.0**-8 * np.abs(ref[0].astype(np.float64)).max()


def test_nan_query_row() -> None:
    """A NaN in a query makes exactly its row NaN, as in the oracle."""
    pattern = STRUCTURES["causal_sliding_window"](64)
    arrays = inputs(pattern, "float16", heads=1, kv_heads=1, d=128, dv=128, seed=4)
    arrays[0][0, 0, 77, 5] = np.nan
    out, lse = forward(arrays, pattern, 64, 0.1)
    bad = np.isnan(out[0, 0].astype(np.float64)).any(axis=1)
    assert bad[77] and np.isnan(lse[0, 0, 77])
    assert not bad[np.arange(out.shape[2]) != 77].any()
    assert_close_to_oracle(out, *arrays, pattern, lse=lse, scale=0.1, dtype=arrays[0].dtype)


def test_default_dispatch_and_errors() -> None:
    """forward() picks the wgmma kernel for d = 128 by default; asking for it where it cannot run
    (d = 64, mma=False, an mma.sync CTA shape) is an error naming the requirement."""
    pattern = STRUCTURES["sliding_window"](128)
    arrays = inputs(pattern, "float16", heads=2, kv_heads=2, d=128, dv=128, seed=2)
    dev = [to_device(x) for x in arrays]
    auto = gpu.forward(*dev, pattern, 0.1, None, kernel="bsr", block=(128, 128))
    forced = forward(arrays, pattern, 128, 0.1, wgmma=True)
    assert np.array_equal(np.asarray(auto[0].get()), forced[0])
    off = gpu.forward(*dev, pattern, 0.1, None, kernel="bsr", block=(128, 128), wgmma=False)
    assert np.array_equal(
        np.asarray(off[0].get()), forward(arrays, pattern, 128, 0.1, wgmma=False)[0]
    )
    with pytest.raises(ValueError, match="kernel='csr'"):
        gpu.forward(*dev, pattern, 0.1, None, kernel="csr", wgmma=True)
    small = inputs(pattern, "float16", heads=2, kv_heads=2, d=64, dv=64, seed=2)
    with pytest.raises(ValueError, match="wgmma kernel needs"):
        forward(small, pattern, 128, 0.1, wgmma=True)
    with pytest.raises(ValueError, match="tensor-core path"):
        forward(arrays, pattern, 128, 0.1, wgmma=True, mma=False)
    with pytest.raises(ValueError, match="wgmma=False"):
        forward(arrays, pattern, 128, 0.1, wgmma=True, warps=4)
    with pytest.raises(ValueError, match="does not run"):
        forward(arrays, pattern, 128, 0.1, wgmma=False, stages=3)
    with pytest.raises(ValueError, match="does not run"):
        forward(arrays, pattern, 128, 0.1, wgmma=False, key_tile=128)
    with pytest.raises(ValueError, match="key_tile must be 64 or 128"):
        forward(arrays, pattern, 128, 0.1, key_tile=96)
