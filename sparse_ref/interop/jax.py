"""JAX interop: sparse attention as a differentiable JAX function (``jax.custom_vjp``).

JAX is optional (``pip install 'sparse-ref[jax]'``); it is imported when :func:`attention` is
called, not when ``sparse_ref`` is imported.

The forward and the backward run on the host through ``jax.pure_callback``: the Numba kernels of
:func:`sparse_ref.attention` and :func:`sparse_ref.attention_backward` (float16/bfloat16 computed
in float32). So the function works under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (the
callback is vectorised with ``vmap_method="broadcast_all"``: a vmapped call reaches the kernels
as one batched call), but inside a jitted program it is a host round trip, not an XLA kernel.

float64 needs JAX's 64-bit mode (``jax.config.update("jax_enable_x64", True)`` or
``JAX_ENABLE_X64=1``); without it JAX makes float32 arrays.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparse_ref import patterns
    >>> p = patterns.causal_sliding_window(64, 8)
    >>> q = jax.random.normal(jax.random.key(0), (1, 2, 64, 16))
    >>> loss = lambda q: attention(q, q, q, p).sum()
    >>> jax.jit(jax.grad(loss))(q).shape
    (1, 2, 64, 16)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from .. import api
from ..pattern import Pattern
from ..per_batch import as_pattern_list
from ..validation import check_scale, check_softcap, compute_dtype, prepare
from ._lse_grad import add_lse_gradient

__all__ = ["attention"]

_DTYPES = ("float64", "float32", "float16", "bfloat16")


def _jax() -> Any:
    try:
        import jax
    except ImportError as err:
        raise ImportError(
            "this function needs JAX, which is not installed; install the jax extra: "
            "pip install 'sparse-ref[jax]' (or pip install jax)"
        ) from err
    return jax


def attention(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern | Sequence[Pattern],
    *,
    scale: float | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Sparse attention on JAX arrays, differentiable with ``jax.grad`` (a ``jax.custom_vjp``).

    Same rule, shapes, GQA and empty-row conventions as :func:`sparse_ref.attention`; the gradients
    are :func:`sparse_ref.attention_backward`'s, plus the gradient through ``lse`` when it is used
    (not with a softcap).

    Args:
        q: ``(B, H, n_q, d)``, or ``(H, n_q, d)`` / ``(n_q, d)``; float32, float64 (with
            ``jax_enable_x64``), float16 or bfloat16.
        k, v: ``(B, H_kv, n_k, d)``, ``(B, H_kv, n_k, d_v)``, same rank and dtype.
        pattern: a :class:`~sparse_ref.Pattern` of shape ``(n_q, n_k)``, or a sequence of ``B``
            patterns, one per batch element (not with ``jax.vmap`` over that batch). It is a
            Python object, not an array: close over it (or mark it static) under ``jax.jit``.
        scale: default ``1/sqrt(d)``. softcap: ``s = softcap * tanh(s / softcap)`` if set.
        return_lse: also return ``lse (..., n_q)``: float64 for float64 inputs, else float32.

    Returns:
        ``out (..., n_q, d_v)`` in q's dtype (and ``lse``).
    """
    jax = _jax()
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    _check(q, k, v, pattern, scale, softcap)
    per_batch = as_pattern_list(pattern)
    key = pattern if per_batch is None else tuple(per_batch)
    out, lse = _vjp_attention(jax)(
        q, k, v, key, check_scale(scale, int(q.shape[-1])), check_softcap(softcap)
    )
    return (out, lse) if return_lse else out


