"""Backward launches: ``csr_backward_dq`` and ``csr_backward_dkdv`` on CuPy arrays, and
:func:`backward`, the backend's entry point, which picks the token-CSR, block-form SIMT
(``backward_bsr_simt``) or tensor-core (``backward_mma``) kernels."""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import (
    _all_finite,
    _check_backward,
    _geometry,
    _scalar,
    _to_kernel_arrays,
    _without_dead_non_finite_rows,
)
from .backward_bsr_simt import backward_bsr
from .backward_mma import _pattern_bsr_t, mma_applies, pattern_backward_mma
from .forward_launch import DEFAULT_BLOCK
from .metadata import (
    DeviceCSR,
    _csr_order,
    _kv_order,
    _pattern_bsr,
    _pattern_csr,
    _pattern_csr_t,
    native_block,
)
from .runtime import _require
from .sources import compiled
from .tiles import _bwd_smem, _bwd_tiles, _simt_dmax, bwd_kernel_names

__all__ = ["backward", "backward_csr"]


def backward_csr(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    csr: DeviceCSR,
    tcsr: DeviceCSR,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    finite: bool = True,
    tiles: tuple[int, int] | None = None,
) -> tuple[Any, Any, Any]:
    """``csr_backward_dq`` then ``csr_backward_dkdv`` on CuPy arrays (bfloat16 as uint16 with
    ``dtype='bfloat16'``); ``tcsr = device_csr_transpose(csr)``. ``finite``: q, k, v and dout hold
    no inf/NaN (then entries outside the pattern may meet a weight of exactly 0 in the
    accumulations; otherwise they are skipped). Returns ``(dq, dk, dv)`` shaped and typed like
    ``(q, k, v)``."""
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv, P = _geometry(q, k, v, csr)
    _check_backward(
        dout, (B, H, n_q, dv), csr, tcsr, (n_k, n_q), "tcsr must be device_csr_transpose(csr)"
    )
    dq, dk, dvo = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    if B == 0 or H == 0:
        dk.fill(0)
        dvo.fill(0)
        return dq, dk, dvo
    dmax = _simt_dmax(d, dv)
    tm, tn = _bwd_tiles(dtype, dmax, tiles)
    smem = _bwd_smem(dtype, dmax, tm, tn)
    kdq, kdkdv = compiled("csr_backward.cu", bwd_kernel_names(dtype, dmax, (tm, tn)), smem)
    stats = cp.empty((3, B * H * n_q), dtype=cp.float64 if dtype == "float64" else cp.float32)
    bm = 16 * tm
    common = (
        np.int32(n_q), np.int32(n_k), np.int32(d), np.int32(dv), _scalar(dtype, scale),
        _scalar(dtype, softcap or 1.0), np.int32(softcap is not None), np.int32(bool(finite)),
    )  # fmt: skip
    if n_q > 0:
        args = (
            q, k, v, dout, dq, stats[0], stats[1], stats[2], csr.indptr, csr.indices,
            _csr_order(csr, bm), np.int32(H), np.int32(Hkv), np.int32(P), *common,
        )  # fmt: skip
        kdq((H * -(-n_q // bm), B), (256,), args, shared_mem=smem)
    if n_k > 0:
        if not finite:
            q, dout = _without_dead_non_finite_rows(q, dout, stats[1].reshape(B, H, n_q), dtype)
        group = H // Hkv
        targs = (
            q, k, v, dout, dk, dvo, stats[0], stats[1], stats[2], tcsr.indptr, tcsr.indices,
            _kv_order(tcsr, bm, group), np.int32(H), np.int32(Hkv), np.int32(P),
            np.int32(1 if P == 1 else Hkv), *common,
        )  # fmt: skip
        kdkdv((Hkv * -(-n_k // bm), B), (256,), targs, shared_mem=smem)
    return dq, dk, dvo


def backward(
    q: Any,
    k: Any,
    v: Any,
    pattern: Any,
    dout: Any,
    out: Any,
    lse: Any,
    scale: float,
    softcap: float | None,
    *,
    dtype: str | None = None,
    finite: bool | None = None,
    tiles: tuple[int, int] | None = None,
    kernel: str = "auto",
) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` of sparse attention on the GPU (the signature of the Numba backend's).

    Args:
        q, k, v, pattern, scale, softcap, dtype: as :func:`forward`.
        dout: ``(B, H, n_q, d_v)``, the gradient with respect to ``out``, of q's dtype.
        out, lse: the forward's results. The tensor-core path (float16/bfloat16) uses them for
            ``delta = rowsum(dout * out)`` and ``p = exp(s - lse)`` (FlashAttention-2), and
            recomputes them with the forward kernel when either is None; the SIMT path ignores
            them: it re-derives each row's statistics and ``delta = sum_j p_ij (dout_i . v_j)``
            from its own scores (as the CPU kernels do).
        finite: whether q, k, v and dout are all finite (``None``: checked on the device).
        tiles: ``(TM, TN)`` tile override (see ``BWD_TILES``), for tests and benchmarks.
        kernel: ``"auto"`` (float16/bfloat16 with finite inputs and ``d, d_v <= 128``, multiples
            of 8, and no ``tiles``: the tensor-core kernels of ``bsr_backward_mma.cu`` over the
            pattern's block form; else a pattern that carries a block form: the SIMT block-form
            kernels of ``bsr_backward_simt.cu``; else the SIMT CSR kernels), ``"csr"``,
            ``"bsr_simt"`` (over the pattern's block form, or its ``DEFAULT_BLOCK`` form when it
            has none) or ``"bsr_mma"``.

    Returns:
        ``dq, dk, dv`` shaped and typed like ``q, k, v`` (CuPy, or torch for torch inputs);
        float64 inputs are computed in float64, the others in float32. Rows with no allowed keys
        get ``dq = 0`` and add nothing to dk/dv; with GQA, dk/dv of a kv head sum over its query
        heads in increasing order. Deterministic: bitwise identical across runs.
    """
    (qa, ka, va, ga), name, back = _to_kernel_arrays((q, k, v, dout), dtype)
    if finite is None:
        finite = all(_all_finite(x, name) for x in (qa, ka, va, ga))
    if kernel not in ("auto", "csr", "bsr_simt", "bsr_mma"):
        raise ValueError(f"kernel must be 'auto', 'csr', 'bsr_simt' or 'bsr_mma', got {kernel!r}")
    if kernel == "bsr_mma" or (
        kernel == "auto" and tiles is None and mma_applies(name, qa, va, finite)
    ):
        if not finite:
            raise ValueError("kernel='bsr_mma' needs finite q, k, v and dout")
        dq, dk, dv = pattern_backward_mma(
            qa, ka, va, ga, pattern, out, lse, scale, softcap, dtype=name
        )
        return back(dq), back(dk), back(dv)
    nblock = native_block(pattern)
    if kernel == "bsr_simt" or (kernel == "auto" and nblock is not None):
        blk = nblock or DEFAULT_BLOCK
        dq, dk, dv = backward_bsr(
            qa, ka, va, ga, _pattern_bsr(pattern, blk), _pattern_bsr_t(pattern, blk), scale,
            softcap, dtype=name, finite=finite, tiles=tiles,
        )  # fmt: skip
        return back(dq), back(dk), back(dv)
    dq, dk, dv = backward_csr(
        qa, ka, va, ga, _pattern_csr(pattern), _pattern_csr_t(pattern), scale, softcap,
        dtype=name, finite=finite, tiles=tiles,
    )  # fmt: skip
    return back(dq), back(dk), back(dv)
