"""What the asv suites share: threads, warm-ups, interleaved timing, the benchmark cases, the peers.

Not a benchmark module. asv imports every module of ``asv_benchmarks`` while it discovers
benchmarks, but finds nothing here to run: no name starts with ``time_``, ``peakmem_``, ``mem_``,
``timeraw_`` or ``track_``, and the classes are a case, parameter-grid mixins and the abstract
base of the forward suites (asv skips abstract classes). The suites import it as
``from . import _common as common``; a suite's figures print without asv as
``python -m asv_benchmarks.bench_bsr_forward`` (see :func:`main`).

How the suites keep compilation and first-touch memory out of their timings (issue 11):

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
import ctypes
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from itertools import product
from typing import Any, NamedTuple

import numpy as np

#: threads for Numba, the BLAS and torch (DESIGN §12: 2 CPU threads)
THREADS = 2
#: the benchmark patterns: causal sliding windows (keys ``i - w + 1 .. i``) and BigBird of 64-blocks
#: (3 window blocks, the first and last block global, 3 random blocks per row, seed 0)
PATTERNS = ["causal_window_256", "causal_window_4096", "bigbird_64"]
NS = [4096, 16384, 65536]
DS = [64, 128]
DTYPES = ["float32", "float64"]
#: block of the causal windows' block form (BigBird keeps its own blocks)
BSR_BLOCK = 128
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

_MALLOC_KEPT = False


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory mapped: ``M_MMAP_MAX = 0`` (large blocks come
    from the heap, not from fresh ``mmap``) and ``M_TRIM_THRESHOLD`` at its maximum (the heap is
    never given back). Freed buffers are then reused with their pages already touched. Returns
    False where there is no glibc (the figures then include page faults of large allocations)."""
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


def prepare_process() -> None:
    """Threads (Numba, BLAS, and torch where already imported) and :func:`keep_freed_memory`.

    First thing in every ``setup``."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    threadpool_limits(THREADS)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(THREADS)
    keep_freed_memory()


def import_torch() -> Any:
    """torch with :data:`THREADS` threads; ``NotImplementedError`` (asv: skipped) without it."""
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed: pip install -e '.[torch]'") from None
    torch.set_num_threads(THREADS)
    return torch


def warm(*fns: Callable[[], Any]) -> None:
    """Call each function once: Numba compilation (or its cache load), first-touch memory and lazy
    initialisation happen here, outside the measurements."""
    for fn in fns:
        fn()


def interleaved_min(fns: list[Callable[[], Any]], repeat: int = 5) -> list[float]:
    """Best wall time of each function over ``repeat`` rounds, the calls interleaved so that a load
    change hits all of them alike."""
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def best_time(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Best wall time of ``fn`` over ``repeat`` calls."""
    return interleaved_min([fn], repeat)[0]


def ratio(slow: Callable[[], Any], fast: Callable[[], Any], repeat: int = 5) -> float:
    """``time(slow) / time(fast)``, both best of ``repeat``, measured interleaved."""
    t_slow, t_fast = interleaved_min([slow, fast], repeat)
    return t_slow / t_fast


