"""What the asv suites share: the parameter grids, the skips, ``setup_case``, ``main``.

Not a benchmark module. asv imports every module of ``asv_benchmarks`` while it discovers
benchmarks, but finds nothing here to run: no name starts with ``time_``, ``peakmem_``, ``mem_``,
``timeraw_`` or ``track_``, and the classes are parameter-grid mixins and the abstract base of the
forward suites (asv skips abstract classes). The suites import it as
``from . import _common as common``; a suite's figures print without asv as
``python -m asv_benchmarks.bench_bsr_forward`` (see :func:`main`).

The building blocks (threads, ``keep_freed_memory``, warm-ups, interleaved timing, useful flops,
the benchmark patterns and inputs, the runners of our kernels, the oracle and the torch peers,
the machine's peaks) live in the package, :mod:`sparse_ref.bench`, which ``sparse-ref bench`` uses
too; this module imports them and the suites call them as ``common.<name>``. So the suites need a
``sparse_ref`` that has ``sparse_ref.bench`` or, for older commits, ``sparse_ref.benchmarking``
(its former name, tried second so that ``asv continuous`` can still compare against them); commits
older than ``sparse_ref.benchmarking`` fail to import the suites.

How the suites keep compilation and first-touch memory out of their timings (issue 11; the
details are in :mod:`sparse_ref.bench`):

1. Every ``setup`` starts with :func:`prepare_process`: 2 threads for Numba, the BLAS
   (threadpoolctl) and torch, and glibc's ``malloc`` told to keep the memory it frees (``mallopt``:
   no ``mmap`` for large blocks, no trimming of the heap). A buffer freed by one call, such as the
   backward's scratch of 8 bytes per nonzero or a peer's output, is then handed back, its pages
   already touched, to the next call. Without it every call pays the page faults of its large
   allocations again, and this VM touches new memory at about 0.5 GB/s.
2. ``setup`` then calls every function it will time once (:func:`warm`): Numba compiles the
   kernel or loads it from its on-disk cache (``cache=True``), the allocator's pool reaches its
   steady size, and torch's lazy initialisation (and FlexAttention's ``torch.compile``, warm from
   the Inductor cache that ``setup_cache`` filled) is done.
3. Our kernels are timed as the Numba backend runs them (:mod:`sparse_ref.backends.numba`, the call
   that ``sparse_ref.attention`` makes after validating its arguments), so the figures are the
   kernels' and not the checks'.
4. A ``track_`` figure is the best of a few calls; the functions a ratio compares are called in
   turn (:func:`interleaved_min`), so a change of load on this shared machine hits both alike.

Sizes and skips: each benchmark of the kernel and peer grids runs in one asv process
(:data:`PROCESSES`) to keep a full run at about two hours on 2 cores. The grids cover n in
{4096, 16384, 65536}, causal windows of 256 and 4096 and BigBird (64-blocks), d in {64, 128},
float32 and float64; :func:`check_case` raises ``NotImplementedError`` (asv's "skipped") where a
combination is not meaningful or too large for a full run on 2 cores: a window that covers the
sequence, token CSR above 2**26 nonzeros, float64 above n = 16384, dense references (oracle,
SDPA's boolean mask) above n = 16384.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Iterable
from itertools import product
from typing import Any

try:
    from sparse_ref import bench as benchmarking
except ImportError:  # a commit from before sparse_ref.bench (asv continuous BASE=<older>)
    from sparse_ref import benchmarking  # type: ignore[no-redef]

    sys.modules["sparse_ref.bench"] = benchmarking  # so that the import below finds it
from sparse_ref.bench import (
    BSR_BLOCK,
    THREADS,
    Case,
    backward_runner,
    best_time,
    build_pattern,
    dense_mask,
    expected_nnz,
    first_call_s,
    flex_block_mask,
    flex_mask_mod,
    flex_runner,
    forward_runner,
    gemm_gflops,
    import_torch,
    interleaved_min,
    keep_freed_memory,
    make_case,
    make_inputs,
    oracle_runner,
    ratio,
    sdpa_backward_runner,
    sdpa_runner,
    triad_gbytes,
    useful_flops,
    warm,
    window_of,
)

__all__ = [
    # from sparse_ref.bench, called by the suites as common.<name>
    "BSR_BLOCK",
    "THREADS",
    "Case",
    "backward_runner",
    "best_time",
    "build_pattern",
    "dense_mask",
    "expected_nnz",
    "first_call_s",
    "flex_block_mask",
    "flex_mask_mod",
    "flex_runner",
    "forward_runner",
    "gemm_gflops",
    "import_torch",
    "interleaved_min",
    "keep_freed_memory",
    "make_case",
    "make_inputs",
    "oracle_runner",
    "ratio",
    "sdpa_backward_runner",
    "sdpa_runner",
    "triad_gbytes",
    "useful_flops",
    "warm",
    "window_of",
    # asv glue
    "PATTERNS",
    "NS",
    "DS",
    "DTYPES",
    "CSR_MAX_NNZ",
    "FLOAT64_MAX_N",
    "DENSE_MAX_N",
    "PROCESSES",
    "prepare_process",
    "unit",
    "check_case",
    "setup_case",
    "KernelGrid",
    "ForwardSuite",
    "PeerGrid",
    "main",
]

#: the benchmark patterns (named as in :mod:`sparse_ref.bench.cases`): causal sliding windows
#: (keys ``i - w + 1 .. i``) and BigBird of 64-blocks (3 window blocks, the first and last block
#: global, 3 random blocks per row, seed 0)
PATTERNS = ["causal_window_256", "causal_window_4096", "bigbird_64"]
NS = [4096, 16384, 65536]
DS = [64, 128]
DTYPES = ["float32", "float64"]
#: token CSR above this many nonzeros is skipped (1 GiB of indices and data per copy): the block
#: form is the path for such patterns (causal window 4096 at n = 65536 has 2.6e8)
CSR_MAX_NNZ = 1 << 26
#: float64 runs at n <= this (the accuracy path; its speed is tracked at the smaller sizes)
FLOAT64_MAX_N = 16384
#: dense references (the float64 oracle, SDPA with an n x n boolean mask) run at n <= this
DENSE_MAX_N = 16384
#: asv processes per benchmark of the kernel and peer grids (asv's default is 2): one keeps a full
#: run at about two hours on 2 cores; the ``track_`` figures take the best of several calls anyway
PROCESSES = 1


def prepare_process() -> None:
    """:func:`sparse_ref.bench.prepare_process` with :data:`THREADS` threads: first thing
    in every ``setup``."""
    benchmarking.prepare_process(THREADS)


def unit(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the ``unit`` attribute that asv shows for a ``track_`` benchmark."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.unit = name  # type: ignore[attr-defined]
        return fn

    return mark


# --- cases ---------------------------------------------------------------------------------------


def check_case(
    pattern: str, n: int, d: int = 64, dtype: str = "float32", form: str = "bsr"
) -> None:
    """Raise ``NotImplementedError`` for a combination the suites skip (see the module doc).

    ``form``: ``"csr"`` (token CSR), ``"bsr"`` (block form) or ``"dense"`` (a dense reference)."""
    w = window_of(pattern)
    if w is not None and w >= n:
        raise NotImplementedError(f"window {w} covers n = {n}: that is the causal pattern")
    if form == "csr" and expected_nnz(pattern, n) > CSR_MAX_NNZ:
        raise NotImplementedError(
            f"{pattern} at n = {n}: token CSR of {expected_nnz(pattern, n):.2e} nonzeros "
            f"(> 2**26); the block form is the path for it"
        )
    if form == "dense" and n > DENSE_MAX_N:
        raise NotImplementedError(f"dense reference at n = {n} (> {DENSE_MAX_N}): n x n too large")
    if dtype == "float64" and n > FLOAT64_MAX_N:
        raise NotImplementedError(f"float64 is benchmarked at n <= {FLOAT64_MAX_N}")


def setup_case(
    pattern: str, n: int, d: int, dtype: str = "float32", *, dense: bool = False, **kwargs: Any
) -> Case:
    """The start of every kernel suite's ``setup``: :func:`check_case` (``dense``: also skip
    where a dense reference cannot run), :func:`prepare_process`, then
    :func:`sparse_ref.bench.make_case` with ``kwargs`` (``form``, default ``"bsr"``;
    ``count`` of inputs; ``backward`` for the flops)."""
    check_case(pattern, n, d, dtype, form="dense" if dense else kwargs.get("form", "bsr"))
    prepare_process()
    return make_case(pattern, n, d, dtype, **kwargs)


class KernelGrid:
    """Mixin for the suites over every pattern, size, head dimension and dtype."""

    params = (PATTERNS, NS, DS, DTYPES)
    param_names = ["pattern", "n", "d", "dtype"]
    timeout = 900
    processes = PROCESSES


class ForwardSuite(KernelGrid, abc.ABC):
    """Base of the forward suites: ``setup``, ``time_forward`` and ``track_gflops`` (useful
    GFLOP/s, best of 5) of our forward on the block form (``form = "bsr"``, the BSR kernel) or on
    token CSR (``form = "csr"``, the CSR kernel). Abstract, so asv collects its benchmarks only in
    the concrete subclasses of the suite modules (asv skips abstract classes)."""

    @property
    @abc.abstractmethod
    def form(self) -> str:
        """``"bsr"`` or ``"csr"``."""

    def setup(self, pattern: str, n: int, d: int, dtype: str) -> None:
        self.case = setup_case(pattern, n, d, dtype, form=self.form)
        self.run = forward_runner(*self.case.qkv, self.case.pattern)
        warm(self.run)

    def time_forward(self, pattern: str, n: int, d: int, dtype: str) -> None:
        self.run()

    @unit("GFLOP/s")
    def track_gflops(self, pattern: str, n: int, d: int, dtype: str) -> float:
        return self.case.flops / best_time(self.run, 5) / 1e9


class PeerGrid:
    """Mixin for the suites over every pattern, size and head dimension, float32 only."""

    params = (PATTERNS, NS, DS)
    param_names = ["pattern", "n", "d"]
    timeout = 900
    processes = PROCESSES


# --- without asv ---------------------------------------------------------------------------------


def main(classes: Iterable[type], argv: list[str] | None = None) -> None:
    """Print every ``track_`` figure of ``classes`` for every parameter combination, without asv:
    ``setup`` (and ``setup_cache``) then each ``track_`` method, as asv would, in this process.

    ``python -m asv_benchmarks.bench_csr_forward [REGEX]`` calls it; REGEX (optional) filters the
    lines ``Class.track_name(param, ...)`` to run."""
    import os
    import re
    import tempfile

    argv = sys.argv[1:] if argv is None else argv
    want = re.compile(argv[0]) if argv else None
    caches: dict[Any, Any] = {}  # by setup_cache function: classes that share one share its result
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="sparse-ref-bench-") as tmp:
        os.chdir(tmp)  # as under asv: setup_cache and the benchmarks share a scratch directory
        try:
            _run_classes(classes, want, caches)
        finally:
            os.chdir(cwd)


def _run_classes(classes: Iterable[type], want: Any, caches: dict[Any, Any]) -> None:
    for cls in classes:
        names = sorted(m for m in dir(cls) if m.startswith("track_"))
        params = getattr(cls, "params", [])
        grid = list(product(*params)) if params and isinstance(params[0], list) else [()]
        if params and not isinstance(params[0], list):
            grid = [(p,) for p in params]
        for combo in grid:
            for name in names:
                label = f"{cls.__name__}.{name}({', '.join(map(str, combo))})"
                if want is not None and not want.search(label):
                    continue
                bench = cls()
                args: tuple[Any, ...] = combo
                make_cache = getattr(cls, "setup_cache", None)
                if make_cache is not None:
                    if make_cache not in caches:
                        caches[make_cache] = bench.setup_cache()
                    args = (caches[make_cache], *combo)
                try:
                    if hasattr(bench, "setup"):
                        bench.setup(*args)
                except NotImplementedError as skip:
                    print(f"{label:70s} skipped: {skip}", flush=True)
                    break
                value = getattr(bench, name)(*args)
                unit_name = getattr(getattr(cls, name), "unit", "")
                print(f"{label:70s} {value:10.3f} {unit_name}", flush=True)
