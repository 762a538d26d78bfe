"""The million-token run: a causal sliding window forward at n = 2**20 in bounded memory.

Token CSR cannot hold this pattern (4.3e9 nonzeros for window 4096: 17 GB of int32 indices); its
block form is 270k blocks of 128 and two distinct masks, built directly in about 0.2 s. The run:

1. builds ``patterns.causal_sliding_window(n, window, block=block)`` (the block form only);
2. draws float32 ``q, k, v`` of shape ``(n, d)`` (B = H = 1) and warms the kernel up on a small
   case;
3. resets the peak-RSS mark (``/proc/self/clear_refs``), runs ``sparse_ref.attention`` once, and
   reads the peak (``VmHWM``): the *extra* memory is the peak minus the resident size just before
   the call (so it counts the output, the kernel's buffers and any temporaries; the inputs were
   already resident);
4. checks ``rows`` sampled query rows (first, last, block edges and random ones) against
   ``oracle.attention_rows`` with the DESIGN §9 tolerance rule (float64 reference, float32 naive).

``sparse-ref bench scale --n 1048576 --window 4096`` runs it from the shell. On Linux only
(``/proc``); elsewhere the memory figure falls back to ``getrusage`` (peak since process start).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

import numpy as np

from .. import oracle, patterns, testing
from ..api import attention
from .flops import useful_flops

__all__ = ["ScaleResult", "run", "report", "sample_rows", "MEMORY_BUDGET"]

#: The target: extra peak memory of the forward call (DESIGN §12, "scale").
MEMORY_BUDGET = 4 << 30


@dataclass(frozen=True)
class ScaleResult:
    """What :func:`run` measured."""

    n: int
    window: int
    d: int
    block: int
    nnz: int
    nblocks: int
    distinct_masks: int
    build_s: float
    forward_s: float
    gflops: float
    extra_bytes: int
    rss_before_bytes: int
    memory_method: str
    rows_checked: int
    out_err: float
    out_tol: float
    lse_err: float
    lse_tol: float

    @property
    def memory_ok(self) -> bool:
        return self.extra_bytes < MEMORY_BUDGET

    @property
    def accuracy_ok(self) -> bool:
        return self.out_err <= self.out_tol and self.lse_err <= self.lse_tol

    @property
    def ok(self) -> bool:
        return self.memory_ok and self.accuracy_ok


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sample_rows(n: int, block: int, count: int, seed: int = 0) -> np.ndarray:
    """About ``count`` sorted rows: first and last, a few around block edges, and random ones."""
    rng = np.random.default_rng(seed)
    edges = np.array([0, 1, block - 1, block, n // 2 - 1, n // 2, n - block, n - 2, n - 1])
    edges = edges[(edges >= 0) & (edges < n)]
    if count >= n:
        return np.arange(n)
    edges = edges[: max(0, count)]
    extra = rng.choice(n, size=max(0, count - len(edges)), replace=False)
    return np.unique(np.concatenate([edges, extra]))  # about count rows (duplicates merge)


def run(
    n: int = 1 << 20,
    window: int = 4096,
    *,
    d: int = 64,
    block: int = 128,
    rows: int = 64,
    seed: int = 0,
) -> ScaleResult:
    """Build, run and check the causal-window forward at length ``n`` (see the module docstring)."""
    t0 = time.perf_counter()
    pattern = patterns.causal_sliding_window(n, window, block=block)
    build_s = time.perf_counter() - t0
    bs = pattern.to_bsr()

    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((n, d), dtype=np.float32) for _ in range(3))
    small = patterns.causal_sliding_window(2 * block, window, block=block)
    attention(q[: 2 * block], k[: 2 * block], v[: 2 * block], small)  # compile / load the kernel

    exact = _reset_peak() and _status_kib("VmHWM") is not None
    before = (_status_kib("VmRSS") or 0) * 1024 if exact else 0
    t0 = time.perf_counter()
    out, lse = attention(q, k, v, pattern, return_lse=True)
    forward_s = time.perf_counter() - t0
    if exact:
        peak = (_status_kib("VmHWM") or 0) * 1024
        method = "VmHWM - VmRSS around the call"
    else:  # ru_maxrss is KiB on Linux, bytes on macOS; peak since start: an upper bound
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        method = "getrusage peak since start (upper bound)"
    extra = max(0, peak - before)

    sel = sample_rows(n, block, rows, seed)
    ref_out, ref_lse = oracle.attention_rows(
        q, k, v, pattern, sel, return_lse=True, compute_dtype=testing.reference_dtype(np.float32)
    )
    naive_out, naive_lse = oracle.attention_rows(
        q, k, v, pattern, sel, return_lse=True, compute_dtype=np.float32
    )
    out_tol = testing.rule_tolerance(ref_out, naive_out, np.float32, testing.FORWARD_FACTOR)
    lse_tol = testing.rule_tolerance(ref_lse, naive_lse, np.float32, testing.FORWARD_FACTOR)
    out_err = float(np.max(np.abs(out[sel].astype(np.float64) - ref_out)))
    lse_err = float(np.max(np.abs(lse[sel].astype(np.float64) - ref_lse)))
    return ScaleResult(
        n=n,
        window=window,
        d=d,
        block=block,
        nnz=pattern.nnz,
        nblocks=bs.nblocks,
        distinct_masks=len(bs.mask_table),
        build_s=build_s,
        forward_s=forward_s,
        gflops=useful_flops(pattern.nnz, d) / forward_s / 1e9,
        extra_bytes=int(extra),
        rss_before_bytes=int(before),
        memory_method=method,
        rows_checked=len(sel),
        out_err=out_err,
        out_tol=out_tol,
        lse_err=lse_err,
        lse_tol=lse_tol,
    )


def report(r: ScaleResult) -> str:
    """A short human-readable summary of a :class:`ScaleResult`."""
    gib = 1 << 30
    lines = [
        f"causal window {r.window} at n = {r.n:,}, d = {r.d}, float32, B = H = 1, block {r.block}",
        f"  pattern: {r.nnz:,} token nonzeros as {r.nblocks:,} blocks, {r.distinct_masks} distinct "
        f"masks, built in {r.build_s:.2f} s",
        f"  forward: {r.forward_s:.2f} s ({r.gflops:.1f} useful GFLOP/s)",
        f"  extra peak memory: {r.extra_bytes / gib:.2f} GiB ({r.memory_method}; budget "
        f"{MEMORY_BUDGET / gib:.0f} GiB): {'ok' if r.memory_ok else 'OVER'}",
        f"  oracle check on {r.rows_checked} rows: out err {r.out_err:.2e} <= tol {r.out_tol:.2e}, "
        f"lse err {r.lse_err:.2e} <= tol {r.lse_tol:.2e}: {'ok' if r.accuracy_ok else 'FAILED'}",
    ]
    return "\n".join(lines)
