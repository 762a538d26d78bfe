"""The oracle as a backend: exact float64 computation, rounded to the input dtype at the end."""

from __future__ import annotations

import numpy as np

from .. import oracle
from ..pattern import Pattern
from ..validation import compute_dtype


def forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    scale: float,
    softcap: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(out, lse)`` by the float64 oracle; out in q's dtype, lse in float64 or float32."""
    out, lse = oracle.forward(q, k, v, pattern, scale, softcap, compute_dtype=np.float64)
    return out.astype(q.dtype), lse.astype(compute_dtype(q.dtype))


def backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    dout: np.ndarray,
    out: np.ndarray | None,
    lse: np.ndarray | None,
    scale: float,
    softcap: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dq, dk, dv)`` by the float64 oracle, rounded to q's dtype.

    ``out``/``lse`` are accepted for the common backend signature and not used: the oracle
    differentiates the exact forward it recomputes.
    """
    grads = oracle.backward(q, k, v, pattern, dout, scale, softcap, compute_dtype=np.float64)
    return tuple(g.astype(q.dtype) for g in grads)  # type: ignore[return-value]
