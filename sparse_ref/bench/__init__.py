"""Benchmark building blocks: threads, warm-ups, interleaved timing, flop counts, peaks, runners.

Library code only (the command is :mod:`sparse_ref.cli.bench`), one module per job:
:mod:`.process` (threads, memory, torch), :mod:`.timing`, :mod:`.flops` (:func:`useful_flops`),
:mod:`.cases` (the benchmark patterns and inputs), :mod:`.runners` (ours and the oracle),
:mod:`.peers` (FlexAttention, SDPA), :mod:`.peaks` (GEMM, memory bandwidth) and :mod:`.scale`
(the million-token run). Shared by ``sparse-ref bench`` and the asv suites of the repository
(``asv_benchmarks/``, which import it through ``asv_benchmarks/_common.py``). This package
re-exports every public name of those modules except :mod:`.scale`'s.
Nothing here runs on import; torch (the peers) is imported lazily, and without it the peer
runners raise :class:`PeerUnavailable` with the reason (a ``NotImplementedError``: asv reports
the benchmark as skipped; ``sparse-ref bench`` prints the reason in the peer's row).

How compilation and first-touch memory stay out of every figure:

1. :func:`prepare_process` (or :func:`thread_limit` for a limited stretch of code) sets the threads
   of Numba, the BLAS (threadpoolctl) and torch, and :func:`keep_freed_memory` tells glibc's
   ``malloc`` to keep the memory it frees (``mallopt``: no ``mmap`` for large blocks, no trimming
   of the heap). A buffer freed by one call, such as the backward's scratch of 8 bytes per
   nonzero or a peer's output, is then handed back, its pages already touched, to the next call.
   Without it every call pays the page faults of its large allocations again (a VM may touch new
   memory at only about 0.5 GB/s).
2. :func:`warm` calls every function once before anything is timed: Numba compiles the kernel or
   loads it from its on-disk cache (``cache=True``), the allocator's pool reaches its steady size,
   torch initialises lazily and FlexAttention's ``torch.compile`` runs (:func:`first_call_s` times
   that first call, so a compile time can be reported separately).
3. Our kernels are timed as the Numba backend runs them (:mod:`sparse_ref.backends.numba`, the call
   that :func:`sparse_ref.attention` makes after validating its arguments), so the figures are the
   kernels' and not the checks'.
4. A figure is the best wall time of a few calls; functions that are compared are called in turn
   (:func:`interleaved_min`), so a change of load on a shared machine hits them alike.

Units: times in seconds (``time.perf_counter``), throughput in GFLOP/s of *useful* flops
(:func:`useful_flops`: ``4 * nnz * d`` forward, ``8 * nnz * d`` backward, whatever a kernel or a
dense peer actually computes), bandwidth in GB/s (10**9 bytes).

Benchmark patterns are named by strings: ``causal_window_<w>`` (row ``i`` attends keys
``max(0, i - w + 1) .. i``; block form of :data:`BSR_BLOCK`-blocks or token CSR) and
``bigbird_<b>`` (:func:`sparse_ref.patterns.bigbird` of ``b``-blocks: 3 window blocks, the first
and last block global, 3 random blocks per row, seed 0).

Example:
    >>> from sparse_ref import bench as bm
    >>> case = bm.make_case("causal_window_16", 64, 8)
    >>> case.pattern.nnz, case.flops == bm.useful_flops(case.pattern.nnz, 8)
    (904, True)
    >>> run = bm.forward_runner(*case.qkv, case.pattern)
    >>> bm.warm(run)
    >>> t_fwd, = bm.interleaved_min([run], repeat=2)
    >>> t_fwd > 0
    True
"""

from __future__ import annotations

from .cases import BSR_BLOCK, Case, build_pattern, expected_nnz, make_case, make_inputs, window_of
from .flops import useful_flops
from .peaks import gemm_gflops, gemm_runner, triad_gbytes, triad_runner
from .peers import (
    dense_mask,
    flex_block_mask,
    flex_mask_mod,
    flex_runner,
    sdpa_backward_runner,
    sdpa_runner,
)
from .process import (
    THREADS,
    PeerUnavailable,
    import_torch,
    keep_freed_memory,
    prepare_process,
    thread_limit,
)
from .runners import backward_runner, forward_runner, oracle_runner
from .timing import (
    Timing,
    best_time,
    first_call_s,
    interleaved_min,
    interleaved_times,
    ratio,
    warm,
)

__all__ = [
    "THREADS",
    "BSR_BLOCK",
    "PeerUnavailable",
    "keep_freed_memory",
    "prepare_process",
    "thread_limit",
    "import_torch",
    "warm",
    "first_call_s",
    "interleaved_times",
    "interleaved_min",
    "Timing",
    "best_time",
    "ratio",
    "useful_flops",
    "window_of",
    "expected_nnz",
    "build_pattern",
    "make_inputs",
    "Case",
    "make_case",
    "forward_runner",
    "backward_runner",
    "oracle_runner",
    "flex_mask_mod",
    "flex_block_mask",
    "flex_runner",
    "dense_mask",
    "sdpa_runner",
    "sdpa_backward_runner",
    "gemm_runner",
    "triad_runner",
    "gemm_gflops",
    "triad_gbytes",
]
