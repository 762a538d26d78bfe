"""Forward launches: ``csr_forward_simt``, ``bsr_forward_simt``, ``bsr_forward_mma`` and
``bsr_forward_wgmma`` on CuPy arrays, and :func:`forward`, which picks one for a pattern and
dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import _all_finite, _geometry, _outputs, _scalar, _to_kernel_arrays
from .metadata import DeviceBSR, DeviceCSR, _csr_order, _pattern_bsr, _pattern_csr, native_block
from .runtime import _require, has_wgmma
from .sources import kernel as _kernel
from .tiles import (
    _mma_d,
    _mma_shape,
    _mma_smem,
    _simt_config,
    _simt_dmax,
    _simt_name,
    _simt_smem,
    _wgmma_shape,
    _wgmma_smem,
    mma_kernel_name,
    wgmma_kernel_name,
)

__all__ = ["DEFAULT_BLOCK", "forward", "forward_csr", "forward_bsr"]

#: block used for float16/bfloat16 when the pattern has no native block form
DEFAULT_BLOCK = (64, 64)


def forward_csr(
    q: Any,
    k: Any,
    v: Any,
    csr: DeviceCSR,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    v_finite: bool = True,
    simt: str | None = None,
) -> tuple[Any, Any]:
    """``csr_forward_simt`` on CuPy arrays (bfloat16 as uint16 with ``dtype='bfloat16'``)."""
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv, P = _geometry(q, k, v, csr)
    out, lse = _outputs(cp, q, dtype, B, H, n_q, dv)
    if out.size == 0 and lse.size == 0:
        return out, lse
    dmax = _simt_dmax(d, dv)
    cfg = _simt_config(dtype, dmax, simt, csr=True)
    smem = _simt_smem(dtype, dmax, cfg)
    kern = _kernel("csr_forward.cu", _simt_name("csr_forward_simt", dtype, dmax, cfg), smem)
    bm = 16 * cfg.tm
    args = (
        q, k, v, out, lse, csr.indptr, csr.indices, _csr_order(csr, bm),
        np.int32(H), np.int32(Hkv), np.int32(P), np.int32(n_q), np.int32(n_k), np.int32(d),
        np.int32(dv), _scalar(dtype, scale), _scalar(dtype, softcap or 1.0),
        np.int32(softcap is not None), np.int32(bool(v_finite)),
    )  # fmt: skip
    kern((H * -(-n_q // bm), B), (256,), args, shared_mem=smem)
    return out, lse


def forward_bsr(
    q: Any,
    k: Any,
    v: Any,
    bsr: DeviceBSR,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    v_finite: bool = True,
    mma: bool | None = None,
    warps: int | None = None,
    mt: int | None = None,
    simt: str | None = None,
    wgmma: bool | None = None,
    stages: int | None = None,
    warpgroups: int | None = None,
    key_tile: int | None = None,
) -> tuple[Any, Any]:
    """A BSR kernel on CuPy arrays: tensor cores for float16/bfloat16 when ``mma`` (default: when
    the dtype and head dims allow and ``v_finite``), else the SIMT kernel. On tensor cores,
    ``wgmma`` picks Hopper's warpgroup kernel ``bsr_forward_wgmma`` (default: on a compute
    capability 9.0 device when 96 < max(d, d_v) <= 128 and no ``warps``/``mt`` are given) over
    ``bsr_forward_mma`` (``mma.sync``); ``stages`` is its schedule (2: one chunk at a time; 3: the
    next chunk's scores overlap this one's softmax), ``warpgroups`` its CTA (1 or 2 warpgroups
    of 64 rows each) and ``key_tile`` its keys per step (64 or 128); defaults from
    :func:`tiles._wgmma_shape`."""
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv, P = _geometry(q, k, v, bsr)
    out, lse = _outputs(cp, q, dtype, B, H, n_q, dv)
    if out.size == 0 and lse.size == 0:
        return out, lse
    bq, bk = bsr.block
    mwords = int(bsr.mbits.shape[-1])
    D = _mma_d(d, dv) if dtype in ("float16", "bfloat16") else None
    if mma is None:
        mma = D is not None and v_finite
    if wgmma and not mma:
        raise ValueError(
            "wgmma=True needs the tensor-core path (float16/bfloat16, finite v, mma not False)"
        )
    if mma:
        if D is None:
            raise ValueError(
                "the tensor-core kernel needs float16/bfloat16 and d, d_v <= 128, multiples of 8"
            )
        if wgmma is None:
            wgmma = D == 128 and warps is None and mt is None and has_wgmma()
        elif wgmma and (D != 128 or not has_wgmma()):
            raise ValueError(
                "the wgmma kernel needs a compute capability 9.0 GPU and 96 < max(d, d_v) <= 128"
            )
        if wgmma:
            if warps is not None or mt is not None:
                raise ValueError(
                    "warps and mt shape the mma.sync kernel; pass wgmma=False with them"
                )
            wgs, stages, bn = _wgmma_shape(bq, bk, stages, warpgroups, key_tile)
            bm, smem, threads = 64 * wgs, _wgmma_smem(wgs, stages, bn), 128 * wgs
            name = wgmma_kernel_name(dtype, wgs, stages, bn)
            kern = _kernel("bsr_forward_wgmma.cu", name, smem)
        else:
            if stages is not None or warpgroups is not None or key_tile is not None:
                raise ValueError(
                    "stages, warpgroups and key_tile shape the wgmma kernel, which this call does "
                    "not run"
                )
            warps, mt = _mma_shape(bq, D, warps, mt)
            bm, smem, threads = 16 * warps * mt, _mma_smem(D, warps, mt), 32 * warps
            kern = _kernel("bsr_forward.cu", mma_kernel_name(dtype, D, warps, mt), smem)
        subs = -(-bq // bm)
        margs = (
            q, k, v, out, lse, bsr.indptr, bsr.bcols, bsr.mask_index, bsr.mbits, bsr.order,
            np.int32(H), np.int32(Hkv), np.int32(P), np.int32(n_q), np.int32(n_k), np.int32(d),
            np.int32(dv), np.int32(bq), np.int32(bk), np.int32(mwords), np.int32(subs),
            np.float32(scale), np.float32(softcap or 1.0), np.int32(softcap is not None),
        )  # fmt: skip
        kern((H * -(-n_q // bq) * subs, B), (threads,), margs, shared_mem=smem)
        return out, lse
    dmax = _simt_dmax(d, dv)
    cfg = _simt_config(dtype, dmax, simt)
    smem = _simt_smem(dtype, dmax, cfg)
    kern = _kernel("bsr_forward.cu", _simt_name("bsr_forward_simt", dtype, dmax, cfg), smem)
    bm = 16 * cfg.tm
    subs = -(-bq // bm)
    args = (
        q, k, v, out, lse, bsr.indptr, bsr.bcols, bsr.mask_index, bsr.mbits, bsr.order,
        np.int32(H), np.int32(Hkv), np.int32(P), np.int32(n_q), np.int32(n_k), np.int32(d),
        np.int32(dv), np.int32(bq), np.int32(bk), np.int32(mwords), np.int32(subs),
        _scalar(dtype, scale), _scalar(dtype, softcap or 1.0), np.int32(softcap is not None),
        np.int32(bool(v_finite)),
    )  # fmt: skip
    kern((H * -(-n_q // bq) * subs, B), (256,), args, shared_mem=smem)
    return out, lse


def forward(
    q: Any,
    k: Any,
    v: Any,
    pattern: Any,
    scale: float,
    softcap: float | None,
    *,
    dtype: str | None = None,
    kernel: str = "auto",
    block: tuple[int, int] | None = None,
    v_finite: bool | None = None,
    simt: str | None = None,
    warps: int | None = None,
    mt: int | None = None,
    wgmma: bool | None = None,
) -> tuple[Any, Any]:
    """``(out, lse)`` of sparse attention on the GPU.

    Args:
        q, k, v: ``(B, H, n_q, d)``, ``(B, H_kv, n_k, d)``, ``(B, H_kv, n_k, d_v)`` CuPy arrays (or
            torch CUDA tensors, returned as torch) of one dtype: float64, float32, float16, or
            bfloat16 (CuPy ``uint16`` views with ``dtype="bfloat16"``, or torch bfloat16).
        pattern: a ``Pattern`` (``shape``, ``stacked_csr()``, optionally
            ``stacked_bsr(block=...)``).
        scale, softcap: as ``sparse_ref.attention`` (already resolved to floats).
        kernel: ``"auto"``, ``"csr"``, ``"bsr"`` (SIMT or tensor cores as the dtype allows),
            ``"bsr_simt"``.
        block: the block for the BSR kernels (default: the pattern's own, else ``DEFAULT_BLOCK``).
        v_finite: whether ``v`` is all finite (``None``: checked on the device). Excluded keys that
            share a tile with allowed ones are multiplied by an exact 0, so a non-finite ``v`` takes
            the slower SIMT path that skips them, as the oracle does.
        simt, warps, mt: kernel shape overrides (``SIMT_CONFIGS`` name; tensor-core CTA warps and
            16-row m-tiles per warp), for benchmarks and tests.
        wgmma: on the tensor-core path, Hopper's ``wgmma`` kernel (True) or the ``mma.sync`` one
            (False); ``None`` picks ``wgmma`` where it runs (see :func:`forward_bsr`).

    Returns:
        ``out`` like q (dtype and shape ``(B, H, n_q, d_v)``) and ``lse (B, H, n_q)``, float64 for
        float64 inputs and float32 otherwise; rows without keys give 0 and ``-inf``.
    """
    (qa, ka, va), name, back = _to_kernel_arrays((q, k, v), dtype)
    if v_finite is None:
        v_finite = _all_finite(va, name)
    nblock = native_block(pattern)
    if kernel == "auto":
        kernel = "bsr" if (name in ("float16", "bfloat16") or nblock is not None) else "csr"
    if kernel == "csr":
        if wgmma:
            raise ValueError("wgmma=True applies to the block-form kernels, not kernel='csr'")
        out, lse = forward_csr(
            qa, ka, va, _pattern_csr(pattern), scale, softcap, dtype=name, v_finite=v_finite,
            simt=simt,
        )  # fmt: skip
    elif kernel in ("bsr", "bsr_simt"):
        blk = tuple(block) if block is not None else (nblock or DEFAULT_BLOCK)
        bsr = _pattern_bsr(pattern, blk)  # type: ignore[arg-type]
        mma = False if kernel == "bsr_simt" else None
        out, lse = forward_bsr(
            qa, ka, va, bsr, scale, softcap, dtype=name, v_finite=v_finite, mma=mma, simt=simt,
            warps=warps, mt=mt, wgmma=wgmma,
        )  # fmt: skip
    else:
        raise ValueError(f"kernel must be 'auto', 'csr', 'bsr' or 'bsr_simt', got {kernel!r}")
    return back(out), back(lse)