def _check(q: Any, k: Any, v: Any, pattern: Any, scale: Any, softcap: Any) -> None:
    """Shapes, dtypes and pattern checked eagerly (shapes are static under ``jit``), by
    :func:`sparse_ref.validation.prepare` on zero-stride stand-ins of the arrays."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"{name} must be a JAX array, got {type(x).__name__}")
        if str(x.dtype) not in _DTYPES:
            raise TypeError(f"{name} must be float64, float32, float16 or bfloat16, got {x.dtype}")
    sq, sk, sv = (np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape) for x in (q, k, v))
    per_batch = as_pattern_list(pattern)
    if per_batch is None:
        prepare(sq, sk, sv, pattern, scale=scale, softcap=softcap, check_finite=False)
        return
    if len(q.shape) != 4 or q.shape[0] != len(per_batch):
        raise ValueError(
            f"a sequence of {len(per_batch)} patterns needs 4-D q with batch size B = "
            f"{len(per_batch)} (one pattern per batch element), got shape {tuple(q.shape)}"
        )
    for p in per_batch:
        prepare(sq[:1], sk[:1], sv[:1], p, scale=scale, softcap=softcap, check_finite=False)


# ------------------------------------------------------------------------------ host callbacks
def _host(x: Any, dtype: Any) -> np.ndarray:
    """A callback argument as a NumPy array in ``dtype``, batch axes folded into one (``vmap``
    adds leading axes: the kernels take ``(B, H, n, d)``)."""
    a = np.asarray(x)
    if a.ndim > 4:
        a = a.reshape(-1, *a.shape[-3:])
    return a.astype(dtype, copy=False)


def _host_forward(
    pattern: Any, scale: float, softcap: float | None, q: Any, k: Any, v: Any
) -> tuple[np.ndarray, np.ndarray]:
    ct = compute_dtype(q.dtype)
    qa, ka, va = (_host(x, ct) for x in (q, k, v))
    out, lse = api.attention(
        qa, ka, va, _pattern(pattern), scale=scale, softcap=softcap, return_lse=True
    )
    lead = np.shape(q)[:-2]
    return (
        out.astype(q.dtype).reshape(*lead, q.shape[-2], v.shape[-1]),
        lse.reshape(*lead, q.shape[-2]),
    )


def _host_backward(
    pattern: Any, scale: float, softcap: float | None, q: Any, k: Any, v: Any, dout: Any, dlse: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ct = compute_dtype(q.dtype)
    qa, ka, va, ga = (_host(x, ct) for x in (q, k, v, dout))
    p = _pattern(pattern)
    dq, dk, dv = api.attention_backward(qa, ka, va, p, ga, scale=scale, softcap=softcap)
    g = np.asarray(dlse)
    if g.size and bool((g != 0).any()):
        g = g.reshape(*qa.shape[:-1]).astype(ct, copy=False)
        dq, dk = add_lse_gradient(qa, ka, p, g, dq, dk, scale=scale, softcap=softcap)
    return tuple(  # type: ignore[return-value]
        grad.astype(x.dtype).reshape(x.shape) for grad, x in ((dq, q), (dk, k), (dv, v))
    )


def _pattern(key: Pattern | tuple[Pattern, ...]) -> Pattern | list[Pattern]:
    return key if isinstance(key, Pattern) else list(key)


# ----------------------------------------------------------------------------------- custom_vjp
_CACHE: dict[str, Any] = {}


def _vjp_attention(jax: Any) -> Any:
    """``f(q, k, v, pattern, scale, softcap) -> (out, lse)`` with its custom VJP (built once)."""
    if "f" in _CACHE:
        return _CACHE["f"]
    import jax.numpy as jnp

    def call_forward(q: Any, k: Any, v: Any, pattern: Any, scale: float, softcap: Any) -> Any:
        lse_dtype = jnp.float64 if q.dtype == jnp.float64 else jnp.float32
        shapes = (
            jax.ShapeDtypeStruct((*q.shape[:-1], v.shape[-1]), q.dtype),
            jax.ShapeDtypeStruct(q.shape[:-1], lse_dtype),
        )
        host = partial(_host_forward, pattern, scale, softcap)
        return jax.pure_callback(host, shapes, q, k, v, vmap_method="broadcast_all")

    @partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
    def f(q: Any, k: Any, v: Any, pattern: Any, scale: float, softcap: Any) -> Any:
        return call_forward(q, k, v, pattern, scale, softcap)

    def fwd(q: Any, k: Any, v: Any, pattern: Any, scale: float, softcap: Any) -> Any:
        out, lse = call_forward(q, k, v, pattern, scale, softcap)
        return (out, lse), (q, k, v)

    def bwd(pattern: Any, scale: float, softcap: Any, res: Any, grads: Any) -> Any:
        q, k, v = res
        dout, dlse = grads
        shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
        host = partial(_host_backward, pattern, scale, softcap)
        return jax.pure_callback(host, shapes, q, k, v, dout, dlse, vmap_method="broadcast_all")

    f.defvjp(fwd, bwd)
    _CACHE["f"] = f
    return f
