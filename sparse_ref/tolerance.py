"""The tolerance rule, version 3 (DESIGN §9): when does an implementation in dtype ``T`` agree?

For each tensor ``x`` (``out``, ``lse``, ``dq``, ``dk``, ``dv``) an implementation passes when, over
the entries finite in the reference, ``max|x - ref| <= factor * E_T + atol_T``, with NaN and
infinite entries exactly where the reference has them, and:

- ``ref``: the oracle in float64 (in ``numpy.longdouble`` for ``T`` = float64, where that is wider);
- ``E_T``: the worst ``max|f_T - ref|`` over the legitimate formulations ``f`` of
  :mod:`sparse_ref.formulations` run in ``T`` (scale on the scores or on q; P normalised before or
  after P . V; the softmax over the whole row or online over key blocks of 64 or 128 keys, as
  FlashAttention-2 does; ``delta`` from ``P . dP`` or from ``dout . out``; P kept or recomputed
  from lse), every product summed in a fixed order (NumPy's einsum loop, not BLAS, whose
  CPU-dependent kernels would make the stored tolerances depend on the machine);
- ``factor``: 2 for ``out`` and ``lse``, 3 for the gradients (FlashAttention's test rule);
- ``atol_T``: the rounding floor of ``ref`` in ``T`` (:func:`rounding_floor`); for the gradients at
  least :data:`GRADIENT_FLOOR_FACTOR` ``* u_C * M``, where ``u_C`` is the unit roundoff of the
  compute dtype (float32 for float32/float16/bfloat16) and ``M`` the largest single term of the
  gradient's sums (:func:`sparse_ref.formulations.gradient_magnitudes`), so a gradient that is
  exactly 0 (a row with one key) does not collapse the tolerance. docs/conventions.md derives it.

Version 1 (suites written before this module) used the plain oracle run in ``T`` as the only
formulation and no gradient floor; version 2 had the family without the online-softmax
forwards. Suites of every version are read and checked with the tolerances they store;
``golden verify --recompute`` compares the stored tolerances only under the current version.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import formulations, oracle
from .formulations import as_dtype, compute_dtype
from .pattern import Pattern

__all__ = [
    "RULE_VERSION",
    "RULE_TEXT",
    "FORWARD_FACTOR",
    "GRADIENT_FACTOR",
    "GRADIENT_FLOOR_FACTOR",
    "reference_dtype",
    "rounding_floor",
    "baseline_error",
    "rule_tolerance",
    "forward_reference",
    "backward_reference",
    "MismatchError",
    "max_error",
    "assert_matches",
]

RULE_VERSION = 3
FORWARD_FACTOR = 2.0
GRADIENT_FACTOR = 3.0
#: Two roundings (of ``dP`` and of ``delta``), each of size up to ``u_C * M``.
GRADIENT_FLOOR_FACTOR = 2.0

RULE_TEXT = (
    "Tolerance rule v3 (sparse-ref DESIGN section 9, docs/conventions.md). An implementation in dtype "
    "T passes a case if max|x - ref| <= factor * E_T + atol_T for each stored tensor x, where ref "
    "is the stored expected tensor (the oracle in float64, or numpy.longdouble for float64 cases), "
    "E_T the worst max|f_T - ref| over the legitimate formulations f run in T (scale on scores or "
    "on q; P normalised before or after P.V; the softmax over the whole row or online over blocks "
    "of 64 or 128 keys in base 2 (FlashAttention-2); delta = sum(P*dP) or rowsum(dout*out); P kept or "
    "recomputed from lse; products summed in a fixed order, not by BLAS; float16/bfloat16 computed "
    "in float32 and rounded at the inputs, P, dS and "
    "the outputs), factor 2 for out and lse and 3 for dq, dk, dv, atol_T = max(2 * max|(ref + 0.3) "
    "- 0.3 - ref| in T, ulp(0.3 + max|ref|) in T) and, for gradients, at least 2 * u_C * M with u_C "
    "the unit roundoff of the compute dtype and M the largest single term of the gradient's sums, "
    "from the magnitudes entering it. The tolerances field holds the resulting numbers. -inf/NaN entries must match exactly."
)


def reference_dtype(dtype: Any) -> np.dtype:
    """The dtype of the reference that an implementation in ``dtype`` is measured against."""
    if as_dtype(dtype) == np.float64 and np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:
        return np.dtype(np.longdouble)
    return np.dtype(np.float64)


def rounding_floor(ref: np.ndarray, dtype: Any) -> float:
    """The rounding floor: ``2 * max|(ref + 0.3) - 0.3 - ref|`` evaluated in ``dtype``, but never
    below one unit in the last place of ``0.3 + max|ref|`` in ``dtype``.

    FlashAttention's sampled expression estimates the rounding unit at the reference's magnitude;
    over a large tensor it reaches that unit, but over a handful of entries (a one-row case, an
    all-zero gradient) it can fall far below it, or to 0, by luck. The lower bound keeps the floor
    at the value the sample estimates.
    """
    dt = as_dtype(dtype)
    r = np.asarray(ref)[np.isfinite(ref)].astype(dt)
    c = np.asarray(0.3, dtype=dt)
    sampled = float(2 * np.max(np.abs((r + c) - c - r), initial=0))
    unit = float(np.spacing(c + np.max(np.abs(r), initial=0).astype(dt)))
    return max(sampled, unit)


def baseline_error(ref: np.ndarray, candidates: Any) -> float:
    """``max|f - ref|`` over the entries finite in both, worst over the arrays in ``candidates``."""
    ref = np.asarray(ref)
    worst = 0.0
    for cand in candidates:
        arr = np.asarray(cand)
        both = np.isfinite(ref) & np.isfinite(arr)
        if both.any():
            diff = np.abs(arr[both].astype(ref.dtype) - ref[both])
            worst = max(worst, float(np.max(diff)))
    return worst


def rule_tolerance(ref: np.ndarray, naive: Any, dtype: Any, factor: float) -> float:
    """``factor * E + rounding_floor(ref, dtype)``; ``naive`` is one array or a list of them
    (then ``E`` is the worst of their errors, :func:`baseline_error`)."""
    cands = naive if isinstance(naive, list | tuple) else [naive]
    return factor * baseline_error(ref, cands) + rounding_floor(ref, dtype)


Runs = dict[str, list[Any]]  # dtype -> one result tuple per formulation


def _forward_runs(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    scale: float,
    softcap: float | None,
    dtypes: list[str],
    rdt: np.dtype,
    rows: np.ndarray | None,
) -> tuple[tuple[np.ndarray, ...], Runs]:
    """The reference ``(out, lse)`` and, per dtype, every forward formulation's ``(out, lse)``."""
    ref = oracle.forward(q, k, v, pattern, scale, softcap, compute_dtype=rdt, rows=rows)
    masks = formulations.MaskCache(pattern)
    runs = {
        dt: [
            formulations.forward(q, k, v, pattern, scale, softcap, dt, f, rows=rows, masks=masks)
            for f in formulations.FORWARD_FORMULATIONS
        ]
        for dt in dtypes
    }
    return ref, runs


