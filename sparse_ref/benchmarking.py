"""Benchmark building blocks: threads, warm-ups, interleaved timing, flop counts, peaks, runners.

Shared by ``sparse-ref bench`` (:mod:`sparse_ref.bench_cli`, the quick table) and the asv suites
of the repository (``asv_benchmarks/``, which import it through ``asv_benchmarks/_common.py``).
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
    >>> from sparse_ref import benchmarking as bm
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

import contextlib
import ctypes
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

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
    "interleaved_min",
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
    "gemm_gflops",
    "triad_gbytes",
]

#: default threads for Numba, the BLAS and torch (DESIGN §12: 2 CPU threads)
THREADS = 2
#: block of the causal windows' block form (BigBird keeps its own blocks)
BSR_BLOCK = 128

_threads = THREADS  # what import_torch gives torch: the last prepare_process / thread_limit
_MALLOC_KEPT = False


class PeerUnavailable(NotImplementedError):
    """A peer cannot run here (torch missing); the message says why and how to install it.

    A ``NotImplementedError``, which asv reports as a skipped benchmark."""


# --- process -------------------------------------------------------------------------------------


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory mapped, for the rest of the process.

    ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from fresh ``mmap``) and
    ``M_TRIM_THRESHOLD`` at its maximum (the heap is never given back). Freed buffers are then
    reused with their pages already touched, so repeated calls do not pay page faults again.

    Returns:
        True when glibc accepted both settings; False elsewhere (no glibc: the figures then
        include the page faults of large allocations).
    """
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


def _set_threads(threads: int) -> None:
    """Numba's and torch's (where imported) thread counts; what :func:`import_torch` applies."""
    global _threads
    import numba

    _threads = threads
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def prepare_process(threads: int = THREADS) -> None:
    """``threads`` threads for Numba (at most ``NUMBA_NUM_THREADS``), the BLAS (threadpoolctl) and
    torch (now if imported, else when :func:`import_torch` imports it), then
    :func:`keep_freed_memory`. For the rest of the process: the first thing of every asv ``setup``.
    """
    from threadpoolctl import threadpool_limits

    _set_threads(threads)
    threadpool_limits(threads)
    keep_freed_memory()


@contextlib.contextmanager
def thread_limit(threads: int = THREADS) -> Iterator[None]:
    """:func:`prepare_process` for the ``with`` block only: Numba's and the BLAS's thread counts
    (and torch's, if it was imported before) are restored on exit. :func:`keep_freed_memory`
    stays in force (it cannot be undone)."""
    global _threads
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads(), _threads
    torch_before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    with threadpool_limits(threads):
        _set_threads(threads)
        keep_freed_memory()
        try:
            yield
        finally:
            numba.set_num_threads(before[0])
            _threads = before[1]
            if torch_before is not None:
                sys.modules["torch"].set_num_threads(torch_before)


def import_torch() -> Any:
    """torch, set to the threads of the last :func:`prepare_process` / :func:`thread_limit`.

    Raises:
        PeerUnavailable: torch is not installed.
    """
    try:
        import torch
    except ImportError:
        raise PeerUnavailable("torch is not installed: pip install -e '.[torch]'") from None
    torch.set_num_threads(_threads)
    return torch


# --- timing --------------------------------------------------------------------------------------


def warm(*fns: Callable[[], Any]) -> None:
    """Call each function once: Numba compilation (or its cache load), first-touch memory and lazy
    initialisation (torch, ``torch.compile``) happen here, outside the measurements."""
    for fn in fns:
        fn()


