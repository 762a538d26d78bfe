"""asv: the dense float64 oracle, and our speed-up over it (DESIGN §12).

The oracle (:func:`sparse_ref.oracle.forward`, float64 compute, chunks of query rows against all
keys) costs ``4 * n**2 * d`` flops whatever the pattern, so a sparse kernel's speed-up over it is
bounded by ``1 / density``; DESIGN §12 target: at least ``0.5 / density``. Inputs are float32
(B = H = 1, 2 threads), as for the kernels they are compared with; d = 64 only (the oracle is the
accuracy reference: its cost scales with ``d`` like everything else). Skipped: n above 16384 (the
dense reference at n = 65536 takes minutes) and a window that covers the sequence.

Warm-ups (see ``_common``): ``setup`` sets 2 threads and makes ``malloc`` keep freed memory, then
calls the oracle and our BSR kernel once each (Numba compilation or cache load, first touch of
the chunk buffers and outputs).

``track_gflops`` is the oracle's *useful* GFLOP/s (``4 * nnz * d`` over its time, best of 3),
comparable with the kernels' figures; ``track_speedup`` is the oracle's time over our BSR
forward's, interleaved, best of 3 (the report divides it by ``1 / density``).
``python -m asv_benchmarks.bench_oracle [REGEX]`` prints the ``track_`` figures without asv.
"""

from __future__ import annotations

from . import _common as common


class OracleForward:
    """Time and useful GFLOP/s of the float64 oracle; our BSR forward's speed-up over it."""

    params = (common.PATTERNS, common.NS, [64])
    param_names = ["pattern", "n", "d"]
    timeout = 900
    processes = common.PROCESSES

    def setup(self, pattern: str, n: int, d: int) -> None:
        case = common.setup_case(pattern, n, d, dense=True)
        self.flops = case.flops
        self.oracle = common.oracle_runner(*case.qkv, case.pattern)
        self.ours = common.forward_runner(*case.qkv, case.pattern)
        common.warm(self.oracle, self.ours)

    def time_oracle(self, pattern: str, n: int, d: int) -> None:
        self.oracle()

    @common.unit("GFLOP/s")
    def track_gflops(self, pattern: str, n: int, d: int) -> float:
        return self.flops / common.best_time(self.oracle, 3) / 1e9

    @common.unit("x oracle (BSR forward)")
    def track_speedup(self, pattern: str, n: int, d: int) -> float:
        return common.ratio(self.oracle, self.ours, 3)


if __name__ == "__main__":
    common.main([OracleForward])