def _backward_runs(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    dout: np.ndarray,
    scale: float,
    softcap: float | None,
    dtypes: list[str],
    rdt: np.dtype,
) -> tuple[tuple[np.ndarray, ...], Runs, dict[str, float]]:
    """The reference ``(dq, dk, dv)``, every backward formulation's per dtype, the magnitudes."""
    ref = oracle.backward(q, k, v, pattern, dout, scale, softcap, compute_dtype=rdt)
    masks = formulations.MaskCache(pattern)
    magnitude = formulations.gradient_magnitudes(
        q, k, v, pattern, dout, scale, softcap, masks=masks
    )
    runs = {
        dt: [
            formulations.backward(q, k, v, pattern, dout, scale, softcap, dt, f, masks=masks)
            for f in formulations.BACKWARD_FORMULATIONS
        ]
        for dt in dtypes
    }
    return ref, runs, magnitude


def _per_batch(run: Any, patterns: list[Pattern], arrays: list[np.ndarray], *rest: Any) -> Any:
    """``run`` on each batch element with its own pattern, results joined along the batch axis
    (magnitudes: the largest over the batch)."""
    parts = [run(*(a[b : b + 1] for a in arrays), p, *rest) for b, p in enumerate(patterns)]

    def join(items: list[Any]) -> Any:
        first = items[0]
        if isinstance(first, np.ndarray):
            return np.concatenate(items, axis=0)
        if isinstance(first, dict) and first and isinstance(next(iter(first.values())), float):
            return {name: max(item[name] for item in items) for name in first}
        if isinstance(first, dict):
            return {key: join([item[key] for item in items]) for key in first}
        return type(first)(join(list(col)) for col in zip(*items, strict=True))

    return join(parts)


def _dtype_names(dtypes: Any) -> list[str]:
    return [as_dtype(d).name for d in ([dtypes] if isinstance(dtypes, str) else dtypes)]


