"""The tensor-core backward (``gpu/kernels/bsr_backward_mma.cu``, float16/bfloat16) against the
float64 oracle with the DESIGN §9 rule (marker ``gpu``).

Every block structure of ``block_cases`` (ragged last blocks, partial blocks, empty block rows,
``n_q != n_k``) at several block sizes, GQA/MQA, per-head patterns, softcap, patterns without a
block form (converted to the forward's default block), head dims ``d != d_v``, the forward's
``out``/``lse`` given or recomputed, bitwise determinism and NaN/inf inputs (which take the SIMT
path, as the forward does). The transposed block form is tested on the host in
``test_gpu_block_transpose.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from block_cases import STRUCTURES
from helpers import BF16, to_device, to_host
from helpers import half_inputs as inputs

import sparse_ref
from sparse_ref import Pattern, patterns
from sparse_ref.backends import cupy as gpu
from sparse_ref.testing import assert_grads_close_to_oracle

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu.is_available(), reason="CuPy with a CUDA GPU is not available"),
]


def grads(
    arrays: list[np.ndarray], pattern: Pattern, scale: float, softcap: float | None, **kw: Any
) -> tuple[np.ndarray, ...]:
    """``gpu.backward`` with the tensor-core kernel on device copies; gradients on the host."""
    q = arrays[0]
    dev = [to_device(x) for x in arrays]
    dtype = "bfloat16" if q.dtype == BF16 else "float16"
    kw.setdefault("kernel", "bsr_mma")
    out = gpu.backward(*dev[:3], pattern, dev[3], None, None, scale, softcap, dtype=dtype, **kw)
    host = tuple(to_host(g, q.dtype) for g in out)
    for g, x in zip(host, arrays[:3], strict=True):
        assert g.dtype == x.dtype and g.shape == x.shape
    return host


def check(arrays: list[np.ndarray], pattern: Pattern, scale: float, softcap: float | None) -> None:
    got = grads(arrays, pattern, scale, softcap)
    assert_grads_close_to_oracle(
        got, *arrays[:3], pattern, arrays[3], scale=scale, softcap=softcap, dtype=arrays[0].dtype
    )


@pytest.mark.parametrize("block", [16, 64, 128])
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_block_structures(name: str, block: int) -> None:
    pattern = STRUCTURES[name](block)
    arrays = inputs(pattern, "bfloat16", heads=2, kv_heads=1, d=64, dv=64, seed=block)
    check(arrays, pattern, 0.125, None)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "heads,kv_heads,d,dv,softcap",
    [(4, 2, 128, 128, None), (4, 1, 32, 32, None), (2, 2, 64, 32, 5.0), (3, 3, 96, 96, 2.0)],
)
def test_gqa_head_dims_softcap(
    dtype: str, heads: int, kv_heads: int, d: int, dv: int, softcap: float | None
) -> None:
    pattern = STRUCTURES["causal_sliding_window"](64)
    arrays = inputs(pattern, dtype, heads=heads, kv_heads=kv_heads, d=d, dv=dv, seed=d + heads)
    check(arrays, pattern, 1.0 / np.sqrt(d), softcap)


def test_per_head_patterns_and_empty_rows() -> None:
    """One pattern per query head (P = H) with GQA, empty rows and a ragged block."""
    rng = np.random.default_rng(5)
    n = 170
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    masks = np.stack([(j <= i) & (j > i - w) for w in (20, 50, 90, 130)])
    masks |= rng.random(masks.shape) < 0.03
    masks[:, [3, 77, 169]] = False
    pattern = Pattern.from_dense(masks).with_block_form(32)
    arrays = inputs(pattern, "bfloat16", heads=4, kv_heads=2, d=64, dv=64, seed=5)
    got = grads(arrays, pattern, 0.125, None)
    assert not got[0][0, :, [3, 77, 169]].astype(np.float32).any()
    assert_grads_close_to_oracle(got, *arrays[:3], pattern, arrays[3], scale=0.125)


def test_pattern_without_block_form_uses_default_block() -> None:
    pattern = patterns.causal_sliding_window(200, 70)
    assert pattern.block is None
    arrays = inputs(pattern, "bfloat16", heads=2, kv_heads=2, d=64, dv=64, seed=7)
    check(arrays, pattern, 0.125, None)


def test_auto_takes_tensor_cores_and_given_out_lse_match_recomputed() -> None:
    """``kernel="auto"`` picks the tensor-core path for finite bfloat16; passing the forward's own
    out/lse gives the same bits as letting the backward recompute them."""
    import cupy

    pattern = STRUCTURES["global_local"](64)
    arrays = inputs(pattern, "bfloat16", heads=2, kv_heads=1, d=64, dv=64, seed=11)
    dev = [to_device(x) for x in arrays]
    out, lse = gpu.forward(*dev[:3], pattern, 0.125, None, dtype="bfloat16")
    given = gpu.backward(*dev[:3], pattern, dev[3], out, lse, 0.125, None, dtype="bfloat16")
    forced = gpu.backward(
        *dev[:3], pattern, dev[3], None, None, 0.125, None, dtype="bfloat16", kernel="bsr_mma"
    )
    for a, b in zip(given, forced, strict=True):
        assert bool(cupy.array_equal(a, b))
    host = tuple(to_host(g, BF16) for g in given)
    assert_grads_close_to_oracle(host, *arrays[:3], pattern, arrays[3], scale=0.125)


def test_deterministic() -> None:
    """Bitwise identical over repeated runs (no atomics, fixed order, GQA group of 4)."""
    import cupy

    n = 700
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = ((j <= i) & (j > i - 200)) | (np.random.default_rng(3).random((n, n)) < 0.05)
    pattern = Pattern.from_dense(mask).with_block_form(64)
    dev = [
        to_device(x)
        for x in inputs(pattern, "bfloat16", heads=8, kv_heads=2, d=128, dv=128, seed=3)
    ]

    def run() -> tuple[Any, ...]:
        return gpu.backward(*dev[:3], pattern, dev[3], None, None, 0.09, None, dtype="bfloat16")

    first = run()
    for _ in range(3):
        for a, b in zip(first, run(), strict=True):
            assert bool(cupy.array_equal(a, b))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_non_finite_inputs_take_the_simt_path(dtype: str) -> None:
    """A NaN in q reaches exactly its row's dq and its keys' dk (as the oracle and the SIMT
    kernels); an infinite key that nobody attends does not leak. ``kernel="bsr_mma"`` refuses."""
    n, d = 96, 32
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = (j <= i) & (j > i - 12)
    mask[:, 50] = False
    pattern = Pattern.from_dense(mask).with_block_form(32)
    q, k, v, g = inputs(pattern, dtype, heads=2, kv_heads=1, d=d, dv=d, seed=13)
    q[0, 0, 40, 3] = np.nan
    k[0, 0, 50] = np.inf
    with pytest.raises(ValueError, match="finite"):
        grads([q, k, v, g], pattern, 0.3, None)
    dq, dk, dv = grads([q, k, v, g], pattern, 0.3, None, kernel="auto")
    assert np.isnan(dq[0, 0, 40].astype(np.float32)).all()
    assert not np.isnan(np.delete(dq, 40, axis=2).astype(np.float32)).any()
    assert np.array_equal(np.isnan(dk[0, 0].astype(np.float32)).any(axis=1), mask[40])
    assert not dk[0, 0, 50].astype(np.float32).any() and not dv[0, 0, 50].astype(np.float32).any()
    assert_grads_close_to_oracle((dq, dk, dv), q, k, v, pattern, g, scale=0.3)


def test_public_api_with_forward_results() -> None:
    """``attention_backward(..., backend="cupy", out=, lse=)`` on CuPy float16 arrays: the
    forward's out/lse reach the tensor-core backward; CuPy out, the rule against the oracle."""
    import cupy

    pattern = STRUCTURES["sinks"](64)
    arrays = inputs(pattern, "float16", heads=2, kv_heads=2, d=64, dv=64, seed=17)
    dev = [cupy.asarray(x) for x in arrays]
    out, lse = sparse_ref.attention(*dev[:3], pattern, backend="cupy", return_lse=True)
    got = sparse_ref.attention_backward(*dev[:3], pattern, dev[3], out=out, lse=lse, backend="cupy")
    assert all(isinstance(x, cupy.ndarray) and x.dtype == np.float16 for x in got)
    host = tuple(cupy.asnumpy(x) for x in got)
    assert_grads_close_to_oracle(host, *arrays[:3], pattern, arrays[3])
