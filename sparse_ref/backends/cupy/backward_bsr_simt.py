"""The SIMT backward over a block form (all four dtypes; float16/bfloat16 computed in float32):
``bsr_backward_dq`` then ``bsr_backward_dkdv`` of ``bsr_backward_simt.cu``.

The math is the token-CSR backward's (``backward_core.cuh``: each row's statistics re-derived from
its own scores, no atomics, bitwise deterministic); the walk is over stored blocks: dq per query
block row, dk/dv per key block column of the transposed block form (:func:`device_bsr_transpose`,
built once per pattern and block and cached), full blocks without a mask, partial blocks through
their packed masks, GQA heads summed in increasing order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import _check_backward, _geometry, _scalar, _without_dead_non_finite_rows
from .backward_mma import DeviceBSRT, _kv_block_order, device_bsr_transpose
from .metadata import DeviceBSR
from .runtime import _require
from .sources import compiled
from .tiles import _bwd_smem, _bwd_tiles, _simt_dmax, bwd_kernel_names

__all__ = ["backward_bsr", "device_bsr_transpose"]


def backward_bsr(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    bsr: DeviceBSR,
    tbsr: DeviceBSRT,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    finite: bool = True,
    tiles: tuple[int, int] | None = None,
) -> tuple[Any, Any, Any]:
    """``bsr_backward_dq`` then ``bsr_backward_dkdv`` on CuPy arrays (bfloat16 as uint16 with
    ``dtype='bfloat16'``).

    Args:
        q, k, v, dout: ``(B, H, n_q, d)``, ``(B, H_kv, n_k, d)``, ``(B, H_kv, n_k, d_v)``,
            ``(B, H, n_q, d_v)`` of one dtype.
        bsr: the block form (:func:`device_bsr`); ``tbsr = device_bsr_transpose(bsr)``.
        scale, softcap: as the forward.
        finite: q, k, v and dout hold no inf/NaN (then entries outside the pattern inside a stored
            block may meet a weight of exactly 0 in the accumulations; otherwise they are skipped).
        tiles: ``(TM, TN)`` override (see ``BWD_TILES``).

    Returns:
        ``(dq, dk, dv)`` shaped and typed like ``(q, k, v)``.
    """
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv, P = _geometry(q, k, v, bsr)
    _check_backward(
        dout, (B, H, n_q, dv), bsr, tbsr, (n_q, n_k), "tbsr must be device_bsr_transpose(bsr)"
    )
    dq, dk, dvo = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    if B == 0 or H == 0:
        dk.fill(0)
        dvo.fill(0)
        return dq, dk, dvo
    dmax = _simt_dmax(d, dv)
    tm, tn = _bwd_tiles(dtype, dmax, tiles)
    smem = _bwd_smem(dtype, dmax, tm, tn)
    names = bwd_kernel_names(dtype, dmax, (tm, tn), form="bsr")
    kdq, kdkdv = compiled("bsr_backward_simt.cu", names, smem)
    stats = cp.empty((3, B * H * n_q), dtype=cp.float64 if dtype == "float64" else cp.float32)
    bm = 16 * tm
    bq, bk = bsr.block
    tail = (
        _scalar(dtype, scale), _scalar(dtype, softcap or 1.0), np.int32(softcap is not None),
        np.int32(bool(finite)),
    )  # fmt: skip
    if n_q > 0:
        subs = -(-bq // bm)
        args = (
            q, k, v, dout, dq, stats[0], stats[1], stats[2], bsr.indptr, bsr.bcols,
            bsr.mask_index, bsr.mbits, bsr.order, np.int32(H), np.int32(Hkv), np.int32(P),
            np.int32(n_q), np.int32(n_k), np.int32(d), np.int32(dv), np.int32(bq), np.int32(bk),
            np.int32(bsr.mbits.shape[-1]), np.int32(subs), *tail,
        )  # fmt: skip
        kdq((H * -(-n_q // bq) * subs, B), (256,), args, shared_mem=smem)
    if n_k > 0:
        if not finite:
            q, dout = _without_dead_non_finite_rows(q, dout, stats[1].reshape(B, H, n_q), dtype)
        group = H // Hkv
        subs = -(-bk // bm)
        targs = (
            q, k, v, dout, dk, dvo, stats[0], stats[1], stats[2], tbsr.indptr, tbsr.brows,
            tbsr.mask_index, tbsr.mbits, _kv_block_order(tbsr, group), np.int32(H),
            np.int32(Hkv), np.int32(P), np.int32(1 if P == 1 else Hkv), np.int32(n_q),
            np.int32(n_k), np.int32(d), np.int32(dv), np.int32(bq), np.int32(bk),
            np.int32(tbsr.mbits.shape[-1]), np.int32(subs), *tail,
        )  # fmt: skip
        kdkdv((Hkv * -(-n_k // bk) * subs, B), (256,), targs, shared_mem=smem)
    return dq, dk, dvo
