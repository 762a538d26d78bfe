"""Device metadata of a pattern: its stacked CSR, block form and transposes on the GPU, and the
heaviest-first launch orders.

The host arrays come from :mod:`sparse_ref.metadata` (the pattern's own kernel metadata); their
device copies, and the transposes built on the device, are kept in the same per-pattern cache,
per device. The token-CSR transpose is built on the device (one CuPy sort per head), not by the
host counting sort of ``sparse_ref.metadata``, which needs Numba.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ... import metadata as host_metadata
from ...blocks import from_csr as blocks_from_csr
from ...metadata import cached as _on_pattern
from .runtime import _require

__all__ = [
    "DeviceCSR",
    "DeviceBSR",
    "device_csr",
    "device_bsr",
    "device_csr_transpose",
    "bsr_from_csr",
    "pack_masks",
    "native_block",
]


class DeviceCSR(NamedTuple):
    """A stacked CSR on the device: ``indptr (P, n_q+1)`` int64 absolute, ``indices`` int32;
    ``orders`` caches, per row-tile height, each head's tiles sorted by entries (heaviest first)."""

    indptr: Any
    indices: Any
    n_q: int
    n_k: int
    orders: dict[Any, Any]


class DeviceBSR(NamedTuple):
    """A block form on the device (see ``bsr_forward.cu``): ``indptr (P, nbq+1)`` int64,
    ``bcols`` and ``mask_index`` int32 per stored block, ``mbits (n_partial, bq, mwords)`` uint32
    packed masks."""

    block: tuple[int, int]
    indptr: Any
    bcols: Any
    mask_index: Any
    mbits: Any
    n_q: int
    n_k: int
    order: Any  # (P, nbq) int32: each head's block rows, most stored blocks first


def device_csr(indptr: Any, indices: Any, n_q: int, n_k: int) -> DeviceCSR:
    """Upload a stacked CSR (NumPy or CuPy arrays) in the dtypes the kernels read."""
    cp = _require()
    if n_k > np.iinfo(np.int32).max:
        raise ValueError(f"the cupy backend needs n_k < 2**31, got {n_k}")
    ip = cp.ascontiguousarray(cp.asarray(indptr, dtype=cp.int64))
    if ip.ndim != 2 or ip.shape[1] != n_q + 1:
        raise ValueError(f"indptr must have shape (P, n_q + 1) = (P, {n_q + 1}), got {ip.shape}")
    ix = cp.ascontiguousarray(cp.asarray(indices, dtype=cp.int32))
    if ix.size == 0:
        ix = cp.zeros(1, dtype=cp.int32)  # never read; keeps a valid pointer
    return DeviceCSR(ip, ix, int(n_q), int(n_k), {})


def _heaviest_first(indptr: np.ndarray, rows: int, group: int = 1) -> np.ndarray:
    """``(P / group, ceil(n/rows))`` int32: per head (per ``group`` consecutive heads, their
    entries summed; one row when ``P == 1``), the groups of ``rows`` consecutive rows of
    ``indptr`` ordered by their number of entries, largest first (ties by position)."""
    n = indptr.shape[1] - 1
    starts = np.arange(0, n, rows)
    counts = indptr[:, np.minimum(starts + rows, n)] - indptr[:, starts]
    if counts.shape[0] > 1 and group > 1:
        counts = counts.reshape(-1, group, len(starts)).sum(axis=1)
    return np.argsort(-counts, axis=1, kind="stable").astype(np.int32)


def _csr_order(csr: DeviceCSR, rows: int) -> Any:
    if rows not in csr.orders:
        cp = _require()
        host = csr.indptr.get()
        csr.orders[rows] = cp.asarray(np.ascontiguousarray(_heaviest_first(host, rows)))
    return csr.orders[rows]


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """``(n, bq, bk)`` bool -> ``(n, bq, ceil(bk/32))`` uint32: key ``j`` is bit ``j % 32`` of
    word ``j // 32``."""
    masks = np.asarray(masks, dtype=bool)
    n, bq, bk = masks.shape
    words = -(-bk // 32)
    padded = np.zeros((n, bq, words * 32), dtype=bool)
    padded[:, :, :bk] = masks
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32).reshape(n, bq, words)


