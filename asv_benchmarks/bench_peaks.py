"""asv: this machine's peaks, the denominators of every "fraction of peak" (DESIGN §12).

``track_gemm_gflops``: NumPy float32 GEMM (2048 x 2048 by 2048 x 2048) on 2 BLAS threads, GFLOP/s,
best of 5: the ceiling of the attention kernels, whose work is two GEMM-like products per block.
``track_memory_gbytes``: the STREAM triad ``a = b + s * c`` over float32 arrays of 128 MiB each
on 2 Numba threads, GB/s counting 12 bytes per element, best of 5: the ceiling of pattern builds
and of any kernel that streams its operands.

Warm-ups (see ``_common``): ``setup`` sets 2 threads and makes ``malloc`` keep freed memory; each
measurement allocates and touches its arrays and calls the operation once (BLAS thread start-up,
Numba compilation or cache load of the triad) before it times anything.
``python -m asv_benchmarks.bench_peaks`` prints both without asv.
"""

from __future__ import annotations

from . import _common as common


class MachinePeaks:
    """Float32 GEMM GFLOP/s and memory bandwidth on 2 threads."""

    timeout = 300

    def setup(self) -> None:
        common.prepare_process()

    @common.unit("GFLOP/s")
    def track_gemm_gflops(self) -> float:
        return common.gemm_gflops()

    @common.unit("GB/s")
    def track_memory_gbytes(self) -> float:
        return common.triad_gbytes()


if __name__ == "__main__":
    common.main([MachinePeaks])
