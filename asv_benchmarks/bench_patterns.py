"""Pattern catalog builds: time and peak memory per family and size (DESIGN §12).

Target: ``causal_sliding_window(65536, 4096)`` (260M nnz) in <= 0.35 s on 2 CPU threads; anchors
measured here: vectorised NumPy 0.34 s, ``scipy.sparse.diags`` 1.7 s. The pattern is built inside
the timed function (nothing is cached between calls), so ``time_`` covers index generation and the
``csr_array`` wrapper, including its ``nnz`` bool ``data`` array. Families: the windows, dilated,
global_local and random by token CSR (``w``: window or keys per row), BigBird by its block form of
64-blocks (no window: only ``w = 256`` runs, the other is skipped), and the causal window built
directly in block form up to n = 2**20 (4.3e9 nnz, which token CSR cannot hold). ``GlobalLocalRuns``
times global_local against the number of its global runs (scattered global tokens).

Warm-ups: ``setup`` sets 2 threads and makes ``malloc`` keep freed memory (see ``_common``), so
the arrays of one build reuse the pages that the previous build freed: asv's warm-up calls (before
its samples) touch them once and the samples time the build, not the page faults (this VM touches
new memory at about 0.5 GB/s). The builders are NumPy and SciPy: there is no Numba compilation.
``peakmem_`` is the process's peak resident memory after one build (it includes the interpreter
and the imports, about the same for every case).
"""

from __future__ import annotations

from sparse_ref import patterns

from . import _common as common

NUM_GLOBAL = 16  # global_local: tokens 0..14 and n - 1 (a CLS-style prefix plus the last token)
GLOBAL_RUNS_N = 65536  # GlobalLocalRuns: the sequence length


def _build(family: str, n: int, w: int):
    if family == "sliding_window":
        return patterns.sliding_window(n, w // 2, w // 2)
    if family == "causal_sliding_window":
        return patterns.causal_sliding_window(n, w)
    if family == "dilated":
        return patterns.dilated(n, w, 2)
    if family == "global_local":
        return patterns.global_local(n, w // 2, w // 2, [*range(NUM_GLOBAL - 1), n - 1])
    if family == "random":
        return patterns.random(n, per_row=w, seed=0)
    if family == "bigbird":
        return patterns.bigbird(n, 64)
    raise ValueError(family)


class PatternBuild:
    """Build a catalog pattern of ``n`` tokens with window (or ``per_row``) ``w``."""

    params = (
        ["sliding_window", "causal_sliding_window", "dilated", "global_local", "random", "bigbird"],
        [4096, 16384, 65536],
        [256, 4096],
    )
    param_names = ["family", "n", "w"]
    timeout = 300

    def setup(self, family, n, w):
        if w >= n:
            raise NotImplementedError("window covers the sequence: that is the dense pattern")
        if family == "random" and n * w > 1 << 26:
            raise NotImplementedError("random with > 64M keys: not a realistic configuration")
        if family == "bigbird" and w != 256:
            raise NotImplementedError("bigbird has no window: its 64-block build runs at w = 256")
        common.prepare_process()

    def time_build(self, family, n, w):
        _build(family, n, w)

    def peakmem_build(self, family, n, w):
        _build(family, n, w)


class CausalWindowHeadline:
    """The DESIGN §12 target: ``causal_sliding_window(65536, 4096)`` in <= 0.35 s (2 threads)."""

    timeout = 300
    repeat = (5, 20, 60.0)
    number = 1

    def setup(self):
        common.prepare_process()

    def time_causal_sliding_window_65536_4096(self):
        patterns.causal_sliding_window(65536, 4096)

    def peakmem_causal_sliding_window_65536_4096(self):
        patterns.causal_sliding_window(65536, 4096)

    @common.unit("Mnnz/s")
    def track_nnz_per_second(self):
        nnz = patterns.causal_sliding_window(65536, 4096).nnz  # warm-up
        return nnz / common.best_time(lambda: patterns.causal_sliding_window(65536, 4096), 5) / 1e6


class BlockFormBuild:
    """``block=`` builds the block form directly: causal window 4096 up to n = 2**20 (4.3e9 nnz)."""

    params = ([65536, 1 << 20], [64, 128])
    param_names = ["n", "block"]
    timeout = 300

    def setup(self, n, block):
        common.prepare_process()

    def time_causal_sliding_window_4096(self, n, block):
        patterns.causal_sliding_window(n, 4096, block=block)

    def peakmem_causal_sliding_window_4096(self, n, block):
        patterns.causal_sliding_window(n, 4096, block=block)


def _global_runs(runs: int):
    n = GLOBAL_RUNS_N
    tokens = [round(k * (n - 1) / max(runs - 1, 1)) for k in range(runs)]  # single tokens, spread
    return patterns.global_local(n, 256, 256, tokens)


class GlobalLocalRuns:
    """``global_local(65536, 256, 256, G)``, ``G`` = ``runs`` single tokens spread over the sequence.

    The token CSR merges the global columns once, not once per row and run: its cost per key must
    stay flat as ``runs`` grows (it grew with ``n * runs`` before: 0.9 s for 50 runs at n = 100k,
    against 0.15 s for one). ``track_ns_per_key`` is the build time per stored key.
    """

    params = [1, 16, 64, 256]
    param_names = ["runs"]
    timeout = 300

    def setup(self, runs):
        common.prepare_process()

    def time_build(self, runs):
        _global_runs(runs)

    def peakmem_build(self, runs):
        _global_runs(runs)

    @common.unit("ns/key")
    def track_ns_per_key(self, runs):
        nnz = _global_runs(runs).nnz  # warm-up
        return common.best_time(lambda: _global_runs(runs), 5) / nnz * 1e9
