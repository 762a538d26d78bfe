"""The tolerance rule (DESIGN §9) and assertions for testing any implementation against the oracle.

An implementation working in dtype ``T`` passes when, over the finite entries,

    max|out - ref| <= factor * max|naive_T - ref| + atol_T

where ``ref`` is the oracle in float64, ``naive_T`` the oracle run with ``compute_dtype=T`` (the
FlashAttention test rule), ``atol_T = 2 * max|(ref + 0.3) - 0.3 - ref|`` evaluated in ``T`` (a
rounding floor, held at least at one ulp of ``0.3 + max|ref|``: see :func:`rounding_floor`), ``factor = 2`` for outputs and lse and 3 for gradients. NaN and infinite entries must
sit exactly where the reference has them.

For ``T = float64`` the float64 oracle *is* the naive computation, so the rule is applied one level
up: ``ref`` is the oracle in ``np.longdouble`` (80-bit on x86-64 Linux) and ``naive_T`` the float64
oracle. Where ``longdouble`` is no wider than float64 the reference is float64 and only the rounding
floor remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import oracle
from .pattern import Pattern
from .validation import prepare

__all__ = [
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

FORWARD_FACTOR = 2.0
GRADIENT_FACTOR = 3.0


def reference_dtype(dtype: Any) -> np.dtype:
    """The dtype of the reference that an implementation in ``dtype`` is measured against."""
    if np.dtype(dtype) == np.float64 and np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:
        return np.dtype(np.longdouble)
    return np.dtype(np.float64)


def rounding_floor(ref: np.ndarray, dtype: Any) -> float:
    """The rounding floor ``atol_T``: ``2 * max|(ref + 0.3) - 0.3 - ref|`` evaluated in ``dtype``,
    but never below one unit in the last place of ``0.3 + max|ref|`` in ``dtype``.

    FlashAttention's sampled expression estimates the rounding unit at the reference's magnitude;
    over a large tensor it reaches that unit, but over a handful of entries (a one-row case, an
    all-zero gradient) it can fall far below it, or to 0, by luck. The lower bound keeps the floor
    at the value the sample estimates.
    """
    r = np.asarray(ref)[np.isfinite(ref)].astype(dtype)
    c = np.asarray(0.3, dtype=dtype)
    sampled = float(2 * np.max(np.abs((r + c) - c - r), initial=0))
    unit = float(np.spacing(c + np.max(np.abs(r), initial=0).astype(dtype)))
    return max(sampled, unit)


def rule_tolerance(ref: np.ndarray, naive: np.ndarray, dtype: Any, factor: float) -> float:
    """``factor * max|naive - ref| + rounding_floor(ref, dtype)`` over entries finite in both."""
    ref = np.asarray(ref)
    naive = np.asarray(naive)
    both = np.isfinite(ref) & np.isfinite(naive)
    naive_err = (
        float(np.max(np.abs(naive[both].astype(ref.dtype) - ref[both]))) if both.any() else 0.0
    )
    return factor * naive_err + rounding_floor(ref, dtype)


def assert_matches(actual: Any, expected: Any, tol: float, name: str = "out") -> float:
    """Assert NaN/±inf positions agree and ``max|actual - expected| <= tol`` elsewhere.

    Returns the measured max error. Raises ``AssertionError`` naming ``name`` and both numbers.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if not np.array_equal(nan_a, nan_e):
        where = np.argwhere(nan_a != nan_e)[0]
        raise AssertionError(
            f"{name}: NaN positions differ (first at {tuple(where)}: actual {actual[tuple(where)]}, "
            f"expected {expected[tuple(where)]})"
        )
    inf_a, inf_e = np.isinf(actual), np.isinf(expected)
    if not np.array_equal(inf_a, inf_e) or not np.array_equal(actual[inf_a], expected[inf_e]):
        where = np.argwhere((inf_a != inf_e) | (inf_a & (actual != expected)))[0]
        raise AssertionError(
            f"{name}: infinite entries differ (first at {tuple(where)}: actual "
            f"{actual[tuple(where)]}, expected {expected[tuple(where)]})"
        )
    finite = np.isfinite(expected)
    ref_dtype = np.result_type(expected.dtype, np.float64)
    err = (
        float(np.max(np.abs(actual[finite].astype(ref_dtype) - expected[finite].astype(ref_dtype))))
        if finite.any()
        else 0.0
    )
    if not err <= tol:
        raise AssertionError(f"{name}: max error {err:.3e} exceeds tolerance {tol:.3e}")
    return err


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
    factor: float = FORWARD_FACTOR,
) -> Tolerance:
    """Reference ``out``/``lse`` (in the caller's rank) and the rule's tolerances for ``dtype``."""
    prep = prepare(q, k, v, pattern, scale=scale, softcap=softcap, check_finite=False)
    args = (prep.q, prep.k, prep.v, pattern, prep.scale, prep.softcap)
    ref_out, ref_lse = oracle.forward(*args, compute_dtype=reference_dtype(dtype))
    naive_out, naive_lse = oracle.forward(*args, compute_dtype=dtype)
    return Tolerance(
        out=prep.restore(ref_out),
        lse=prep.restore(ref_lse),
        out_tol=rule_tolerance(ref_out, naive_out, dtype, factor),
        lse_tol=rule_tolerance(ref_lse, naive_lse, dtype, factor),
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


def golden_cases(directory: Any, *, only: str | None = None) -> list[Any]:
    """The cases of a golden suite, for ``pytest.mark.parametrize`` (one test per case, by id).

    Each item is a ``pytest.param`` wrapping a :class:`sparse_ref.golden.Case` (a plain ``Case``
    when pytest is not installed); tensors are read and checked when the test first touches them.
    ``only`` is a glob over case ids.

    Example::

        @pytest.mark.parametrize("case", testing.golden_cases("golden-smoke"))
        def test_my_kernel(case):
            out = my_attention(case.q, case.k, case.v, case.pattern,
                               scale=case.scale, softcap=case.softcap)
            case.assert_close(out)
    """
    from .golden import load

    cases = list(load(directory, only=only, lazy=True))
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
    factor: float = GRADIENT_FACTOR,
) -> GradTolerance:
    """Reference gradients and the rule's tolerances (factor 3) for an implementation in ``dtype``."""
    prep = prepare(
        q, k, v, pattern, scale=scale, softcap=softcap, check_finite=False, extra={"dout": dout}
    )
    args = (prep.q, prep.k, prep.v, pattern, prep.extra["dout"], prep.scale, prep.softcap)
    ref = oracle.backward(*args, compute_dtype=reference_dtype(dtype))
    naive = oracle.backward(*args, compute_dtype=dtype)
    return GradTolerance(
        grads=tuple(prep.restore(r) for r in ref),  # type: ignore[arg-type]
        tols=tuple(rule_tolerance(r, n, dtype, factor) for r, n in zip(ref, naive)),  # type: ignore[arg-type]
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
