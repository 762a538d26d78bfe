"""Helpers shared by several test modules (test modules never import each other).

Each helper is owned by the tests that use it; add new ones under a heading naming their users.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from sparse_ref import patterns
from sparse_ref.pattern import Pattern, index_dtype

# ------------------------------------------------------------------ kernel inputs (kernel tests)


def random_inputs(
    rng: np.random.Generator,
    q_shape: tuple[int, ...],
    kv_shape: tuple[int, ...],
    d_v: int | None = None,
    dtype: Any = np.float64,
    *,
    dout: bool = True,
) -> tuple[np.ndarray, ...]:
    """Standard-normal ``q (*q_shape)``, ``k (*kv_shape)``, ``v (*kv_shape[:-1], d_v)`` and, with
    ``dout``, ``dout (*q_shape[:-1], d_v)``, drawn from ``rng`` in that order (``d_v`` defaults to
    ``d = q_shape[-1]``). Any rank: ``(n, d)``, ``(H, n, d)`` or ``(B, H, n, d)``."""
    d_v = q_shape[-1] if d_v is None else d_v
    q = rng.standard_normal(q_shape).astype(dtype)
    k = rng.standard_normal(kv_shape).astype(dtype)
    v = rng.standard_normal((*kv_shape[:-1], d_v)).astype(dtype)
    if not dout:
        return q, k, v
    return q, k, v, rng.standard_normal((*q_shape[:-1], d_v)).astype(dtype)


def pattern_inputs(
    pattern: Any,
    dtype: Any,
    *,
    d: int = 64,
    d_v: int | None = None,
    heads: int = 1,
    kv_heads: int = 1,
    batch: int = 1,
    seed: int = 0,
    with_dout: bool = False,
) -> tuple[np.ndarray, ...]:
    """:func:`random_inputs` shaped for ``pattern`` (``(batch, heads, n_q, d)`` queries,
    ``(batch, kv_heads, n_k, d)`` keys) from ``default_rng(seed)``."""
    n_q, n_k = pattern.shape
    return random_inputs(
        np.random.default_rng(seed),
        (batch, heads, n_q, d),
        (batch, kv_heads, n_k, d),
        d_v,
        dtype,
        dout=with_dout,
    )


# ------------------------------------------------------------- patterns (tests/test_patterns_*.py)
# At least 60 examples per cheap property (more under HYPOTHESIS_PROFILE=slow, see conftest.py);
# 40 for the properties whose brute force is a Python loop (catalog families of part 2).
FAST = settings(max_examples=max(60, settings.default.max_examples), deadline=None)
FEW = settings(max_examples=40, deadline=None)

sizes = st.integers(0, 40)
small = st.integers(0, 50)  # windows, strides, ... sometimes larger than n


def grid(n_q: int, n_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast index grids: queries ``i`` ``(n_q, 1)`` and keys ``j`` ``(1, n_k)``."""
    n_k = n_q if n_k is None else n_k
    return np.arange(n_q)[:, None], np.arange(n_k)[None, :]


def row_keys(p: Pattern, i: int, h: int = 0) -> list[int]:
    """The keys of query row ``i`` of head ``h``, ascending."""
    csr = p.to_csr(h)
    return csr.indices[csr.indptr[i] : csr.indptr[i + 1]].tolist()


def assert_canonical_csr(p: Pattern) -> None:
    """Every head of ``p`` is canonical token CSR: bool data all ``True``, the canonical index
    dtype for both arrays, the full structure check (indptr from 0 and monotone, keys in range,
    sorted, no duplicates), and JSON-able ``params``."""
    for h in range(p.num_heads):
        csr = p.to_csr(h)
        assert csr.data.dtype == bool and csr.data.all() and len(csr.data) == len(csr.indices)
        dtype = index_dtype(len(csr.indices), csr.shape[1])
        assert csr.indices.dtype == dtype and csr.indptr.dtype == dtype
        Pattern.from_csr(csr).check_format(full_check=True)
    p.check_format(full_check=True)
    json.dumps(p.params)


def expect_pattern(p: Pattern, mask: Any, **inputs: Any) -> None:
    """``p`` equals the brute-force ``mask`` (broadcast to its heads and shape), equals the pattern
    built from that mask, is canonical, and rebuilds from its params (plus ``inputs``, the arrays
    of data-dependent families)."""
    mask = np.broadcast_to(mask, (p.num_heads, *p.shape) if p.num_heads > 1 else p.shape)
    np.testing.assert_array_equal(p.to_dense(), mask)
    assert p == Pattern.from_dense(np.ascontiguousarray(mask))
    assert_canonical_csr(p)
    assert patterns.build(p.family, **inputs, **p.params) == p


# ---------------------------------------------------- random masks (oracle and CSR backward tests)


def random_mask(
    rng: np.random.Generator,
    n_q: int,
    n_k: int,
    heads: int = 1,
    density: float = 0.4,
    empty_row: bool = True,
) -> np.ndarray:
    """Bool ``(n_q, n_k)`` (one head) or ``(heads, n_q, n_k)``, each entry allowed with
    probability ``density``; with ``empty_row`` row 1 has no keys."""
    mask = rng.random((heads, n_q, n_k)) < density
    if empty_row and n_q > 1:
        mask[:, 1, :] = False  # a query with no keys
    return mask if heads > 1 else mask[0]


def precision(dtype: Any) -> tuple[Any, Any]:
    """(compute dtype, rounding to the implementation dtype)."""
    dt = np.dtype(dtype)
    if dt.itemsize == 2:
        return np.float32, lambda x: x.astype(dt).astype(np.float32)
    return dt.type, lambda x: x.astype(dt)


