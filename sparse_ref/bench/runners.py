"""Our kernels and the oracle as zero-argument callables for the timers.

Our kernels are timed as the Numba backend runs them (:mod:`sparse_ref.backends.numba`, the call
that :func:`sparse_ref.attention` makes after validating its arguments), so the figures are the
kernels' and not the checks'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["forward_runner", "backward_runner", "oracle_runner"]


def forward_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """Our forward as :func:`sparse_ref.attention` runs it after validation: the Numba backend, the
    BSR kernel for a pattern with a block form, the CSR kernel otherwise."""
    from ..backends import numba as backend

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: backend.forward(q, k, v, pattern, scale, None)


def backward_runner(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, pattern: Any
) -> Callable[[], Any]:
    """Our backward (dq, dk, dv) as :func:`sparse_ref.attention_backward` runs it after validation
    (what the backend caches per pattern, such as token CSR's transpose, is made by the first call,
    as in a training loop that reuses its pattern)."""
    from ..backends import numba as backend

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: backend.backward(q, k, v, pattern, dout, None, None, scale, None)


def oracle_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """The dense float64 oracle (:func:`sparse_ref.oracle.forward`, masked softmax by row chunks,
    ``4 * n**2 * d`` flops whatever the pattern)."""
    from .. import oracle

    scale = 1.0 / math.sqrt(q.shape[-1])
    return lambda: oracle.forward(q, k, v, pattern, scale, None)
