"""asv: the Numba CSR backward (dq, dk, dv) against its own forward and torch (issue 6 target).

Case (float32, d = 64, B = 1, H = 1, 2 threads): causal sliding window of 256 (row ``i`` attends
keys ``max(0, i - 255) .. i``) at n = 4096 and n = 16384 (4.16M nnz). Target: backward time at
most 3x the forward time of the Numba CSR kernel on the same pattern (FlashAttention's rule of
thumb is about 2.5x).

``setup`` builds the inputs (the CSR with vectorised NumPy), the pattern's transpose (cached by the
backend, as in a training loop that reuses its pattern) and calls forward and backward once, so
Numba's compilation (or the load from its on-disk cache) is excluded from every measurement. Both
are timed at the backend level (``sparse_ref.backends.numba``: the calls ``attention`` and
``attention_backward`` make after validation).

``track_gflops`` is useful GFLOP/s counting ``8 * nnz * d`` flops per backward (the issue's
convention: twice the forward's ``4 * nnz * d``; the kernels actually perform five ``nnz x d``
products, ``10 * nnz * d`` flops, like FlashAttention-2).
``track_ratio_to_forward`` is backward time over forward time, ``track_ratio_to_torch`` torch's
backward time over ours; each measured in the same process, calls interleaved, best of repeats.
The torch peer: FlexAttention has no backward on the CPU in the installed torch (2.13 raises
``NotImplementedError: FlexAttention does not support backward on CPU``), so the peer is
``scaled_dot_product_attention`` with a dense bool mask (its backward only: the forward is run
outside the timed region, ``out.backward(dout, retain_graph=True)`` is timed); it is skipped (NaN)
without torch and above n = 16384 (the dense mask). ``python asv_benchmarks/bench_backward.py``
prints the same figures as a table without asv.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

THREADS = 2
D = 64


def _threads() -> None:
    import numba

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass


def causal_window_csr(n: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr (n + 1,) int64, indices int32)`` of the causal sliding window, vectorised."""
    i = np.arange(n)
    lo = np.maximum(i - (window - 1), 0)
    count = i - lo + 1
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=indptr[1:])
    indices = np.arange(int(indptr[-1]), dtype=np.int64) - np.repeat(indptr[:-1] - lo, count)
    return indptr, indices.astype(np.int32)


def make_case(n: int, window: int, dtype: str) -> dict[str, Any]:
    from sparse_ref import Pattern

    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 1, n, D)).astype(dtype) for _ in range(4))
    try:  # the catalog, when present, builds the same pattern
        from sparse_ref import patterns

        pattern = patterns.causal_sliding_window(n, window)
    except (ImportError, AttributeError):
        indptr, indices = causal_window_csr(n, window)
        pattern = Pattern.from_csr((indptr, indices, (n, n)))
    return dict(q=q, k=k, v=v, dout=dout, pattern=pattern, scale=1.0 / math.sqrt(D))


def numba_runners(case: dict[str, Any]) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``(forward, backward)`` as the Numba backend runs them."""
    from sparse_ref.backends import numba as backend

    q, k, v, dout, pattern, scale = (case[x] for x in ("q", "k", "v", "dout", "pattern", "scale"))

    def forward() -> Any:
        return backend.forward(q, k, v, pattern, scale, None)

    def backward() -> Any:
        return backend.backward(q, k, v, pattern, dout, None, None, scale, None)

    return forward, backward


def sdpa_backward_runner(case: dict[str, Any], window: int) -> Callable[[], Any]:
    """torch ``scaled_dot_product_attention`` with a dense bool mask of the same window: the
    backward pass alone (the graph is kept between calls)."""
    import torch

    n = case["q"].shape[2]
    i = torch.arange(n)
    mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
    qt, kt, vt = (torch.from_numpy(case[x]).requires_grad_(True) for x in ("q", "k", "v"))
    out = torch.nn.functional.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, scale=float(case["scale"])
    )
    dout = torch.from_numpy(case["dout"])

    def run() -> Any:
        for t in (qt, kt, vt):
            t.grad = None
        out.backward(dout, retain_graph=True)
        return qt.grad

    return run


def interleaved_min(fns: list[Callable[[], Any]], repeat: int = 5) -> list[float]:
    """Best wall time of each function, calls interleaved so that load changes hit all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


class CSRBackward:
    """Time, useful GFLOP/s and ratios of the Numba CSR backward on a causal window."""

    params = ([4096, 16384], [256], ["float32"])
    param_names = ["n", "window", "dtype"]
    timeout = 900

    def setup(self, n: int, window: int, dtype: str) -> None:
        _threads()
        self.case = make_case(n, window, dtype)
        self.flops = 8 * self.case["pattern"].nnz * D
        self.forward, self.backward = numba_runners(self.case)
        self.forward()  # compile (or load from Numba's cache) and build the cached transpose:
        self.backward()  # both excluded from the measurements

    def time_backward(self, n: int, window: int, dtype: str) -> None:
        self.backward()

    def track_gflops(self, n: int, window: int, dtype: str) -> float:
        (t,) = interleaved_min([self.backward], 5)
        return self.flops / t / 1e9

    track_gflops.unit = "GFLOP/s"  # type: ignore[attr-defined]

    def track_ratio_to_forward(self, n: int, window: int, dtype: str) -> float:
        backward, forward = interleaved_min([self.backward, self.forward], 7)
        return backward / forward

    track_ratio_to_forward.unit = "x forward time"  # type: ignore[attr-defined]

    def track_ratio_to_torch(self, n: int, window: int, dtype: str) -> float:
        if n > 16384:
            return float("nan")
        try:
            torch_backward = sdpa_backward_runner(self.case, window)
        except ImportError:
            return float("nan")
        torch_backward()
        ours, theirs = interleaved_min([self.backward, torch_backward], 3)
        return theirs / ours

    track_ratio_to_torch.unit = "x torch SDPA backward (bool mask)"  # type: ignore[attr-defined]


def main() -> None:
    """Print forward, backward and torch's backward for every case, timed in this process."""
    _threads()
    for n in CSRBackward.params[0]:
        for window in CSRBackward.params[1]:
            case = make_case(n, window, "float32")
            nnz = case["pattern"].nnz
            forward, backward = numba_runners(case)
            names, fns = ["sparse-ref CSR backward", "sparse-ref CSR forward"], [backward, forward]
            try:
                fns.append(sdpa_backward_runner(case, window))
                names.append("torch SDPA backward (mask)")
            except ImportError:
                pass
            for fn in fns:
                fn()
            times = interleaved_min(fns, 7)
            for name, t in zip(names, times, strict=True):
                flops = (4 if "forward" in name else 8) * nnz * D
                print(
                    f"n={n:6d} w={window} {name:28s} {t * 1e3:8.2f} ms "
                    f"{flops / t / 1e9:7.1f} GFLOP/s   its time / our backward: {t / times[0]:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
