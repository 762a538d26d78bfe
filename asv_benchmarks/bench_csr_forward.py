"""asv: the Numba CSR forward kernel (token CSR), per pattern, n, d and dtype (DESIGN §12).

Patterns: causal sliding windows of 256 and 4096 (row ``i`` attends keys ``max(0, i - w + 1) ..
i``) and BigBird of 64-blocks, held as token CSR only (no block form), so the Numba backend runs
the CSR kernel of :mod:`sparse_ref.kernels.csr_forward`. B = H = 1, 2 threads. DESIGN §12 target:
causal window 256 at n = 16384, float32, d = 64: at least 1.0x FlexAttention on the CPU (the ratio
is measured in :mod:`bench_peers`), 1.5x the moonshot; anchor: a plain Numba loop, 17 GFLOP/s.

Warm-ups (see ``_common``): ``setup`` sets 2 threads and makes ``malloc`` keep freed memory, then
calls the kernel once, so Numba's compilation (or the load from its on-disk cache) and the first
touch of the output and scratch memory happen outside every measurement; ``track_ratio_to_plain``
compiles and calls the plain loop once before timing it. Skipped (``NotImplementedError`` in
``setup``): a window that covers the sequence, token CSR above 2**26 nonzeros (causal window 4096
at n = 65536: the block form is the path, see ``bench_bsr_forward``), float64 above n = 16384.

``track_gflops`` is useful GFLOP/s (``4 * nnz * d`` per forward, best of 5);
``track_ratio_to_plain`` is a plain Numba loop's time over ours, interleaved, best of 3.
``python -m asv_benchmarks.bench_csr_forward [REGEX]`` prints the ``track_`` figures without asv.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _common as common

_PLAIN: Any = None


def plain_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """A plain Numba loop over the pattern's CSR rows (per row and key: a dot product,
    ``math.exp``, an online-softmax update; same fastmath flags as the kernel): DESIGN §12's
    baseline. Writes into preallocated outputs."""
    global _PLAIN
    if _PLAIN is None:
        import numba

        @numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "arcp"})
        def plain(q, k, v, indptr, indices, scale, out, lse):  # type: ignore[no-untyped-def]
            n, d, dv = q.shape[2], q.shape[3], v.shape[3]
            for i in numba.prange(n):
                m = q.dtype.type(-np.inf)
                total = q.dtype.type(0.0)
                acc = np.zeros(dv, q.dtype)
                for e in range(indptr[0, i], indptr[0, i + 1]):
                    j = indices[e]
                    s = q.dtype.type(0.0)
                    for c in range(d):
                        s += q[0, 0, i, c] * k[0, 0, j, c]
                    s *= scale
                    m_new = max(m, s)
                    alpha = math.exp(m - m_new)
                    p = math.exp(s - m_new)
                    total = total * alpha + p
                    for c in range(dv):
                        acc[c] = acc[c] * alpha + p * v[0, 0, j, c]
                    m = m_new
                for c in range(dv):
                    out[0, 0, i, c] = acc[c] / total
                lse[0, 0, i] = m + math.log(total)

        _PLAIN = plain
    csr = pattern.stacked_csr()
    out = np.empty(q.shape[:3] + (v.shape[3],), q.dtype)
    lse = np.empty(q.shape[:3], q.dtype)
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    args = (q, k, v, csr.indptr, csr.indices, scale, out, lse)
    return lambda: _PLAIN(*args)


class CSRForward(common.ForwardSuite):
    """Time, useful GFLOP/s and speed-up over a plain loop of the Numba CSR forward."""

    form = "csr"

    @common.unit("x plain Numba loop")
    def track_ratio_to_plain(self, pattern: str, n: int, d: int, dtype: str) -> float:
        plain = plain_runner(*self.case.qkv, self.case.pattern)
        common.warm(plain)
        return common.ratio(plain, self.run, 3)


if __name__ == "__main__":
    common.main([CSRForward])
