"""The machine's peaks: float32 GEMM throughput and memory bandwidth (STREAM triad)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .timing import best_time, warm

__all__ = ["gemm_gflops", "triad_gbytes"]


def gemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """NumPy float32 GEMM in GFLOP/s: ``n x n`` by ``n x n`` into a preallocated output, ``2 * n**3``
    flops, best of ``repeat`` after one warm-up call (BLAS thread start-up, first touch), on the
    BLAS threads set by :func:`prepare_process` / :func:`thread_limit`. The ceiling of the
    attention kernels, whose work is two GEMM-like products per block."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), dtype=np.float32)
    run = lambda: np.matmul(a, b, out=c)  # noqa: E731
    warm(run)
    return 2 * n**3 / best_time(run, repeat) / 1e9


_TRIAD: Any = None


def triad_gbytes(size: int = 1 << 25, repeat: int = 5) -> float:
    """Memory bandwidth in GB/s: the STREAM triad ``a = b + s * c`` over float32 arrays of ``size``
    elements (128 MiB each by default, far beyond the caches) on Numba's threads, counting 12 bytes
    per element (two reads, one write), best of ``repeat`` after one warm-up call (compilation or
    cache load of the triad; the arrays are touched when they are filled)."""
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
    run = lambda: _TRIAD(a, b, c, s)  # noqa: E731
    warm(run)
    return 12 * size / best_time(run, repeat) / 1e9
