"""The machine's peaks: float32 GEMM throughput and memory bandwidth (STREAM triad).

Each peak is a runner (a zero-argument callable and the work of one call), so that it can be timed
like the kernels (:mod:`.timing`); :func:`gemm_gflops` and :func:`triad_gbytes` give the best of a
few calls after one warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .timing import best_time, warm

__all__ = ["gemm_runner", "triad_runner", "gemm_gflops", "triad_gbytes"]


def gemm_runner(n: int = 2048) -> tuple[Callable[[], Any], int]:
    """NumPy float32 GEMM, ``n x n`` by ``n x n`` into a preallocated output, on the BLAS threads
    set by :func:`.process.prepare_process` / :func:`.process.thread_limit`, and its ``2 * n**3``
    flops. The ceiling of the attention kernels, whose work is two GEMM-like products per block."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), dtype=np.float32)
    return (lambda: np.matmul(a, b, out=c)), 2 * n**3


_TRIAD: Any = None


def triad_runner(size: int = 1 << 25) -> tuple[Callable[[], Any], int]:
    """The STREAM triad ``a = b + s * c`` over float32 arrays of ``size`` elements (128 MiB each by
    default, far beyond the caches) on Numba's threads, and the bytes it moves: 12 per element (two
    reads, one write). The arrays are touched when they are filled; the first call compiles the
    triad or loads it from Numba's cache."""
    global _TRIAD
    if _TRIAD is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def triad(a, b, c, s):  # type: ignore[no-untyped-def]
            for i in numba.prange(a.shape[0]):
                a[i] = b[i] + s * c[i]

        _TRIAD = triad
    a, b, c = (np.full(size, x, dtype=np.float32) for x in (0.0, 1.0, 2.0))
    s = np.float32(0.5)
    return (lambda: _TRIAD(a, b, c, s)), 12 * size


def gemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """:func:`gemm_runner` in GFLOP/s, best of ``repeat`` after one warm-up call (BLAS thread
    start-up, first touch)."""
    run, flops = gemm_runner(n)
    warm(run)
    return flops / best_time(run, repeat) / 1e9


def triad_gbytes(size: int = 1 << 25, repeat: int = 5) -> float:
    """:func:`triad_runner` in GB/s (10**9 bytes), best of ``repeat`` after one warm-up call."""
    run, nbytes = triad_runner(size)
    warm(run)
    return nbytes / best_time(run, repeat) / 1e9
