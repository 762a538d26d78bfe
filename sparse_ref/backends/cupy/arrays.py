"""Array conversion at the backend's edge: CuPy views of CuPy or torch inputs (bfloat16 as
``uint16`` bits), 16-byte alignment, output allocation, scalars and finiteness checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .runtime import _require
from .tiles import _CTYPES


def _dtype_name(x: Any) -> str:
    name = str(x.dtype)
    return name.replace("torch.", "")


def _to_kernel_arrays(arrays: Sequence[Any], dtype: str | None) -> tuple[list[Any], str, Any]:
    """CuPy views of the arrays (q, k, v, ...; bfloat16 as uint16), their dtype name, and a
    converter for outputs."""
    cp = _require()
    q = arrays[0]
    if type(q).__module__.startswith("torch"):
        import torch

        name = _dtype_name(q)
        views = []
        for x in arrays:
            x = x.contiguous()
            if x.dtype == torch.bfloat16:
                x = x.view(torch.int16)
            views.append(cp.from_dlpack(x))
        if name == "bfloat16":
            views = [x.view(cp.uint16) for x in views]

        def back(a: Any) -> Any:
            if a.dtype == cp.uint16:  # bfloat16 bits; DLPack moves them as int16
                return torch.from_dlpack(a.view(cp.int16)).view(torch.bfloat16)
            return torch.from_dlpack(a)

        return [_aligned(x) for x in views], name, back
    arrs = [_aligned(cp.ascontiguousarray(x)) for x in arrays]
    name = dtype or _dtype_name(arrs[0])
    if name == "bfloat16":
        if str(arrs[0].dtype) == "bfloat16":  # a CuPy with ml_dtypes bfloat16
            arrs = [x.view(cp.uint16) for x in arrs]

            def back(a: Any) -> Any:
                return a.view(q.dtype) if a.dtype == cp.uint16 else a

            return arrs, name, back
        if arrs[0].dtype != cp.uint16:
            raise TypeError("dtype='bfloat16' needs uint16 views of the bfloat16 buffers")
    elif name not in _CTYPES:
        raise TypeError(f"the cupy backend supports {sorted(_CTYPES)}, got {name}")
    return arrs, name, lambda a: a


def _aligned(x: Any) -> Any:
    """``x`` itself when its buffer is 16-byte aligned (the kernels' vector copies), else a copy."""
    return x if x.data.ptr % 16 == 0 else x.copy()


def _geometry(q: Any, k: Any, v: Any, form: Any) -> tuple[int, int, int, int, int, int, int, int]:
    """``(B, H, H_kv, n_q, n_k, d, d_v, P)`` of a launch, after checking everything the kernels
    index with (they do no bounds checks): q, k, v 4-d of one batch size, v's rows those of k,
    ``H`` a multiple of ``H_kv``, and the device pattern ``form`` (``indptr (P, ...)``, ``n_q``,
    ``n_k``) of the inputs' lengths with ``P`` 1 (shared by every head) or ``H``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(x.shape) != 4:
            raise ValueError(f"{name} must be 4-d (B, heads, n, dim), got shape {tuple(x.shape)}")
    B, H, n_q, d = (int(s) for s in q.shape)
    Hkv, n_k, dv = int(k.shape[1]), int(k.shape[2]), int(v.shape[3])
    if int(k.shape[0]) != B or int(k.shape[3]) != d:
        raise ValueError(f"k must have shape (B={B}, H_kv, n_k, d={d}), got {tuple(k.shape)}")
    if tuple(int(s) for s in v.shape[:3]) != (B, Hkv, n_k):
        raise ValueError(f"v must have shape {(B, Hkv, n_k)} + (d_v,), got {tuple(v.shape)}")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"H = {H} query heads must be a multiple of H_kv = {Hkv} kv heads")
    if (form.n_q, form.n_k) != (n_q, n_k):
        raise ValueError(
            f"the pattern has shape {(form.n_q, form.n_k)}, but q and k give {(n_q, n_k)}"
        )
    P = int(form.indptr.shape[0])
    if P not in (1, H):
        raise ValueError(
            f"the pattern has {P} heads; expected 1 (shared) or H = {H} (one per query head)"
        )
    return B, H, Hkv, n_q, n_k, d, dv, P


def _check_backward(
    dout: Any, shape: tuple[int, ...], form: Any, tform: Any, tshape: tuple[int, int], what: str
) -> None:
    """What a backward launch reads besides :func:`_geometry`'s: ``dout`` of ``shape`` and
    ``tform`` the transpose of ``form`` (its shape ``tshape``, the same heads and block), as
    ``what`` says it must be built (the dk/dv kernels index it per head)."""
    if tuple(dout.shape) != shape:
        raise ValueError(f"dout must have shape {shape}, got {tuple(dout.shape)}")
    same = (tform.n_q, tform.n_k) == tshape and tform.indptr.shape[0] == form.indptr.shape[0]
    if not same or getattr(tform, "block", None) != getattr(form, "block", None):
        raise ValueError(what)


def _outputs(cp: Any, q: Any, dtype: str, B: int, H: int, n_q: int, dv: int) -> tuple[Any, Any]:
    out = cp.empty((B, H, n_q, dv), dtype=q.dtype)
    lse = cp.empty((B, H, n_q), dtype=cp.float64 if dtype == "float64" else cp.float32)
    return out, lse


def _scalar(dtype: str, x: float) -> Any:
    return np.float64(x) if dtype == "float64" else np.float32(x)


def _all_finite(x: Any, dtype: str) -> bool:
    if dtype == "bfloat16":  # uint16 bits: exponent all ones <=> inf/NaN
        return not bool(((x & 0x7F80) == 0x7F80).any())
    return bool(_require().isfinite(x).all())


def _without_dead_non_finite_rows(q: Any, dout: Any, r: Any, dtype: str) -> tuple[Any, Any]:
    """``q``, ``dout`` for the SIMT dk/dv kernels: rows that get no gradient (``r = 1/l == 0``: no
    keys, or only ``-inf`` scores) still meet a weight of 0 there, so where such a row holds inf
    or NaN it is zeroed in a copy (the oracle skips these rows: 0 * inf must not reach dk/dv)."""
    cp = _require()

    def non_finite_rows(x: Any) -> Any:
        if dtype == "bfloat16":  # stored as uint16: exponent bits all ones
            return ((x & 0x7F80) == 0x7F80).any(axis=-1)
        return ~cp.isfinite(x).all(axis=-1)

    bad = (r == 0) & (non_finite_rows(q) | non_finite_rows(dout))
    if not bool(bad.any()):
        return q, dout
    zero = cp.zeros((), dtype=q.dtype)
    return cp.where(bad[..., None], zero, q), cp.where(bad[..., None], zero, dout)
