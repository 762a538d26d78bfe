"""The gradient that flows back through ``lse`` (shared by the torch and JAX wrappers).

``lse_i = log sum_j exp(s_ij)`` over the allowed keys, so ``d lse_i / d s_ij = P_ij`` (the
attention weights) and, with ``s_ij = scale * q_i . k_j`` and ``g = dL/d lse``::

    dq_i += scale * g_i * sum_j P_ij k_j      (attention with v = k)
    dk_j += scale * sum_i P_ij g_i q_i        (the dv of a backward with v = k and dout = g * q)

``dv`` gets nothing. With a softcap ``d s / d (q . k)`` varies per pair and the two kernel calls
above do not give it: refused with ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any

from .. import api

__all__ = ["add_lse_gradient"]


def add_lse_gradient(
    q: Any,
    k: Any,
    pattern: Any,
    g: Any,
    dq: Any,
    dk: Any,
    *,
    scale: float,
    softcap: float | None,
    backend: str = "numba",
) -> tuple[Any, Any]:
    """``(dq, dk)`` plus the lse term above, for NumPy (``backend="numba"``) or CuPy arrays.

    ``q (..., n_q, d)``, ``k (..., n_k, d)`` in the compute dtype, ``g (..., n_q)``; ``dq``/``dk``
    as :func:`sparse_ref.attention_backward` returns them. ``pattern`` may be a per-batch list.
    """
    if softcap is not None:
        raise NotImplementedError(
            "the gradient through lse is not implemented with a softcap; use lse without "
            "gradients or softcap=None"
        )
    weighted_k = api.attention(q, k, k, pattern, scale=scale, backend=backend)
    gq = (g[..., None] * q).astype(q.dtype)  # g is float32 for float16 q (CUDA): one dtype
    _, _, weighted_q = api.attention_backward(q, k, k, pattern, gq, scale=scale, backend=backend)
    dq = dq + (scale * g[..., None] * weighted_k).astype(dq.dtype)
    dk = dk + (scale * weighted_q).astype(dk.dtype)
    return dq, dk
