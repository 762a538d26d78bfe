"""Assertions for testing any implementation against the oracle by the tolerance rule (DESIGN §9).

The rule itself lives in :mod:`sparse_ref.tolerance`: an implementation working in dtype
``T`` passes when, over the finite entries, ``max|x - ref| <= factor * E_T + atol_T`` with ``ref``
the float64 oracle (``numpy.longdouble`` for ``T`` = float64), ``E_T`` the worst error of the
legitimate same-precision formulations of :mod:`sparse_ref.formulations` run in ``T``, ``factor``
2 for ``out``/``lse`` and 3 for gradients, and ``atol_T`` a rounding floor (for gradients at least
the floor derived from the magnitudes entering each product). NaN and infinite entries must sit
exactly where the reference has them. ``T`` may be float64, float32, float16 or bfloat16
(``ml_dtypes.bfloat16`` arrays, or any array a DLPack/``__array__`` reader gives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import golden
from .formulations import as_dtype
from .pattern import Pattern
from .tolerance import (
    FORWARD_FACTOR,
    GRADIENT_FACTOR,
    MismatchError,
    assert_matches,
    backward_reference,
    forward_reference,
    reference_dtype,
    rounding_floor,
    rule_tolerance,
)
from .validation import prepare

__all__ = [
    "FORWARD_FACTOR",
    "GRADIENT_FACTOR",
    "MismatchError",
    "Tolerance",
    "reference_dtype",
    "rounding_floor",
    "rule_tolerance",
    "assert_matches",
    "oracle_reference",
    "assert_close_to_oracle",
    "GradTolerance",
    "oracle_grad_reference",
    "assert_grads_close_to_oracle",
    "golden_cases",
]


@dataclass(frozen=True)
class Tolerance:
    """Reference outputs and the tolerances that the rule gives for them."""

    out: np.ndarray
    lse: np.ndarray
    out_tol: float
    lse_tol: float


def oracle_reference(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    *,
    dtype: Any,
    scale: float | None = None,
    softcap: float | None = None,
) -> Tolerance:
    """Reference ``out``/``lse`` (in the caller's rank) and the rule's tolerances for ``dtype``."""
    prep = prepare(q, k, v, pattern, scale=scale, softcap=softcap, check_finite=False)
    ref, tols = forward_reference(
        prep.q, prep.k, prep.v, pattern, prep.scale, prep.softcap, [as_dtype(dtype).name]
    )
    tol = next(iter(tols.values()))
    return Tolerance(
        out=prep.restore(ref["out"]),
        lse=prep.restore(ref["lse"]),
        out_tol=tol["out"],
        lse_tol=tol["lse"],
    )


def assert_close_to_oracle(
    out: Any,
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    *,
    lse: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
    dtype: Any = None,
) -> tuple[float, float | None]:
    """Assert ``out`` (and ``lse`` if given) pass the tolerance rule; returns the max errors.

    ``dtype`` is the implementation's dtype ``T`` (default: ``out``'s dtype).

    Example:
        >>> import numpy as np, sparse_ref
        >>> from sparse_ref import patterns
        >>> rng = np.random.default_rng(0)
        >>> q, k, v = (rng.standard_normal((8, 4)).astype(np.float32) for _ in range(3))
        >>> p = patterns.causal(8)
        >>> errs = assert_close_to_oracle(sparse_ref.attention(q, k, v, p), q, k, v, p)
    """
    out = np.asarray(out)
    dtype = np.dtype(out.dtype if dtype is None else dtype)
    ref = oracle_reference(q, k, v, pattern, dtype=dtype, scale=scale, softcap=softcap)
    out_err = assert_matches(out, ref.out, ref.out_tol, "out")
    lse_err = None if lse is None else assert_matches(np.asarray(lse), ref.lse, ref.lse_tol, "lse")
    return out_err, lse_err


def golden_cases(directory: Any, *, only: str | list[str] | None = None) -> list[Any]:
    """The cases of a golden suite, for ``pytest.mark.parametrize`` (one test per case, by id).

    Each item is a ``pytest.param`` wrapping a :class:`sparse_ref.golden.Case` (a plain ``Case``
    when pytest is not installed); tensors are read and checked when the test first touches them.
    ``only`` is a glob over case ids, or a list of globs.

    Example::

        @pytest.mark.parametrize("case", testing.golden_cases("golden-smoke"))
        def test_my_kernel(case):
            out = my_attention(case.q, case.k, case.v, case.pattern,
                               scale=case.scale, softcap=case.softcap)
            case.assert_close(out)
    """
    cases = list(golden.load(directory, only=only, lazy=True))
    try:
        import pytest
    except ImportError:
        return cases
    return [pytest.param(case, id=case.id) for case in cases]


@dataclass(frozen=True)
class GradTolerance:
    """Reference gradients ``(dq, dk, dv)`` (caller's rank) and the rule's tolerance for each."""

    grads: tuple[np.ndarray, np.ndarray, np.ndarray]
    tols: tuple[float, float, float]


def oracle_grad_reference(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    dout: Any,
    *,
    dtype: Any,
    scale: float | None = None,
    softcap: float | None = None,
) -> GradTolerance:
    """Reference gradients and the rule's tolerances (factor 3, gradient floor) for ``dtype``."""
    prep = prepare(
        q, k, v, pattern, scale=scale, softcap=softcap, check_finite=False, extra={"dout": dout}
    )
    args = (prep.q, prep.k, prep.v, pattern, prep.extra["dout"], prep.scale, prep.softcap)
    ref, tols = backward_reference(*args, [as_dtype(dtype).name])
    tol = next(iter(tols.values()))
    return GradTolerance(
        grads=(prep.restore(ref["dq"]), prep.restore(ref["dk"]), prep.restore(ref["dv"])),
        tols=(tol["dq"], tol["dk"], tol["dv"]),
    )


def assert_grads_close_to_oracle(
    grads: Any,
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern,
    dout: Any,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    dtype: Any = None,
) -> tuple[float, float, float]:
    """Assert ``grads = (dq, dk, dv)`` pass the tolerance rule with factor 3; return the max errors.

    ``dtype`` is the implementation's dtype ``T`` (default: ``dq``'s dtype).

    Example:
        >>> import numpy as np, sparse_ref
        >>> from sparse_ref import Pattern
        >>> rng = np.random.default_rng(0)
        >>> q, k, v, g = (rng.standard_normal((8, 4)).astype(np.float32) for _ in range(4))
        >>> p = Pattern.from_dense(np.tril(np.ones((8, 8), dtype=bool)))
        >>> grads = sparse_ref.attention_backward(q, k, v, p, g)
        >>> errs = assert_grads_close_to_oracle(grads, q, k, v, p, g)
    """
    dq, dk, dv = (np.asarray(g) for g in grads)
    dtype = np.dtype(dq.dtype if dtype is None else dtype)
    ref = oracle_grad_reference(q, k, v, pattern, dout, dtype=dtype, scale=scale, softcap=softcap)
    return tuple(  # type: ignore[return-value]
        assert_matches(got, want, tol, name)
        for got, want, tol, name in zip((dq, dk, dv), ref.grads, ref.tols, ("dq", "dk", "dv"))
    )
