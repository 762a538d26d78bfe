"""Device metadata of a pattern: its stacked CSR, block form and transposes on the GPU, the
heaviest-first launch orders, and a small cache of them per ``Pattern`` (patterns are immutable).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

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


def _heaviest_first(indptr: np.ndarray, rows: int) -> np.ndarray:
    """``(P, ceil(n/rows))`` int32: per head, the groups of ``rows`` consecutive rows of ``indptr``
    ordered by their number of entries, largest first (ties by position)."""
    n = indptr.shape[1] - 1
    starts = np.arange(0, n, rows)
    counts = indptr[:, np.minimum(starts + rows, n)] - indptr[:, starts]
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
    """Block form of a stacked CSR: ``(block, indptr (P, nbq+1) int64, bcols int32, mask_index
    int32 (-1 = full), masks (n_partial, bq, bk) bool)``; a block is full when every in-range entry
    is allowed. NumPy, O(nnz log nnz): meant for patterns without a native block form."""
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices)
    n_q, n_k = shape
    bq, bk = int(block[0]), int(block[1])
    nbq, nbk = -(-n_q // bq), -(-n_k // bk)
    ips, cols_all, mis, masks_all = [], [], [], []
    nblocks = npartial = 0
    for p in range(indptr.shape[0]):
        lo, hi = indptr[p, 0], indptr[p, -1]
        rows = np.repeat(np.arange(n_q, dtype=np.int64), np.diff(indptr[p]))
        cols = indices[lo:hi].astype(np.int64)
        bi, bj = rows // bq, cols // bk
        uniq, inv, counts = np.unique(bi * nbk + bj, return_inverse=True, return_counts=True)
        ubi, ubj = uniq // nbk, uniq % nbk
        size = np.minimum(bq, n_q - ubi * bq) * np.minimum(bk, n_k - ubj * bk)
        full = counts == size
        pid = np.cumsum(~full) - 1
        mi = np.where(full, -1, pid + npartial).astype(np.int32)
        masks = np.zeros((int((~full).sum()), bq, bk), dtype=bool)
        sel = ~full[inv]
        masks[pid[inv[sel]], rows[sel] - bi[sel] * bq, cols[sel] - bj[sel] * bk] = True
        ips.append(np.searchsorted(ubi, np.arange(nbq + 1)) + nblocks)
        cols_all.append(ubj.astype(np.int32))
        mis.append(mi)
        masks_all.append(masks)
        nblocks += len(uniq)
        npartial += len(masks)
    return (
        (bq, bk),
        np.stack(ips).astype(np.int64),
        np.concatenate(cols_all),
        np.concatenate(mis),
        np.concatenate(masks_all) if masks_all else np.zeros((0, bq, bk), dtype=bool),
    )


_PATTERN_CACHE: OrderedDict[tuple[int, str, Any], tuple[Any, Any]] = OrderedDict()
_PATTERN_CACHE_SIZE = 8


def _cached(pattern: Any, kind: str, key: Any, build: Any) -> Any:
    """Device form of ``pattern`` (LRU by identity; Patterns are immutable)."""
    ck = (id(pattern), kind, key)
    hit = _PATTERN_CACHE.get(ck)
    if hit is not None and hit[0] is pattern:
        _PATTERN_CACHE.move_to_end(ck)
        return hit[1]
    value = build()
    _PATTERN_CACHE[ck] = (pattern, value)
    while len(_PATTERN_CACHE) > _PATTERN_CACHE_SIZE:
        _PATTERN_CACHE.popitem(last=False)
    return value


def native_block(pattern: Any) -> tuple[int, int] | None:
    """The block shape of a pattern built from blocks (``Pattern.block``), or None."""
    block = pattern.block
    return None if block is None else (int(block[0]), int(block[1]))


def _pattern_csr(pattern: Any) -> DeviceCSR:
    def build() -> DeviceCSR:
        csr = pattern.stacked_csr()
        n_q, n_k = pattern.shape
        return device_csr(csr[0], csr[1], n_q, n_k)

    return _cached(pattern, "csr", None, build)


def _pattern_bsr(pattern: Any, block: tuple[int, int]) -> DeviceBSR:
    def build() -> DeviceBSR:
        n_q, n_k = pattern.shape
        if hasattr(pattern, "stacked_bsr"):
            blk, ip, ix, mi, masks = pattern.stacked_bsr(block=block)
        else:
            csr = pattern.stacked_csr()
            blk, ip, ix, mi, masks = bsr_from_csr(csr[0], csr[1], (n_q, n_k), block)
        return device_bsr(tuple(blk), ip, ix, mi, masks, n_q, n_k)

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
        cp = _require()
        host = tcsr.indptr.get()
        n = host.shape[1] - 1
        starts = np.arange(0, n, rows)
        counts = host[:, np.minimum(starts + rows, n)] - host[:, starts]
        if host.shape[0] > 1:
            counts = counts.reshape(-1, group, len(starts)).sum(axis=1)
        order = np.argsort(-counts, axis=1, kind="stable").astype(np.int32)
        tcsr.orders[key] = cp.asarray(np.ascontiguousarray(order))
    return tcsr.orders[key]


def _pattern_csr_t(pattern: Any) -> DeviceCSR:
    return _cached(pattern, "csr_t", None, lambda: device_csr_transpose(_pattern_csr(pattern)))
