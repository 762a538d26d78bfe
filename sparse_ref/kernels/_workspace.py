"""Scratch memory kept between kernel calls.

A training loop calls the backward with the same shapes every step. Fresh scratch of tens of
megabytes per call costs page faults on every call (on the 2-core development VM, first touch runs
at about 0.5-2 GB/s, and two threads faulting at once in one process contend), which measured
between 8 and 40 ms for the 33 MiB scratch of a 4.2M-entry float32 backward: as much as the
kernels' arithmetic. So the kernels borrow their scratch from here and give it back.

``borrow(nbytes)`` returns a byte buffer of at least ``nbytes``: the kept one if it is large enough
(taken out, so a concurrent caller gets a fresh one instead of sharing it), else a new one.
``give_back(buffer)`` keeps the larger of it and the one kept, if it is at most :data:`KEEP_BYTES`.
:func:`release` drops it. The contents are never read before being written by the kernels, so
reuse cannot change a result.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["KEEP_BYTES", "borrow", "carve", "give_back", "kept_bytes", "nbytes_for", "release"]

#: the largest buffer kept between calls (larger scratch is freed after its call)
KEEP_BYTES = 512 << 20

_lock = threading.Lock()
_kept: np.ndarray | None = None


def borrow(nbytes: int) -> np.ndarray:
    """A C-contiguous ``uint8`` buffer of at least ``nbytes`` bytes (contents unspecified)."""
    global _kept
    with _lock:
        if _kept is not None and _kept.nbytes >= nbytes:
            buffer, _kept = _kept, None
            return buffer
    return np.empty(max(nbytes, 1), dtype=np.uint8)


def give_back(buffer: np.ndarray) -> None:
    """Offer ``buffer`` (from :func:`borrow`) for the next call."""
    global _kept
    if buffer.nbytes > KEEP_BYTES:
        return
    with _lock:
        if _kept is None or _kept.nbytes < buffer.nbytes:
            _kept = buffer


def release() -> None:
    """Free the kept buffer."""
    global _kept
    with _lock:
        _kept = None


def kept_bytes() -> int:
    """Size of the kept buffer in bytes (0 if none)."""
    with _lock:
        return 0 if _kept is None else _kept.nbytes


def carve(buffer: np.ndarray, shapes: list[tuple[int, ...]], dtype: np.dtype) -> list[np.ndarray]:
    """Consecutive arrays of ``shapes`` and ``dtype`` laid in ``buffer``, each 64-byte aligned."""
    out = []
    offset = (-buffer.ctypes.data) % 64
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        out.append(buffer[offset : offset + size].view(dtype).reshape(shape))
        offset += size + (-size) % 64
    return out


def nbytes_for(shapes: list[tuple[int, ...]], dtype: np.dtype) -> int:
    """Buffer size :func:`carve` needs for ``shapes`` (with alignment slack)."""
    total = 64
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        total += size + (-size) % 64
    return total