def forward_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern | list[Pattern],
    scale: float,
    softcap: float | None,
    dtypes: Any,
    *,
    ref_dtype: Any = None,
    rows: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Reference ``out``/``lse`` and the rule's tolerances for each implementation dtype.

    ``q, k, v`` are validated 4-D arrays; ``pattern`` is one pattern or a list of ``B`` (one per
    batch element); ``dtypes`` names the implementation dtypes (``"float32"``, ``"bfloat16"``,
    ...); ``ref_dtype`` defaults to :func:`reference_dtype` of the first. Returns
    ``({"out": (B, H, R, d_v), "lse": (B, H, R)}, {dtype: {"out": tol, "lse": tol}})``.
    """
    names = _dtype_names(dtypes)
    rdt = reference_dtype(names[0]) if ref_dtype is None else np.dtype(ref_dtype)
    rest = (scale, softcap, names, rdt, rows)
    if isinstance(pattern, Pattern):
        (out, lse), runs = _forward_runs(q, k, v, pattern, *rest)
    else:
        (out, lse), runs = _per_batch(
            lambda q, k, v, p, *r: _forward_runs(q, k, v, p, *r), pattern, [q, k, v], *rest
        )
    ref = {"out": out, "lse": lse}
    tols = {
        dt: {
            name: rule_tolerance(ref[name], [r[i] for r in runs[dt]], dt, FORWARD_FACTOR)
            for i, name in enumerate(("out", "lse"))
        }
        for dt in names
    }
    return ref, tols


def backward_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern | list[Pattern],
    dout: np.ndarray,
    scale: float,
    softcap: float | None,
    dtypes: Any,
    *,
    ref_dtype: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Reference ``dq, dk, dv`` and the rule's tolerances (factor 3 plus the gradient floor) for
    each implementation dtype; arguments as :func:`forward_reference`."""
    names = _dtype_names(dtypes)
    rdt = reference_dtype(names[0]) if ref_dtype is None else np.dtype(ref_dtype)
    rest = (scale, softcap, names, rdt)
    if isinstance(pattern, Pattern):
        grads, runs, magnitude = _backward_runs(q, k, v, pattern, dout, *rest)
    else:
        grads, runs, magnitude = _per_batch(
            lambda q, k, v, g, p, *r: _backward_runs(q, k, v, p, g, *r),
            pattern,
            [q, k, v, dout],
            *rest,
        )
    ref = dict(zip(("dq", "dk", "dv"), grads, strict=True))
    tols: dict[str, dict[str, float]] = {}
    for dt in names:
        unit = float(np.finfo(compute_dtype(dt)).eps) / 2
        tols[dt] = {}
        for i, name in enumerate(("dq", "dk", "dv")):
            err = baseline_error(ref[name], [r[i] for r in runs[dt]])
            floor = max(
                rounding_floor(ref[name], dt), GRADIENT_FLOOR_FACTOR * unit * magnitude[name]
            )
            tols[dt][name] = GRADIENT_FACTOR * err + floor
    return ref, tols


class MismatchError(AssertionError):
    """A tensor disagrees with its reference. ``kind`` is ``"shape"``, ``"nonfinite"`` (NaN or
    infinite entries where the reference has none, or the other way round) or ``"tolerance"``;
    ``error`` and ``tolerance`` are Python floats (``error`` is NaN unless measured)."""

    def __init__(
        self, name: str, kind: str, message: str, error: float = float("nan"), tol: float = 0.0
    ) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.kind, self.error, self.tolerance = name, kind, error, tol


def _entry(arr: np.ndarray, where: tuple[int, ...]) -> str:
    """An entry as plain text (``-inf``, ``nan``, ``0.25``), never ``np.float32(0.25)``."""
    return repr(float(arr[where]))


def max_error(actual: Any, expected: Any) -> float:
    """``max|actual - expected|`` over the entries finite in ``expected`` (a Python float)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    finite = np.isfinite(expected)
    if not finite.any():
        return 0.0
    ref_dtype = np.result_type(expected.dtype, np.float64)
    diff = np.abs(actual[finite].astype(ref_dtype) - expected[finite].astype(ref_dtype))
    return float(np.max(diff))


def assert_matches(actual: Any, expected: Any, tol: float, name: str = "out") -> float:
    """Assert NaN/±inf positions agree and ``max|actual - expected| <= tol`` elsewhere.

    Returns the measured max error. Raises :class:`MismatchError` (an ``AssertionError``) naming
    ``name`` and both numbers.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    tol = float(tol)
    if actual.shape != expected.shape:
        raise MismatchError(
            name, "shape", f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        )
    if actual.dtype.kind == "V" or actual.dtype.name == "bfloat16":
        actual = actual.astype(np.float32)
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    inf_a, inf_e = np.isinf(actual), np.isinf(expected)
    bad = (nan_a != nan_e) | (inf_a != inf_e) | (inf_a & inf_e & (actual != expected))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN positions differ" if (nan_a != nan_e).any() else "infinite entries differ"
        raise MismatchError(
            name,
            "nonfinite",
            f"{what} ({int(bad.sum())} entries; first at {where}: actual "
            f"{_entry(actual, where)}, expected {_entry(expected, where)})",
            tol=tol,
        )
    err = max_error(actual, expected)
    if not err <= tol:
        raise MismatchError(
            name, "tolerance", f"max error {err:.3e} exceeds tolerance {tol:.3e}", err, tol
        )
    return err
