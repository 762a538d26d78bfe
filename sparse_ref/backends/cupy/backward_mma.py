"""The tensor-core backward over a block form (float16/bfloat16): ``bsr_backward_mma.cu``.

Three launches, no atomics (see the kernel file's header): ``bsr_backward_mma_prep`` (``delta =
rowsum(dout * out)`` and ``lse`` in log2 units), ``bsr_backward_mma_dq`` over the block rows and
``bsr_backward_mma_dkdv`` over the block columns of the transposed block form
(:func:`device_bsr_transpose`, built once per pattern and block and cached). ``out`` and ``lse``
are the forward's; when the caller has none, ``bsr_forward_mma`` recomputes them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .arrays import _check_backward, _geometry
from .forward_launch import forward_bsr
from .metadata import DeviceBSR, _cached, _pattern_bsr, pack_masks
from .runtime import _require
from .sources import compiled
from .tiles import _CTYPES, _mma_d

__all__ = [
    "DeviceBSRT",
    "device_bsr_transpose",
    "bsr_transpose_host",
    "backward_bsr_mma",
    "mma_backward_kernel_names",
    "MMA_BWD_WARPS",
]

#: warps per CTA of the dq and dk/dv kernels (16 rows, or keys, per warp); 4 gives two CTAs per SM
MMA_BWD_WARPS = 4
_CHUNK = 64  # keys (queries) per chunk of the walk: BwdMmaCfg::BN


class DeviceBSRT(NamedTuple):
    """The transposed block form on the device: ``indptr (P, nbk+1)`` int64 absolute offsets,
    ``brows`` int32 block rows per stored block (sorted within a block column), ``mask_index``
    int32 (-1: full) into ``mbits (n_masks, bk, ceil(bq/32))`` uint32 (the forward's masks
    transposed: query ``i`` of the block is bit ``i % 32`` of word ``i // 32``); ``counts (P, nbk)``
    stored blocks per block column on the host; ``orders`` caches launch orders per GQA group."""

    block: tuple[int, int]
    indptr: Any
    brows: Any
    mask_index: Any
    mbits: Any
    n_q: int
    n_k: int
    counts: np.ndarray
    orders: dict[int, Any]


def _unpack_masks(mbits: np.ndarray, bk: int) -> np.ndarray:
    """``(n, rows, words)`` uint32 -> ``(n, rows, bk)`` bool (inverse of ``pack_masks``)."""
    n, rows, words = mbits.shape
    bits = np.unpackbits(
        np.ascontiguousarray(mbits.astype("<u4")).view(np.uint8).reshape(n, rows, 4 * words),
        axis=-1,
        bitorder="little",
    )
    return bits[:, :, :bk].astype(bool)


def bsr_transpose_host(
    block: tuple[int, int],
    indptr: np.ndarray,
    bcols: np.ndarray,
    mask_index: np.ndarray,
    mbits: np.ndarray,
    n_k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The transposed block form on the host (NumPy, ``O(nblocks log nblocks)`` plus the masks).

    Args:
        block: ``(bq, bk)``.
        indptr: ``(P, nbq + 1)`` int64 absolute offsets into the stored blocks.
        bcols, mask_index: per stored block, its block column and mask (-1: full).
        mbits: ``(n_masks, bq, ceil(bk/32))`` uint32 packed masks (``pack_masks``).
        n_k: number of keys.

    Returns:
        ``indptr (P, nbk + 1)`` int64 (same absolute offsets), ``brows`` int32 block rows
        (ascending within a block column), ``mask_index`` int32 (same mask numbers), ``mbits
        (n_masks, bk, ceil(bq/32))`` uint32 (each mask transposed), ``counts (P, nbk)`` int64 stored
        blocks per block column.
    """
    bq, bk = int(block[0]), int(block[1])
    mbits = np.asarray(mbits)
    if mbits.ndim != 3 or mbits.shape[1] != bq:
        raise ValueError(f"mbits must have shape (n_masks, {bq}, words), got {mbits.shape}")
    nbk = -(-n_k // bk)
    P, nbq = indptr.shape[0], indptr.shape[1] - 1
    nstored = int(indptr[-1, -1]) if indptr.size else 0
    cols = np.asarray(bcols)[:nstored].astype(np.int64)
    mis = np.asarray(mask_index)[:nstored]
    t_ptr = np.empty((P, nbk + 1), dtype=np.int64)
    t_rows = np.empty(nstored, dtype=np.int32)
    t_mi = np.empty(nstored, dtype=np.int32)
    counts = np.zeros((P, nbk), dtype=np.int64)
    for p in range(P):
        lo, hi = int(indptr[p, 0]), int(indptr[p, -1])
        rows = np.repeat(np.arange(nbq, dtype=np.int64), np.diff(indptr[p]))
        perm = np.argsort(cols[lo:hi] * nbq + rows, kind="stable")
        t_rows[lo:hi] = rows[perm]
        t_mi[lo:hi] = mis[lo:hi][perm]
        counts[p] = np.bincount(cols[lo:hi], minlength=nbk)[:nbk]
        t_ptr[p, 0] = lo
        t_ptr[p, 1:] = lo + np.cumsum(counts[p])
    mbits_t = pack_masks(np.swapaxes(_unpack_masks(mbits, bk), 1, 2))
    return t_ptr, t_rows, t_mi, mbits_t, counts


def device_bsr_transpose(bsr: DeviceBSR) -> DeviceBSRT:
    """The key-major block form of ``bsr`` (:func:`bsr_transpose_host` on its metadata), uploaded
    once: block column ``j`` lists the block rows that store a block in column ``j``, ascending,
    each with its mask transposed."""
    cp = _require()
    t_ptr, t_rows, t_mi, mbits_t, counts = bsr_transpose_host(
        bsr.block, bsr.indptr.get(), bsr.bcols.get(), bsr.mask_index.get(), bsr.mbits.get(), bsr.n_k
    )
    if t_rows.size == 0:  # the kernels need valid pointers
        t_rows, t_mi = np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int32)
    return DeviceBSRT(
        bsr.block, cp.asarray(t_ptr), cp.asarray(t_rows), cp.asarray(t_mi), cp.asarray(mbits_t),
        bsr.n_q, bsr.n_k, counts, {},
    )  # fmt: skip


def _kv_block_order(tbsr: DeviceBSRT, group: int) -> Any:
    """``(1 or H_kv, nbk)`` int32: per kv head, its block columns by stored blocks summed over the
    query heads of its group, most first (ties by position)."""
    if group not in tbsr.orders:
        counts = tbsr.counts
        if counts.shape[0] > 1:
            counts = counts.reshape(-1, group, counts.shape[1]).sum(axis=1)
        order = np.argsort(-counts, axis=1, kind="stable").astype(np.int32)
        tbsr.orders[group] = _require().asarray(np.ascontiguousarray(order))
    return tbsr.orders[group]


def _pattern_bsr_t(pattern: Any, block: tuple[int, int]) -> DeviceBSRT:
    return _cached(
        pattern, "bsr_t", tuple(block), lambda: device_bsr_transpose(_pattern_bsr(pattern, block))
    )


def _smem(D: int, warps: int) -> int:
    """``BwdMmaCfg<D, WARPS>::SMEM_BYTES``."""
    return (2 * 16 * warps + 4 * _CHUNK) * (D + 8) * 2 + 4 * _CHUNK * 4


def mma_backward_kernel_names(dtype: str, D: int, warps: int) -> tuple[str, str, str]:
    """Name expressions of the prep, dq and dk/dv kernels."""
    t = _CTYPES[dtype][0]
    return (
        f"sparse_ref::bsr_backward_mma_prep<{t}>",
        f"sparse_ref::bsr_backward_mma_dq<{t}, {D}, {warps}>",
        f"sparse_ref::bsr_backward_mma_dkdv<{t}, {D}, {warps}>",
    )


def backward_bsr_mma(
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
    out: Any = None,
    lse: Any = None,
    warps: int | None = None,
) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` on tensor cores, CuPy arrays in (float16, or bfloat16 as uint16 with
    ``dtype='bfloat16'``) and out, shaped and typed like ``(q, k, v)``.

    ``tbsr = device_bsr_transpose(bsr)``. ``out (B, H, n_q, d_v)`` and ``lse (B, H, n_q)`` float32
    are the forward's (``bsr_forward_mma`` runs when either is None). All of q, k, v, dout (and
    out) must be finite: entries outside the pattern inside a stored block meet a weight of
    exactly 0. ``warps``: CTA size override (default ``MMA_BWD_WARPS``)."""
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv, P = _geometry(q, k, v, bsr)
    if dtype not in ("float16", "bfloat16"):
        raise TypeError(f"the tensor-core backward needs float16 or bfloat16, got {dtype}")
    D = _mma_d(d, dv)
    if D is None:
        raise ValueError(
            f"the tensor-core backward needs d, d_v <= 128 and multiples of 8, got d={d}, d_v={dv}"
        )
    _check_backward(
        dout, (B, H, n_q, dv), bsr, tbsr, (n_q, n_k), "tbsr must be device_bsr_transpose(bsr)"
    )
    dq, dk, dvo = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    if B * H * n_q == 0 or n_k == 0:
        for x in (dq, dk, dvo):
            x.fill(0)
        return dq, dk, dvo
    warps = MMA_BWD_WARPS if warps is None else int(warps)
    if warps not in (4, 8):
        raise ValueError(f"warps must be 4 or 8, got {warps}")
    if out is None or lse is None:
        out, lse = forward_bsr(q, k, v, bsr, scale, softcap, dtype=dtype, mma=True)
    if tuple(out.shape) != (B, H, n_q, dv) or tuple(lse.shape) != (B, H, n_q):
        raise ValueError(
            f"out and lse must have shapes {(B, H, n_q, dv)} and {(B, H, n_q)}, got "
            f"{tuple(out.shape)} and {tuple(lse.shape)}"
        )
    smem = _smem(D, warps)
    kprep, kdq, kdkdv = compiled(
        "bsr_backward_mma.cu", mma_backward_kernel_names(dtype, D, warps), smem
    )
    rows = B * H * n_q
    delta = cp.empty(rows, dtype=cp.float32)
    lse2 = cp.empty(rows, dtype=cp.float32)
    lse = cp.ascontiguousarray(lse, dtype=cp.float32)
    kprep((-(-rows // 8),), (256,), (cp.ascontiguousarray(out), dout, lse, delta, lse2,
                                     np.int64(rows), np.int32(dv)))  # fmt: skip
    bq, bk = bsr.block
    bm = 16 * warps
    common = (
        np.int32(H), np.int32(Hkv), np.int32(n_q), np.int32(n_k), np.int32(d), np.int32(dv),
        np.int32(bq), np.int32(bk),
    )  # fmt: skip
    tail = (np.float32(scale), np.float32(softcap or 1.0), np.int32(softcap is not None))
    subs = -(-bq // bm)
    args = (
        q, k, v, dout, lse2, delta, dq, bsr.indptr, bsr.bcols, bsr.mask_index, bsr.mbits,
        bsr.order, common[0], common[1], np.int32(P), *common[2:],
        np.int32(bsr.mbits.shape[-1]), np.int32(subs), *tail,
    )  # fmt: skip
    kdq((H * -(-n_q // bq) * subs, B), (32 * warps,), args, shared_mem=smem)
    subs_k = -(-bk // bm)
    targs = (
        q, k, v, dout, lse2, delta, dk, dvo, tbsr.indptr, tbsr.brows, tbsr.mask_index,
        tbsr.mbits, _kv_block_order(tbsr, H // Hkv), common[0], common[1], np.int32(P),
        *common[2:], np.int32(tbsr.mbits.shape[-1]), np.int32(subs_k), *tail,
    )  # fmt: skip
    kdkdv((Hkv * -(-n_k // bk) * subs_k, B), (32 * warps,), targs, shared_mem=smem)
    return dq, dk, dvo


def mma_applies(dtype: str, q: Any, v: Any, finite: bool) -> bool:
    """Whether :func:`backward` takes the tensor-core path: float16/bfloat16, finite inputs, head
    dims that ``bsr_backward_mma`` takes (``d, d_v <= 128``, multiples of 8)."""
    return (
        dtype in ("float16", "bfloat16") and finite and _mma_d(q.shape[-1], v.shape[-1]) is not None
    )


def pattern_backward_mma(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    pattern: Any,
    out: Any,
    lse: Any,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    block: tuple[int, int] | None = None,
    warps: int | None = None,
) -> tuple[Any, Any, Any]:
    """:func:`backward_bsr_mma` over ``pattern``'s block form (its own block, else ``block`` or
    the forward's ``DEFAULT_BLOCK``), both forms cached per pattern; ``out``/``lse`` may be torch
    or CuPy (or None: recomputed)."""
    from .arrays import _to_kernel_arrays
    from .forward_launch import DEFAULT_BLOCK
    from .metadata import native_block

    blk = (int(block[0]), int(block[1])) if block is not None else None
    blk = blk or native_block(pattern) or DEFAULT_BLOCK
    if out is not None and lse is not None:
        cp = _require()
        out = _to_kernel_arrays((out,), dtype)[0][0]
        lse = cp.from_dlpack(lse.contiguous()) if type(lse).__module__.startswith("torch") else lse
        lse = cp.ascontiguousarray(cp.asarray(lse), dtype=cp.float32)
    return backward_bsr_mma(
        q, k, v, dout, _pattern_bsr(pattern, blk), _pattern_bsr_t(pattern, blk), scale, softcap,
        dtype=dtype, out=out, lse=lse, warps=warps,
    )  # fmt: skip