def device_bsr(
    block: tuple[int, int],
    indptr: Any,
    indices: Any,
    mask_index: Any,
    masks: Any,
    n_q: int,
    n_k: int,
    *,
    packed: bool = False,
) -> DeviceBSR:
    """Upload a block form (``masks``: bool ``(n_partial, bq, bk)``, or packed if ``packed``)."""
    cp = _require()
    bq, bk = int(block[0]), int(block[1])
    if bq < 1 or bk < 1:
        raise ValueError(f"block sizes must be positive, got {block}")
    nbq = -(-n_q // bq)
    ip = cp.ascontiguousarray(cp.asarray(indptr, dtype=cp.int64))
    if ip.ndim != 2 or ip.shape[1] != nbq + 1:
        raise ValueError(
            f"block indptr must have shape (P, nbq + 1) = (P, {nbq + 1}), got {ip.shape}"
        )
    bc = cp.ascontiguousarray(cp.asarray(indices, dtype=cp.int32))
    mi = cp.ascontiguousarray(cp.asarray(mask_index, dtype=cp.int32))
    if packed:
        mb = cp.ascontiguousarray(cp.asarray(masks, dtype=cp.uint32))
    else:
        m = masks.get() if hasattr(masks, "get") else np.asarray(masks)
        m = m.reshape(-1, bq, bk) if m.size else np.zeros((0, bq, bk), dtype=bool)
        mb = cp.asarray(pack_masks(m))
    words = -(-bk // 32)
    if mb.size == 0:
        mb = cp.zeros((1, bq, words), dtype=cp.uint32)
    if bc.size == 0:
        bc = cp.zeros(1, dtype=cp.int32)
        mi = cp.zeros(1, dtype=cp.int32)
    order = cp.asarray(np.ascontiguousarray(_heaviest_first(ip.get(), 1)))
    return DeviceBSR((bq, bk), ip, bc, mi, mb, int(n_q), int(n_k), order)


def bsr_from_csr(
    indptr: np.ndarray, indices: np.ndarray, shape: tuple[int, int], block: tuple[int, int]
) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Block form of a stacked CSR (``indptr (P, n_q+1)`` absolute offsets, sorted rows):
    ``(block, indptr (P, nbq+1) int64, bcols int32, mask_index int32 (-1 = full), masks
    (n_masks, bq, bk) bool)``, by :func:`sparse_ref.blocks.from_csr` (a block is full when every
    in-range entry is allowed; equal masks are stored once)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices)
    heads = [(ip - ip[0], indices[ip[0] : ip[-1]]) for ip in indptr]
    form = blocks_from_csr(heads, (int(shape[0]), int(shape[1])), block).kernel_form()
    return (tuple(form.block), *form[1:])  # type: ignore[return-value]


def _cached(pattern: Any, kind: str, key: Any, build: Any) -> Any:
    """Device form ``kind`` (``key``: its parameters) of ``pattern``, built once per device and
    kept in the pattern's own kernel-metadata cache (:mod:`sparse_ref.metadata`): it lives exactly
    as long as the pattern, which is immutable, so it never goes stale."""
    return _on_pattern(pattern, ("cupy", _require().cuda.Device().id, kind, key), build)


def native_block(pattern: Any) -> tuple[int, int] | None:
    """The block shape of a pattern built from blocks (``Pattern.block``), or None."""
    block = pattern.block
    return None if block is None else (int(block[0]), int(block[1]))


def _pattern_csr(pattern: Any) -> DeviceCSR:
    def build() -> DeviceCSR:
        csr = host_metadata.csr(pattern)
        n_q, n_k = pattern.shape
        return device_csr(csr.indptr, csr.indices, n_q, n_k)

    return _cached(pattern, "csr", None, build)


def _pattern_bsr(pattern: Any, block: tuple[int, int]) -> DeviceBSR:
    """The pattern's block form of ``block`` on the device: its own (``sparse_ref.metadata``) when
    it holds one of that block, else derived from its token CSR (``Pattern.stacked_bsr``)."""

    def build() -> DeviceBSR:
        n_q, n_k = pattern.shape
        if native_block(pattern) == tuple(block):
            form = host_metadata.blocks(pattern)
        else:
            form = pattern.stacked_bsr(block=block)
        (bq, bk), ip, ix, mi, masks = form
        return device_bsr((bq, bk), ip, ix, mi, masks, n_q, n_k)

    return _cached(pattern, "bsr", tuple(block), build)


def device_csr_transpose(csr: DeviceCSR) -> DeviceCSR:
    """The key-major pattern of a device CSR (``Pattern.transpose().stacked_csr()`` on the GPU):
    row ``j`` lists the queries ``i`` that attend key ``j``, ascending; each head keeps the offsets
    of its entries. One sort per head of the keys ``j * n_q + i`` (CuPy); temporary memory about 32
    bytes per entry of the largest head."""
    cp = _require()
    n_q, n_k = csr.n_q, csr.n_k
    host_ptr = csr.indptr.get()
    P = host_ptr.shape[0]
    t_ptr = np.empty((P, n_k + 1), dtype=np.int64)
    t_idx = cp.zeros_like(csr.indices)
    for p in range(P):
        lo, hi = int(host_ptr[p, 0]), int(host_ptr[p, -1])
        t_ptr[p, 0] = lo
        if hi == lo:
            t_ptr[p, 1:] = lo
            continue
        cols = csr.indices[lo:hi]
        ends = csr.indptr[p, 1:] - lo
        rows = cp.searchsorted(ends, cp.arange(hi - lo, dtype=cp.int64), side="right")
        perm = cp.argsort(cols.astype(cp.int64) * n_q + rows)
        t_idx[lo:hi] = rows[perm].astype(cp.int32)
        del rows, perm
        t_ptr[p, 1:] = lo + np.cumsum(cp.bincount(cols, minlength=n_k).get()[:n_k])
    return DeviceCSR(cp.asarray(t_ptr), t_idx, n_k, n_q, {})


def _kv_order(tcsr: DeviceCSR, rows: int, group: int) -> Any:
    """``(1 or H_kv, ceil(n_k/rows))`` int32: per kv head, its key tiles by stored entries summed
    over the query heads of its group, largest first (ties by position)."""
    key = ("kv", rows, group)
    if key not in tcsr.orders:
        order = _heaviest_first(tcsr.indptr.get(), rows, group)
        tcsr.orders[key] = _require().asarray(np.ascontiguousarray(order))
    return tcsr.orders[key]


def _pattern_csr_t(pattern: Any) -> DeviceCSR:
    return _cached(pattern, "csr_t", None, lambda: device_csr_transpose(_pattern_csr(pattern)))
