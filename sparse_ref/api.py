"""``attention()`` and ``attention_backward()``: validation, layout handling and dispatch to a backend."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any, cast

import numpy as np

from . import metadata
from .backends import get_backend
from .kernels import _compile_notice
from .pattern import Pattern
from .per_batch import as_pattern_list, run_per_batch
from .validation import check_lse, prepare

__all__ = ["attention", "attention_backward"]


def _resolve(backend: Any, q: Any) -> tuple[ModuleType, ModuleType]:
    """Backend module and array module; ``"auto"`` is CuPy for GPU arrays, Numba otherwise."""
    if backend == "auto":
        backend = "cupy" if hasattr(q, "__cuda_array_interface__") else "numba"
    module = get_backend(backend)
    return module, (module.array_module() if backend == "cupy" else np)


def _kernel_pattern(pattern: Pattern, form: Any, backend: ModuleType) -> Pattern:
    """The pattern in the form the backend runs (:func:`metadata.kernel_pattern`). ``"auto"``
    derives a block form for the Numba kernels only (the rule was measured on them; the CuPy
    backend keeps the pattern's own form); the oracle's result does not depend on the form."""
    if not isinstance(form, str) or form not in metadata.FORMS:
        raise ValueError(f"form must be one of {metadata.FORMS}, got {form!r}")
    name = backend.__name__.rsplit(".", 1)[-1]
    if name == "oracle" or (form == "auto" and name != "numba"):
        return pattern
    return metadata.kernel_pattern(pattern, form)


@_compile_notice.tells("the forward kernels")
def attention(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern | Sequence[Pattern],
    *,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "numba",
    return_lse: bool = False,
    check_finite: bool = True,
    form: str = "auto",
) -> Any:
    """Sparse attention: each query attends only to the keys its pattern row allows.

    Args:
        q: ``(B, H, n_q, d)``, or ``(H, n_q, d)`` / ``(n_q, d)``; float64/float32 (float16 and
            bfloat16 are computed in float32 on the CPU). Any ``__dlpack__``/``__array__`` object.
        k: ``(B, H_kv, n_k, d)`` of the same rank and dtype; ``H % H_kv == 0`` (GQA/MQA: query head
            ``h`` uses kv head ``h // (H // H_kv)``).
        v: ``(B, H_kv, n_k, d_v)``.
        pattern: a :class:`Pattern` of shape ``(n_q, n_k)`` with 1 or ``H`` heads, or a sequence
            of ``B`` such patterns, one per batch element (4-D inputs; see :mod:`.per_batch`).
        scale: score scale, default ``1/sqrt(d)``, applied in the compute dtype.
        softcap: if set, scores become ``softcap * tanh(s / softcap)``.
        backend: ``"numba"`` (CPU kernels), ``"oracle"`` (exact float64, rounded), ``"cupy"``
            (GPU), or ``"auto"`` (CuPy for GPU arrays, Numba otherwise).
        return_lse: also return ``lse (..., n_q)``, the natural-log logsumexp of the allowed scores
            (float64 for float64 inputs, float32 otherwise; ``-inf`` for rows with no keys).
        check_finite: raise ``ValueError`` on NaN/Inf inputs (default, like SciPy); ``False`` lets
            IEEE semantics run.
        form: which kernels run: ``"auto"`` (a pattern that holds a block form runs the block
            kernels; a token-CSR pattern whose 128-blocks are at least 75% full, or else whose
            64-blocks are at least 12.5% full, runs them on that block form, derived once and
            cached on the pattern; else the token-CSR kernels: :mod:`sparse_ref.metadata`),
            ``"csr"`` or ``"block"``. Each choice is bitwise deterministic; the forms agree to
            rounding.

    Returns:
        ``out (..., n_q, d_v)`` in the input dtype (NumPy on CPU, CuPy on GPU), and ``lse`` if asked.
        Rows with no allowed keys give ``out = 0`` and ``lse = -inf``.

    Example:
        >>> import numpy as np, sparse_ref
        >>> from sparse_ref import patterns
        >>> x = np.ones((4, 2))
        >>> sparse_ref.attention(x, x, np.arange(8.0).reshape(4, 2), patterns.causal(4))[1]
        array([1., 2.])
    """
    if not isinstance(return_lse, bool | np.bool_):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    module, xp = _resolve(backend, q)
    per_batch = as_pattern_list(pattern)
    if per_batch is not None:
        return run_per_batch(
            lambda p, **qkv: attention(
                **qkv, pattern=p, scale=scale, softcap=softcap, backend=backend,
                return_lse=return_lse, check_finite=check_finite, form=form,
            ),
            per_batch, {"q": q, "k": k, "v": v}, xp,
        )  # fmt: skip
    prep = prepare(q, k, v, pattern, scale=scale, softcap=softcap, check_finite=check_finite, xp=xp)
    pattern = _kernel_pattern(cast(Pattern, pattern), form, module)  # one pattern (checked)
    out, lse = module.forward(prep.q, prep.k, prep.v, pattern, prep.scale, prep.softcap)
    out = prep.restore(out)
    return (out, prep.restore(lse)) if return_lse else out


@_compile_notice.tells("the backward kernels")
def attention_backward(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern | Sequence[Pattern],
    dout: Any,
    *,
    out: Any = None,
    lse: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "numba",
    check_finite: bool = True,
    form: str = "auto",
) -> tuple[Any, Any, Any]:
    """Gradients of :func:`attention` with respect to ``q``, ``k`` and ``v``.

    As in FlashAttention-2, probabilities are recomputed, never stored between forward and
    backward; dq is computed over the pattern's rows and dk/dv over its transpose, so there are no
    atomics and the Numba results are bitwise identical for any thread count. Each row's softmax
    statistics and ``delta = sum_j p_ij (dout_i . v_j)`` (``= rowsum(dout * out)``) are re-derived
    from the row's scores rather than read from the forward's ``out``/``lse``, so the gradients do
    not inherit the forward's rounding (see :mod:`sparse_ref.kernels.csr_backward`).

    Args:
        q, k, v, pattern, scale, softcap: as in :func:`attention` (same shapes, dtypes, checks;
            ``pattern`` may be a sequence of patterns, one per batch element).
        dout: gradient of the loss with respect to ``out``, shaped like ``out`` ``(..., n_q, d_v)``,
            same dtype as q.
        out, lse: the forward's results (``attention(..., return_lse=True)``), accepted so that
            FlashAttention-style call sites work unchanged; pass both or neither. They are
            checked (``out`` like ``dout``; ``lse (..., n_q)`` float64 for float64 inputs and
            float32 otherwise, ``-inf`` allowed on rows with no keys) but not needed: both
            backends re-derive what they use.
        backend: ``"numba"`` (CPU kernels), ``"oracle"`` (exact float64, rounded), ``"cupy"``
            (GPU kernels, deterministic too: CuPy arrays in, CuPy arrays out), or ``"auto"``
            (CuPy for GPU arrays, Numba otherwise).
        check_finite: raise ``ValueError`` on NaN/Inf in the inputs (``lse`` may hold ``-inf``).
        form: ``"auto"``, ``"csr"`` or ``"block"``, as in :func:`attention` (same rule, so a
            forward and a backward with the same ``form`` run the same form).

    Returns:
        ``(dq, dk, dv)`` shaped like ``(q, k, v)`` in the input dtype and rank. With GQA, dk/dv of
        a kv head sum over the query heads that share it. Rows with no allowed keys get ``dq = 0``
        and contribute nothing to dk/dv.

    Example:
        >>> import numpy as np, sparse_ref
        >>> from sparse_ref import Pattern
        >>> x = np.eye(2)
        >>> p = Pattern.from_dense(np.eye(2, dtype=bool))
        >>> dq, dk, dv = sparse_ref.attention_backward(x, x, x, p, x)
        >>> dv  # each key is the only key of its row, so dv_j = dout_j
        array([[1., 0.],
               [0., 1.]])
    """
    if (out is None) != (lse is None):
        raise ValueError("pass both out and lse (from attention(..., return_lse=True)), or neither")
    module, xp = _resolve(backend, q)
    per_batch = as_pattern_list(pattern)
    if per_batch is not None:
        return run_per_batch(
            lambda p, **arrays: attention_backward(
                **arrays, pattern=p, scale=scale, softcap=softcap, backend=backend,
                check_finite=check_finite, form=form,
            ),
            per_batch, {"q": q, "k": k, "v": v, "dout": dout, "out": out, "lse": lse}, xp,
        )  # fmt: skip
    extra = {"dout": dout} if out is None else {"dout": dout, "out": out}
    prep = prepare(
        q,
        k,
        v,
        pattern,
        scale=scale,
        softcap=softcap,
        check_finite=check_finite,
        xp=xp,
        extra=extra,
    )
    lse4 = None if lse is None else check_lse(lse, prep, check_finite=check_finite, xp=xp)
    pattern = _kernel_pattern(cast(Pattern, pattern), form, module)  # one pattern (checked)
    dq, dk, dv = module.backward(
        prep.q,
        prep.k,
        prep.v,
        pattern,
        prep.extra["dout"],
        prep.extra.get("out"),
        lse4,
        prep.scale,
        prep.softcap,
    )
    return prep.restore(dq), prep.restore(dk), prep.restore(dv)
