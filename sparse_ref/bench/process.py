"""Threads and memory of a benchmark process, and torch (the peers) imported with those threads.

:func:`prepare_process` (or :func:`thread_limit` for a limited stretch of code) sets the threads of
Numba, the BLAS (threadpoolctl) and torch, and :func:`keep_freed_memory` tells glibc's ``malloc``
to keep the memory it frees (``mallopt``: no ``mmap`` for large blocks, no trimming of the heap).
A buffer freed by one call, such as the backward's scratch of 8 bytes per nonzero or a peer's
output, is then handed back, its pages already touched, to the next call. Without it every call
pays the page faults of its large allocations again (a VM may touch new memory at only about
0.5 GB/s). Numba is imported when a thread count is set, not on import.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = [
    "THREADS",
    "PeerUnavailable",
    "keep_freed_memory",
    "prepare_process",
    "thread_limit",
    "import_torch",
    "passive_openmp",
]

#: default threads for Numba, the BLAS and torch (DESIGN §12: 2 CPU threads)
THREADS = 2

_threads = THREADS  # what import_torch gives torch: the last prepare_process / thread_limit
_MALLOC_KEPT = False


class PeerUnavailable(NotImplementedError):
    """A peer cannot run here (torch missing); the message says why and how to install it.

    A ``NotImplementedError``, which asv reports as a skipped benchmark."""


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory mapped, for the rest of the process.

    ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from fresh ``mmap``) and
    ``M_TRIM_THRESHOLD`` at its maximum (the heap is never given back). Freed buffers are then
    reused with their pages already touched, so repeated calls do not pay page faults again.

    Returns:
        True when glibc accepted both settings; False elsewhere (no glibc: the figures then
        include the page faults of large allocations).
    """
    global _MALLOC_KEPT
    if _MALLOC_KEPT:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1
        ok = libc.mallopt(m_trim_threshold, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):
        return False
    _MALLOC_KEPT = ok
    return ok


def _set_threads(threads: int) -> None:
    """Numba's and torch's (where imported) thread counts; what :func:`import_torch` applies."""
    global _threads
    import numba

    _threads = threads
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def prepare_process(threads: int = THREADS) -> None:
    """``threads`` threads for Numba (at most ``NUMBA_NUM_THREADS``), the BLAS (threadpoolctl) and
    torch (now if imported, else when :func:`import_torch` imports it), then
    :func:`keep_freed_memory`. For the rest of the process: the first thing of every asv ``setup``.
    """
    from threadpoolctl import threadpool_limits

    _set_threads(threads)
    threadpool_limits(threads)
    keep_freed_memory()


@contextlib.contextmanager
def thread_limit(threads: int = THREADS) -> Iterator[None]:
    """:func:`prepare_process` for the ``with`` block only: Numba's and the BLAS's thread counts
    (and torch's, if it was imported before) are restored on exit. :func:`keep_freed_memory`
    stays in force (it cannot be undone)."""
    global _threads
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads(), _threads
    torch_before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    with threadpool_limits(threads):
        _set_threads(threads)
        keep_freed_memory()
        try:
            yield
        finally:
            numba.set_num_threads(before[0])
            _threads = before[1]
            if torch_before is not None:
                sys.modules["torch"].set_num_threads(torch_before)


def import_torch() -> Any:
    """torch, set to the threads of the last :func:`prepare_process` / :func:`thread_limit`.

    Raises:
        PeerUnavailable: torch is not installed.
    """
    try:
        import torch
    except ImportError:
        raise PeerUnavailable("torch is not installed: pip install -e '.[torch]'") from None
    torch.set_num_threads(_threads)
    return torch


def _openmp_loaded() -> bool:
    """Whether an OpenMP runtime (GNU, LLVM or Intel) is mapped into this process (Linux; False
    where ``/proc/self/maps`` cannot be read)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return False
    return any(name in maps for name in ("libgomp", "libomp", "libiomp"))


def passive_openmp() -> str | None:
    """Make the OpenMP threads of Numba and torch sleep when idle instead of spinning.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy; an OpenMP runtime reads it
    when it is loaded (Numba's with its first parallel kernel, torch's on import), so this must
    run before either. Spinning threads of two runtimes (or of one runtime and other processes)
    on the same few cores slow each other: on a loaded 2-core VM our CSR forward at n = 4096 read
    24-32 ms with spinning threads and 7.5 ms with passive ones, in alternating runs.

    Returns:
        The policy the runtimes loaded from now on will use (``"PASSIVE"`` or the user's), or
        None when a runtime is already loaded: it keeps the policy it started with.
    """
    if _openmp_loaded():
        return None
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