def unit(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the ``unit`` attribute that asv shows for a ``track_`` benchmark."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.unit = name  # type: ignore[attr-defined]
        return fn

    return mark


# --- cases ---------------------------------------------------------------------------------------


def window_of(pattern: str) -> int | None:
    """The window of ``causal_window_<w>``, None for other patterns."""
    return int(pattern.rsplit("_", 1)[1]) if pattern.startswith("causal_window_") else None


def expected_nnz(pattern: str, n: int) -> int:
    """Nonzeros of a benchmark pattern without building it (BigBird: an upper bound)."""
    w = window_of(pattern)
    if w is not None:
        w = min(w, n)
        return w * n - w * (w - 1) // 2
    block = int(pattern.rsplit("_", 1)[1])  # bigbird_<block>: 3 window + 3 random + 2 global
    return min(n * n, 8 * block * n + 2 * block * n)


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


def build_pattern(pattern: str, n: int, form: str = "bsr") -> Any:
    """The benchmark pattern as a :class:`sparse_ref.Pattern`: with its block form (``"bsr"``: the
    Numba backend runs the BSR kernel) or as token CSR only (``"csr"``: the CSR kernel)."""
    from sparse_ref import Pattern, patterns

    w = window_of(pattern)
    if w is not None:
        return patterns.causal_sliding_window(n, w, block=BSR_BLOCK if form == "bsr" else None)
    if pattern.startswith("bigbird_"):
        p = patterns.bigbird(n, int(pattern.rsplit("_", 1)[1]))
        if form == "bsr":
            return p
        csr = p.stacked_csr()  # the same structure as token CSR only (no block form)
        return Pattern.from_csr((csr.indptr[0], csr.indices, p.shape))
    raise ValueError(f"unknown benchmark pattern {pattern!r}")


def make_inputs(n: int, d: int, dtype: str, count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """``count`` standard-normal arrays ``(1, 1, n, d)`` (B = H = 1) of ``dtype``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 1, n, d), dtype=np.dtype(dtype).type) for _ in range(count)]


def useful_flops(nnz: int, d: int, backward: bool = False) -> int:
    """Useful flops: ``4 * nnz * d`` forward (QK^T and PV), twice that backward."""
    return (8 if backward else 4) * nnz * d


class Case(NamedTuple):
    """A benchmark case as ``setup`` builds it."""

    pattern: Any  #: the :class:`sparse_ref.Pattern`
    inputs: tuple[np.ndarray, ...]  #: q, k, v (and dout), ``(1, 1, n, d)``
    flops: int  #: useful flops of one call (:func:`useful_flops`)

    @property
    def qkv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first three inputs."""
        q, k, v = self.inputs[:3]
        return q, k, v

    @property
    def dout(self) -> np.ndarray:
        """The fourth input (``count=4``): the output gradient."""
        return self.inputs[3]


def setup_case(
    pattern: str,
    n: int,
    d: int,
    dtype: str = "float32",
    *,
    form: str = "bsr",
    dense: bool = False,
    count: int = 3,
    backward: bool = False,
) -> Case:
    """The start of every kernel suite's ``setup``: :func:`check_case` (``dense``: also skip
    where a dense reference cannot run), :func:`prepare_process`, the pattern in ``form``, the
    inputs and the useful flops."""
    check_case(pattern, n, d, dtype, form="dense" if dense else form)
    prepare_process()
    p = build_pattern(pattern, n, form)
    return Case(p, tuple(make_inputs(n, d, dtype, count)), useful_flops(p.nnz, d, backward))


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


def forward_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """Our forward as ``sparse_ref.attention`` runs it after validation: the Numba backend, BSR
    kernel for a pattern with a block form, CSR kernel otherwise."""
    from sparse_ref.backends import numba as backend

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: backend.forward(q, k, v, pattern, scale, None)


def backward_runner(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, pattern: Any
) -> Callable[[], Any]:
    """Our backward (dq, dk, dv) as ``sparse_ref.attention_backward`` runs it after validation (the
    pattern's transpose is cached by the backend after the first call, as in a training loop)."""
    from sparse_ref.backends import numba as backend

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: backend.backward(q, k, v, pattern, dout, None, None, scale, None)


def oracle_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """The dense float64 oracle (:func:`sparse_ref.oracle.forward`, masked softmax by row chunks)."""
    from sparse_ref import oracle

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: oracle.forward(q, k, v, pattern, scale, None)


# --- peers (torch) -------------------------------------------------------------------------------


def flex_mask_mod(pattern: str, p: Any) -> Any:
    """FlexAttention ``mask_mod`` of a benchmark pattern (``p``: the built Pattern)."""
    w = window_of(pattern)
    if w is not None:

        def window_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (q_idx >= kv_idx) & (q_idx - kv_idx < w)

        return window_mod
    torch = import_torch()
    bs = p.to_bsr()
    layout = np.zeros(bs.grid, dtype=bool)
    layout[bs.block_rows(), bs.indices] = True
    layout_t = torch.from_numpy(layout)
    block = bs.block[0]

    def layout_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return layout_t[q_idx // block, kv_idx // block]

    return layout_mod


def flex_block_mask(kind: str, p: Any, mask_mod: Any) -> Any:
    """FlexAttention ``BlockMask`` for pattern ``p``.

    ``"create_block_mask"``: FlexAttention's own (default 128-blocks; ``_compile=True`` evaluates
    the mask block by block instead of materialising n x n entries), what a user writes.
    ``"exact_blocks"``: our block form handed over (full blocks as ``full_kv_*``, which skip
    ``mask_mod``; partial blocks as ``kv_*``), FlexAttention's best case for the structure."""
    torch = import_torch()
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    n = p.shape[0]
    if kind == "create_block_mask":
        with warnings.catch_warnings():  # _compile is deprecated but avoids n x n mask entries
            warnings.simplefilter("ignore")
            return create_block_mask(
                mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu", _compile=True
            )
    if kind != "exact_blocks":
        raise ValueError(f"unknown FlexAttention mask kind {kind!r}")
    bs = p.to_bsr()
    nbq, nbk = bs.grid
    rows = bs.block_rows()

    def table(sel: np.ndarray) -> tuple[Any, Any]:
        counts = np.bincount(rows[sel], minlength=nbq).astype(np.int32)
        indices = np.zeros((nbq, nbk), dtype=np.int32)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(int(sel.sum())) - np.repeat(start, counts)
        indices[rows[sel], slot] = bs.indices[sel]
        return torch.from_numpy(counts)[None, None], torch.from_numpy(indices)[None, None]

    kv_num, kv_idx = table(~bs.full)
    full_num, full_idx = table(bs.full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=bs.block,
        mask_mod=mask_mod,
        seq_lengths=p.shape,
    )


def flex_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, block_mask: Any) -> Callable[[], Any]:
    """FlexAttention on the CPU, ``torch.compile(flex_attention, dynamic=False)``, no grad."""
    torch = import_torch()
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])

    def run() -> Any:
        with torch.no_grad():
            return flex(qt, kt, vt, block_mask=block_mask, scale=scale)

    return run


