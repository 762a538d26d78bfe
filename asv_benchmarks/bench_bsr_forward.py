"""asv: the Numba BSR forward kernel (block form), per pattern, n, d and dtype (DESIGN §12).

Patterns: causal sliding windows of 256 and 4096 in 128-blocks (built directly in block form by
``patterns.causal_sliding_window(n, w, block=128)``) and BigBird of 64-blocks
(``patterns.bigbird(n, 64)``: 3 window blocks, the first and last block global, 3 random blocks per
row, seed 0), so the Numba backend runs the BSR kernel of :mod:`sparse_ref.kernels.bsr_forward`.
B = H = 1, 2 threads. DESIGN §12 targets (float32, d = 64): window 4096 at n = 65536 at least 1.0x
FlexAttention (anchor 98 GFLOP/s, 48% of the GEMM peak; moonshot 60% of the peak); BigBird at
n = 16384 at least 2x FlexAttention. The ratios are measured in :mod:`bench_peers`, the machine's
peaks in :mod:`bench_peaks`.

Warm-ups (see ``_common``): ``setup`` sets 2 threads and makes ``malloc`` keep freed memory, then
calls the kernel once, so Numba's compilation (or the load from its on-disk cache) and the first
touch of the output memory happen outside every measurement. Skipped (``NotImplementedError`` in
``setup``): a window that covers the sequence, float64 above n = 16384.

``track_gflops`` is useful GFLOP/s (``4 * nnz * d`` per forward, best of 5).
``python -m asv_benchmarks.bench_bsr_forward [REGEX]`` prints the ``track_`` figures without asv.
"""

from __future__ import annotations

from . import _common as common


class BSRForward(common.ForwardSuite):
    """Time and useful GFLOP/s of the Numba BSR forward."""

    form = "bsr"


if __name__ == "__main__":
    common.main([BSRForward])