def first_call_s(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn``, meant for its first (a warm-up that compiles): the compile
    time is that minus the steady time, e.g. ``first_call_s(f) - best_time(f)``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_min(fns: Sequence[Callable[[], Any]], repeat: int = 5) -> list[float]:
    """Best wall time in seconds of each function over ``repeat`` rounds; each round calls every
    function once, in order, so that a load change hits all of them alike. Warm them first
    (:func:`warm`): nothing here is discarded."""
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def best_time(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Best wall time of ``fn`` in seconds over ``repeat`` calls."""
    return interleaved_min([fn], repeat)[0]


def ratio(slow: Callable[[], Any], fast: Callable[[], Any], repeat: int = 5) -> float:
    """``time(slow) / time(fast)``, both best of ``repeat``, measured interleaved."""
    t_slow, t_fast = interleaved_min([slow, fast], repeat)
    return t_slow / t_fast


# --- flops ---------------------------------------------------------------------------------------


def useful_flops(nnz: int, d: int, backward: bool = False) -> int:
    """Useful flops of one attention call over ``nnz`` allowed (query, key) pairs, head dim ``d``.

    Forward: ``4 * nnz * d`` (``QK^T`` and ``PV``, a multiply and an add each). Backward:
    ``8 * nnz * d``, twice the forward, the usual convention (our kernels perform five
    ``nnz x d`` products, ``10 * nnz * d`` flops, like FlashAttention-2). Dense peers and the
    oracle are credited with the same useful flops, whatever they compute.

    Example:
        >>> useful_flops(1000, 64), useful_flops(1000, 64, backward=True)
        (256000, 512000)
    """
    return (8 if backward else 4) * nnz * d


# --- cases ---------------------------------------------------------------------------------------


def window_of(pattern: str) -> int | None:
    """The window of ``causal_window_<w>``, None for other benchmark patterns."""
    return int(pattern.rsplit("_", 1)[1]) if pattern.startswith("causal_window_") else None


def expected_nnz(pattern: str, n: int) -> int:
    """Nonzeros of a benchmark pattern without building it (BigBird: an upper bound)."""
    w = window_of(pattern)
    if w is not None:
        w = min(w, n)
        return w * n - w * (w - 1) // 2
    block = int(pattern.rsplit("_", 1)[1])  # bigbird_<block>: 3 window + 3 random + 2 global
    return min(n * n, 8 * block * n + 2 * block * n)


def build_pattern(pattern: str, n: int, form: str = "bsr") -> Any:
    """The benchmark pattern as a :class:`sparse_ref.Pattern`: with its block form (``"bsr"``: the
    Numba backend runs the BSR kernels) or as token CSR only (``"csr"``: the CSR kernels)."""
    from . import patterns
    from .pattern import Pattern

    if form not in ("bsr", "csr"):
        raise ValueError(f"form must be 'bsr' or 'csr', got {form!r}")
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


class Case(NamedTuple):
    """A benchmark case: the pattern, its inputs and the useful flops of one call."""

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


def make_case(
    pattern: str,
    n: int,
    d: int,
    dtype: str = "float32",
    *,
    form: str = "bsr",
    count: int = 3,
    backward: bool = False,
) -> Case:
    """:func:`build_pattern` in ``form``, ``count`` inputs of ``dtype`` (:func:`make_inputs`) and
    the useful flops of a forward (``backward=False``) or backward call."""
    p = build_pattern(pattern, n, form)
    return Case(p, tuple(make_inputs(n, d, dtype, count)), useful_flops(p.nnz, d, backward))


# --- our kernels and the oracle ------------------------------------------------------------------


def forward_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """Our forward as :func:`sparse_ref.attention` runs it after validation: the Numba backend, the
    BSR kernel for a pattern with a block form, the CSR kernel otherwise."""
    from .backends import numba as backend

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: backend.forward(q, k, v, pattern, scale, None)


def backward_runner(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, pattern: Any
) -> Callable[[], Any]:
    """Our backward (dq, dk, dv) as :func:`sparse_ref.attention_backward` runs it after validation
    (what the backend caches per pattern, such as token CSR's transpose, is made by the first call,
    as in a training loop that reuses its pattern)."""
    from .backends import numba as backend

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: backend.backward(q, k, v, pattern, dout, None, None, scale, None)


def oracle_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """The dense float64 oracle (:func:`sparse_ref.oracle.forward`, masked softmax by row chunks,
    ``4 * n**2 * d`` flops whatever the pattern)."""
    from . import oracle

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: oracle.forward(q, k, v, pattern, scale, None)


# --- peers (torch) -------------------------------------------------------------------------------


def flex_mask_mod(pattern: str, p: Any) -> Any:
    """FlexAttention ``mask_mod`` of benchmark pattern ``pattern`` (``p``: the built Pattern; for
    BigBird it must hold its block form, whose layout the mask looks up)."""
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
    """FlexAttention on the CPU, ``torch.compile(flex_attention, dynamic=False)``, no grad. The
    first call compiles (warm it, and time it with :func:`first_call_s` for the compile time);
    dynamo recompiles for every new shape and gives up after its ``cache_size_limit``, so a
    process that compiles many cases calls ``torch._dynamo.reset()`` between them."""
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