def dense_mask(p: Any) -> Any:
    """The pattern as an ``(n_q, n_k)`` torch bool tensor (SDPA: True = attend)."""
    torch = import_torch()
    return torch.from_numpy(p.mask_rows(np.arange(p.shape[0])))


def sdpa_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Any) -> Callable[[], Any]:
    """torch ``scaled_dot_product_attention`` with a dense boolean mask, forward, no grad."""
    torch = import_torch()
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])

    def run() -> Any:
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(
                qt, kt, vt, attn_mask=mask, scale=scale
            )

    return run


def sdpa_backward_runner(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, mask: Any
) -> Callable[[], Any]:
    """SDPA's backward alone: the forward runs here, once; each call is
    ``out.backward(dout, retain_graph=True)``."""
    torch = import_torch()
    qt, kt, vt = (torch.from_numpy(x).requires_grad_(True) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    dout_t = torch.from_numpy(dout)

    def run() -> Any:
        for t in (qt, kt, vt):
            t.grad = None
        out.backward(dout_t, retain_graph=True)
        return qt.grad

    return run


# --- machine peaks -------------------------------------------------------------------------------


def gemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """NumPy float32 GEMM GFLOP/s (``n x n`` by ``n x n``, BLAS on :data:`THREADS` threads)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), dtype=np.float32)
    run = lambda: np.matmul(a, b, out=c)  # noqa: E731
    warm(run)
    return 2 * n**3 / best_time(run, repeat) / 1e9


_TRIAD: Any = None


def triad_gbytes(size: int = 1 << 25, repeat: int = 5) -> float:
    """Memory bandwidth in GB/s: the STREAM triad ``a = b + s * c`` over float32 arrays of ``size``
    elements (128 MiB each by default, far beyond the caches) on :data:`THREADS` Numba threads,
    counting 12 bytes per element (two reads, one write)."""
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