def flash2(q, k, v, pattern, dout, *, scale, softcap, block=8, rescale=True):  # type: ignore[no-untyped-def]
    """FlashAttention-2 in NumPy: key blocks, exp2 with the scale folded, lse stored, P
    recomputed from lse in the backward, delta = rowsum(dout * out). ``rescale=False`` plants
    the classic online-softmax bug: the accumulator is not rescaled when the running max moves."""
    ct, rnd = precision(q.dtype)
    log2e = ct(math.log2(math.e))
    group = q.shape[1] // k.shape[1]
    qc, kc, vc = (x.astype(ct) for x in (q, np.repeat(k, group, 1), np.repeat(v, group, 1)))
    mask = np.broadcast_to(pattern.to_dense(), (q.shape[0], q.shape[1], *pattern.shape))
    n_k = k.shape[2]

    def scores(j0: int, j1: int) -> np.ndarray:
        s = np.einsum("bhqd,bhkd->bhqk", qc, kc[:, :, j0:j1])
        if softcap is not None:
            s = ct(softcap) * np.tanh(s * ct(scale) / ct(softcap)) * log2e
        else:
            s = s * ct(scale * math.log2(math.e))
        return np.where(mask[..., j0:j1], s, -np.inf)

    m = np.full(q.shape[:3], -np.inf, dtype=ct)
    l_sum = np.zeros(q.shape[:3], dtype=ct)
    acc = np.zeros((*q.shape[:3], v.shape[3]), dtype=ct)
    for j0 in range(0, n_k, block):
        s = scores(j0, j0 + block)
        m_new = np.maximum(m, s.max(axis=-1))
        safe = np.where(m_new == -np.inf, 0, m_new)
        p = np.exp2(s - safe[..., None])
        alpha = np.exp2(np.where(m == -np.inf, -np.inf, m - safe))
        l_sum = l_sum * alpha + p.sum(axis=-1)
        acc = acc * (alpha[..., None] if rescale else 1) + np.einsum(
            "bhqk,bhkd->bhqd", rnd(p), vc[:, :, j0 : j0 + block]
        )
        m = m_new
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(l_sum[..., None] > 0, acc / l_sum[..., None], 0).astype(ct)
        lse = np.where(l_sum > 0, (m + np.log2(l_sum)) / log2e, -np.inf).astype(ct)
    out = rnd(out)
    if dout is None:
        return out.astype(q.dtype), lse, None, None, None
    do = dout.astype(ct)
    delta = (do * out.astype(ct)).sum(axis=-1)
    lse2 = np.where(np.isfinite(lse), lse * log2e, 0)
    dq = np.zeros(qc.shape, dtype=ct)
    dk = np.zeros(kc.shape, dtype=ct)
    dv = np.zeros(vc.shape, dtype=ct)
    for j0 in range(0, n_k, block):
        sl = slice(j0, j0 + block)
        p = np.where(mask[..., sl], np.exp2(scores(j0, j0 + block) - lse2[..., None]), 0)
        dp = np.einsum("bhqd,bhkd->bhqk", do, vc[:, :, sl])
        ds = p * (dp - delta[..., None])
        if softcap is not None:
            t = np.tanh(np.einsum("bhqd,bhkd->bhqk", qc, kc[:, :, sl]) * ct(scale) / ct(softcap))
            ds = ds * (1 - t * t)
        ds = rnd(np.where(mask[..., sl], ds, 0))
        dq += np.einsum("bhqk,bhkd->bhqd", ds, kc[:, :, sl]) * ct(scale)
        dk[:, :, sl] = np.einsum("bhqk,bhqd->bhkd", ds, qc) * ct(scale)
        dv[:, :, sl] = np.einsum("bhqk,bhqd->bhkd", rnd(p), do)
    b, hkv = k.shape[0], k.shape[1]
    dk = dk.reshape(b, hkv, group, *dk.shape[2:]).sum(axis=2)
    dv = dv.reshape(b, hkv, group, *dv.shape[2:]).sum(axis=2)
    return out.astype(q.dtype), lse, *(x.astype(q.dtype) for x in (dq, dk, dv))


# ------------------------------------------------------------------ half-precision device inputs
# (the tensor-core GPU tests: test_gpu_backward_mma, test_gpu_forward_wgmma)

try:
    import ml_dtypes

    BF16: Any = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cases skip
    BF16 = None


def half(dtype: str) -> Any:
    """The NumPy dtype of ``"float16"`` or ``"bfloat16"`` (ml_dtypes; the test skips without it)."""
    if dtype == "bfloat16":
        if BF16 is None:
            import pytest

            pytest.skip("ml_dtypes is needed for bfloat16 references")
        return BF16
    return np.dtype(np.float16)


def half_inputs(
    pattern: Pattern, dtype: str, *, heads: int, kv_heads: int, d: int, dv: int, seed: int
) -> list[np.ndarray]:
    """q, k, v, dout (B = 1): standard normal in float64, rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    n_q, n_k = pattern.shape
    shapes = [
        (1, heads, n_q, d),
        (1, kv_heads, n_k, d),
        (1, kv_heads, n_k, dv),
        (1, heads, n_q, dv),
    ]
    return [rng.standard_normal(s).astype(half(dtype)) for s in shapes]


def to_device(x: np.ndarray) -> Any:
    """A CuPy copy of ``x`` (bfloat16 as its uint16 bits, as the kernels take it)."""
    import cupy

    return cupy.asarray(x.view(np.uint16) if x.dtype == BF16 else x)


def to_host(x: Any, dtype: np.dtype) -> np.ndarray:
    """A CuPy array back on the host, viewed as ``dtype`` (bfloat16 from its uint16 bits)."""
    import cupy

    out = cupy.asnumpy(x)
    return out.view(BF16) if dtype == BF16 else out
