"""asv: the Numba backward (dq, dk, dv), per form, pattern, n, d and dtype (issue 6, DESIGN §12).

Patterns as in the forward suites (causal windows 256 and 4096, BigBird of 64-blocks), B = H = 1,
2 threads, timed as ``sparse_ref.attention_backward`` runs them after validation (the Numba
backend). ``CSRBackward`` holds the patterns as token CSR (the kernels of
:mod:`sparse_ref.kernels.csr_backward`); ``BSRBackward`` holds them with their block form and times
whatever the backend runs for that form (its BSR backward kernel where it has one, token CSR
otherwise). Target: backward time at most 3x the forward time of the same form on the same pattern
(FlashAttention's rule of thumb is about 2.5x). The torch peer (SDPA's backward with a boolean
mask) is in :mod:`bench_peers`; FlexAttention has no backward on the CPU (torch 2.13 raises
``NotImplementedError: FlexAttention does not support backward on CPU``).

Warm-ups (see ``_common``): ``setup`` sets 2 threads and makes ``malloc`` keep freed memory, then
calls forward and backward once: Numba's compilation (or the load from its on-disk cache), what
the backend caches per pattern (the transpose of token CSR, as in a training loop that reuses its
pattern) and the first touch of the backward's scratch (``p`` and ``ds`` per nonzero) and outputs
all happen outside every measurement. Skipped (``NotImplementedError`` in ``setup``): a window that
covers the sequence, token CSR above 2**26 nonzeros (``CSRBackward``), float64 above n = 16384.

``track_gflops`` is useful GFLOP/s counting ``8 * nnz * d`` flops per backward (twice the
forward's ``4 * nnz * d``; the kernels actually perform five ``nnz x d`` products, ``10 * nnz * d``
flops, like FlashAttention-2), best of 5; ``track_ratio_to_forward`` is backward time over forward
time, interleaved, best of 5. ``python -m asv_benchmarks.bench_backward [REGEX]`` prints the
``track_`` figures without asv.
"""

from __future__ import annotations

import abc

from . import _common as common


class BackwardSuite(common.KernelGrid, abc.ABC):
    """Time, useful GFLOP/s and backward/forward ratio of the backward on pattern ``form``
    (abstract: asv collects the concrete subclasses only)."""

    @property
    @abc.abstractmethod
    def form(self) -> str:
        """``"bsr"`` or ``"csr"``."""

    def setup(self, pattern: str, n: int, d: int, dtype: str) -> None:
        case = common.setup_case(pattern, n, d, dtype, form=self.form, count=4, backward=True)
        self.flops = case.flops
        self.forward = common.forward_runner(*case.qkv, case.pattern)
        self.backward = common.backward_runner(*case.qkv, case.dout, case.pattern)
        common.warm(self.forward, self.backward)

    def time_backward(self, pattern: str, n: int, d: int, dtype: str) -> None:
        self.backward()

    @common.unit("GFLOP/s")
    def track_gflops(self, pattern: str, n: int, d: int, dtype: str) -> float:
        return self.flops / common.best_time(self.backward, 5) / 1e9

    @common.unit("x forward time")
    def track_ratio_to_forward(self, pattern: str, n: int, d: int, dtype: str) -> float:
        return common.ratio(self.backward, self.forward, 5)


class CSRBackward(BackwardSuite):
    """The backward on token CSR."""

    form = "csr"


class BSRBackward(BackwardSuite):
    """The backward on the block form."""

    form = "bsr"


if __name__ == "__main__":
    common.main([CSRBackward, BSRBackward])
