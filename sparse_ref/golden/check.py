"""Read golden suites and check implementations against them.

``load(DIR)`` yields :class:`Case` objects; ``check(fn, DIR)`` runs ``fn(q, k, v, pattern, *,
scale, softcap)`` on every case and returns a :class:`Report` whose results each carry a
machine-readable ``outcome``; ``verify(DIR)`` re-checks a suite's integrity (and, with
``recompute=True``, its expected tensors against a fresh oracle run).
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import tolerance
from ..formulations import as_dtype
from ..pattern import Pattern
from ..validation import as_cpu_array
from . import store
from .store import GoldenFormatError
from .suites import build_pattern

__all__ = [
    "Case",
    "CaseResult",
    "OUTCOMES",
    "Report",
    "VerifyResult",
    "check",
    "demo",
    "load",
    "load_impl",
    "verify",
]


class Case:
    """One golden case. Tensors are read (and every safety check run) on first access, then cached.

    Attributes (from the manifest): ``id``, ``family``, ``params``, ``dtype`` (of q, k, v, dout),
    ``scale`` (always a float), ``softcap`` (float or None), ``seed``, ``note``, the sizes
    ``batch, heads, kv_heads, n_q, n_k, d, d_v``, ``tolerance`` (``{"out": .., "lse": .., "dq":
    ..}`` for ``dtype``), ``tolerances`` (per implementation dtype), ``has_gradients``, ``entry``
    (the raw manifest entry).

    Tensors: ``q (B, H, n_q, d)``, ``k (B, H_kv, n_k, d)``, ``v (B, H_kv, n_k, d_v)`` in ``dtype``;
    ``pattern`` (a :class:`~sparse_ref.Pattern` rebuilt from the manifest's ``family`` and
    ``params``, so ``pattern.family``/``pattern.params`` name the case's structure, its fingerprint
    checked against the manifest); ``stored_pattern`` (the same structure read from the file's CSR);
    ``expected_out (B, H, R, d_v)``, ``expected_lse (B, H, R)`` in float64 with ``R = n_q``, or the
    sampled ``rows`` for large cases; ``dout``, ``expected_dq``, ``expected_dk``, ``expected_dv``
    (``None`` without gradients).
    """

    def __init__(self, root: Path, entry: dict[str, Any], max_case_bytes: int) -> None:
        self.root = root
        self.entry = entry
        self._max = max_case_bytes
        self._tensors: dict[str, np.ndarray] | None = None
        self._pattern: Any = None
        self._built: Any = None
        e = entry
        self.id: str = e["id"]
        self.family: str = e["family"]
        self.params: dict[str, Any] = e["params"]
        self.dtype: str = e["dtype"]
        self.scale: float = float(e["scale"])
        self.softcap: float | None = None if e["softcap"] is None else float(e["softcap"])
        self.seed: int = e["seed"]
        self.note: str = e["note"]
        self.batch, self.heads, self.kv_heads = e["batch"], e["heads"], e["kv_heads"]
        self.n_q, self.n_k, self.d, self.d_v = e["n_q"], e["n_k"], e["d"], e["d_v"]
        self.has_gradients: bool = e["gradients"]
        self.tolerances: dict[str, dict[str, float]] = e["tolerances"]

    @property
    def tolerance(self) -> dict[str, float]:
        """Tolerances for an implementation in the case's own dtype."""
        return self.tolerances[self.dtype]

    def __repr__(self) -> str:
        return f"Case({self.id!r}, family={self.family!r}, dtype={self.dtype})"

    def __str__(self) -> str:
        return self.id

    # -------------------------------------------------------------------------------- tensors
    def load(self) -> Case:
        """Read and check the case file now (otherwise done on first tensor access)."""
        if self._tensors is None:
            tensors = store.read_case(self.root, self.entry, max_case_bytes=self._max)
            self._pattern = self._rebuild_pattern(tensors)
            self._tensors = tensors
        return self

    def unload(self) -> None:
        """Drop the cached tensors (a later access reads the file again)."""
        self._tensors = None
        self._pattern = None
        self._built = None

    def _rebuild_pattern(self, tensors: dict[str, np.ndarray]) -> Any:
        """The stored structure: a Pattern, or a list of B for a per-batch case."""
        info = self.entry["pattern"]
        shape = (self.n_q, self.n_k)
        if list(shape) != info["shape"]:
            raise GoldenFormatError(f"pattern shape {info['shape']} != (n_q, n_k) {shape}", self.id)
        if "batch" not in info:
            return self._stored_element(tensors, "", info, shape)
        if len(info["batch"]) != self.batch:
            raise GoldenFormatError(
                f"{len(info['batch'])} per-batch patterns for batch size {self.batch}", self.id
            )
        patterns = [
            self._stored_element(tensors, f".b{b}", element, shape)
            for b, element in enumerate(info["batch"])
        ]
        if store.batch_fingerprint(patterns) != info["fingerprint"]:
            raise GoldenFormatError(
                "per-batch pattern fingerprint differs from the manifest", self.id
            )
        if sum(p.nnz for p in patterns) != info["nnz"]:
            raise GoldenFormatError(f"per-batch pattern nnz != manifest {info['nnz']}", self.id)
        return patterns

    def _stored_element(
        self, tensors: dict[str, np.ndarray], tag: str, info: dict[str, Any], shape: tuple[int, int]
    ) -> Pattern:
        heads = []
        for h in range(info["heads"]):
            try:
                heads.append(
                    Pattern.from_csr(
                        (
                            tensors[f"pattern.indptr{tag}.h{h}"],
                            tensors[f"pattern.indices{tag}.h{h}"],
                            shape,
                        )
                    )
                )
            except (KeyError, ValueError, TypeError) as err:
                raise GoldenFormatError(
                    f"stored pattern{tag} head {h} is invalid: {err}", self.id
                ) from None
        pattern = heads[0] if len(heads) == 1 else Pattern.stack(heads)
        if pattern.fingerprint() != info["fingerprint"]:
            raise GoldenFormatError(
                f"pattern{tag} fingerprint {pattern.fingerprint()} != manifest "
                f"{info['fingerprint']}",
                self.id,
            )
        if pattern.nnz != info["nnz"]:
            raise GoldenFormatError(
                f"pattern{tag} nnz {pattern.nnz} != manifest {info['nnz']}", self.id
            )
        if pattern.num_heads not in (1, self.heads):
            raise GoldenFormatError(
                f"pattern{tag} has {pattern.num_heads} heads, q {self.heads}", self.id
            )
        return pattern

    def _get(self, name: str) -> np.ndarray | None:
        self.load()
        assert self._tensors is not None
        return self._tensors.get(name)

    def _need(self, name: str) -> np.ndarray:
        arr = self._get(name)
        assert arr is not None, name
        return arr

    @property
    def q(self) -> np.ndarray:
        return self._need("q")

    @property
    def k(self) -> np.ndarray:
        return self._need("k")

    @property
    def v(self) -> np.ndarray:
        return self._need("v")

    @property
    def dout(self) -> np.ndarray | None:
        return self._get("dout")

    @property
    def stored_pattern(self) -> Any:
        """The pattern read from the case file's CSR (``family == "custom"``; a list of ``B``
        patterns for a per-batch case)."""
        self.load()
        assert self._pattern is not None
        return self._pattern

    @property
    def pattern(self) -> Any:
        """The pattern rebuilt from the manifest's ``family``/``params`` (catalog, composites,
        or data-dependent families from the stored q and k; for family ``batch`` a list of ``B``
        patterns, one per batch element); ``GoldenFormatError`` if this sparse-ref builds a
        structure other than the stored one."""
        if self._built is None:
            stored = self.stored_pattern
            inputs = {"q": self.q, "k": self.k, "v": self.v}
            try:
                built = build_pattern(self.family, self.params, inputs)
            except (ValueError, TypeError, KeyError) as err:
                raise GoldenFormatError(
                    f"cannot rebuild family {self.family!r} from its params: {err}", self.id
                ) from None
            if _fingerprints(built) != _fingerprints(stored):
                raise GoldenFormatError(
                    f"this sparse-ref builds a different pattern for family {self.family!r} and "
                    "these params than the suite stores; regenerate the suite",
                    self.id,
                )
            self._built = built
        return self._built

    @property
    def expected_out(self) -> np.ndarray:
        return self._need("out")

    @property
    def expected_lse(self) -> np.ndarray:
        return self._need("lse")

    @property
    def expected_dq(self) -> np.ndarray | None:
        return self._get("dq")

    @property
    def expected_dk(self) -> np.ndarray | None:
        return self._get("dk")

    @property
    def expected_dv(self) -> np.ndarray | None:
        return self._get("dv")

    @property
    def rows(self) -> np.ndarray | None:
        """Query rows whose outputs are stored (sampled-row cases), else ``None`` (all rows)."""
        return self._get("rows")

    def inputs(self, dtype: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(q, k, v)`` as fresh arrays in ``dtype`` (default: the case dtype; ``"bfloat16"`` gives
        ``ml_dtypes.bfloat16`` arrays)."""
        dt = as_dtype(dtype or self.dtype)
        return self.q.astype(dt), self.k.astype(dt), self.v.astype(dt)

    def select_rows(self, x: Any) -> np.ndarray:
        """The stored rows of a full ``(..., n_q, ...)`` result along the query axis 2."""
        arr = np.asarray(x)
        rows = self.rows
        return arr if rows is None else np.take(arr, rows, axis=2)

    def assert_close(
        self, out: Any, lse: Any = None, *, dtype: Any = None, grads: Any = None
    ) -> dict[str, float]:
        """Assert ``out`` (``(B, H, n_q, d_v)``), optional ``lse`` and ``grads=(dq, dk, dv)`` pass
        the case's tolerances for ``dtype`` (default: the case dtype); returns the max errors."""
        tol = self.tolerances[as_dtype(dtype or self.dtype).name]
        errs = {
            "out": tolerance.assert_matches(
                self.select_rows(out), self.expected_out, tol["out"], f"{self.id}: out"
            )
        }
        if lse is not None:
            errs["lse"] = tolerance.assert_matches(
                self.select_rows(lse), self.expected_lse, tol["lse"], f"{self.id}: lse"
            )
        if grads is not None:
            if not self.has_gradients:
                raise ValueError(f"case {self.id!r} stores no gradients")
            for name, got in zip(("dq", "dk", "dv"), grads, strict=True):
                errs[name] = tolerance.assert_matches(
                    np.asarray(got), self._need(name), tol[name], f"{self.id}: {name}"
                )
        return errs


def _fingerprints(pattern: Any) -> list[str]:
    return [p.fingerprint() for p in (pattern if isinstance(pattern, list) else [pattern])]


def _globs(only: str | Iterable[str] | None) -> list[str] | None:
    if only is None:
        return None
    globs = [only] if isinstance(only, str) else list(only)
    if not globs or not all(isinstance(g, str) for g in globs):
        raise TypeError(f"only must be a glob or a list of globs, got {only!r}")
    return globs


def _select(
    entries: list[dict[str, Any]], only: str | Iterable[str] | None
) -> list[dict[str, Any]]:
    """The entries whose id matches any of the globs ``only`` (all when ``None``)."""
    globs = _globs(only)
    return [
        e for e in entries if globs is None or any(fnmatch.fnmatchcase(e["id"], g) for g in globs)
    ]


def load(
    directory: str | os.PathLike[str],
    *,
    only: str | Iterable[str] | None = None,
    lazy: bool = False,
    max_case_bytes: int = store.DEFAULT_MAX_CASE_BYTES,
) -> Iterator[Case]:
    """Yield the cases of the golden suite in ``directory`` (manifest order).

    The manifest is read and validated at once; each case file is read and checked when the case
    is yielded (``lazy=False``) or on its first tensor access (``lazy=True``). Any problem raises
    :class:`~sparse_ref.golden.store.GoldenFormatError` (a ``ValueError``) naming the case.
    ``only`` is a glob over case ids, or a list of globs (a case matching any is kept).
    """
    root = Path(directory)
    manifest = store.read_manifest(root)
    entries = _select(manifest["cases"], only)

    def gen() -> Iterator[Case]:
        for entry in entries:
            case = Case(root, entry, max_case_bytes)
            yield case if lazy else case.load()

    return gen()


# ------------------------------------------------------------------------------------- check
#: The outcome of one case: ``pass``; the failures ``tolerance`` (an error above its tolerance),
#: ``nonfinite`` (NaN/inf entries where the reference has none, or the other way round), ``shape``,
#: ``error`` (the implementation raised); ``unsupported`` (it raised ``NotImplementedError``: it
#: cannot express the case) and ``skipped`` (the case stores no tolerances for the dtype).
OUTCOMES = ("pass", "tolerance", "nonfinite", "shape", "error", "unsupported", "skipped")
_FAILURES = frozenset({"tolerance", "nonfinite", "shape", "error"})
_SEVERITY = {"shape": 4, "nonfinite": 3, "error": 2, "tolerance": 1}
_OUTCOME_CELL = {
    "pass": "[green]pass[/]",
    "unsupported": "[yellow]unsupported[/]",
    "skipped": "[dim]skip[/]",
}


@dataclass
class CaseResult:
    """Outcome of one case.

    ``outcome`` is one of :data:`OUTCOMES`; ``errors``, ``tolerances`` and ``ratios`` (error /
    tolerance, > 1 fails) hold Python floats per checked tensor (``out``, ``lse``, ``dq``, ``dk``,
    ``dv``); ``message`` says what went wrong, with plain numbers. ``passed`` is False for a failure
    and, under ``require_all``, for an unsupported case.
    """

    id: str
    family: str
    dtype: str
    passed: bool
    errors: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    message: str = ""
    seconds: float = 0.0
    skipped: bool = False
    outcome: str = "pass"
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def worst_ratio(self) -> float:
        """The largest error / tolerance over the checked tensors (0.0 if none was measured)."""
        return max(self.ratios.values(), default=0.0)

    def _fail(self, outcome: str, message: str) -> None:
        if self.outcome not in _FAILURES or _SEVERITY[outcome] > _SEVERITY[self.outcome]:
            self.outcome = outcome
        self.passed = False
        self.message += message if message.endswith(". ") else message + ". "

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the result."""
        return {
            "id": self.id,
            "family": self.family,
            "dtype": self.dtype,
            "outcome": self.outcome,
            "passed": self.passed,
            "errors": self.errors,
            "tolerances": self.tolerances,
            "ratios": self.ratios,
            "message": self.message.strip(),
            "seconds": self.seconds,
        }


@dataclass
class Report:
    """All case results of a ``check`` run; truthy when no case failed (and, with
    ``require_all``, none was unsupported)."""

    directory: str
    impl: str
    dtype: str | None
    results: list[CaseResult]
    require_all: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    def __bool__(self) -> bool:
        return self.passed

    @property
    def skipped(self) -> list[CaseResult]:
        return [r for r in self.results if r.outcome == "skipped"]

    @property
    def unsupported(self) -> list[CaseResult]:
        return [r for r in self.results if r.outcome == "unsupported"]

    def counts(self) -> dict[str, int]:
        """Number of results per outcome (every outcome present, zeros included)."""
        out = dict.fromkeys(OUTCOMES, 0)
        for r in self.results:
            out[r.outcome] += 1
        return out

    def worst(self) -> CaseResult | None:
        """The worst failed case (shape > nonfinite > error > tolerance, then the largest
        ratio), or ``None`` when nothing failed."""
        failed = [r for r in self.results if r.outcome in _FAILURES]
        return max(failed, key=lambda r: (_SEVERITY[r.outcome], r.worst_ratio), default=None)

    def summary(self) -> str:
        c = self.counts()
        failed = sum(c[o] for o in _FAILURES)
        text = f"{c['pass']} passed, {failed} failed"
        if c["unsupported"]:
            text += f", {c['unsupported']} unsupported" + (
                " (counted as failures: require_all)" if self.require_all else ""
            )
        return text + (f", {c['skipped']} skipped" if c["skipped"] else "")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: the run, the counts per outcome and every result."""
        return {
            "directory": self.directory,
            "impl": self.impl,
            "dtype": self.dtype,
            "require_all": self.require_all,
            "passed": self.passed,
            "counts": self.counts(),
            "results": [r.to_json() for r in self.results],
        }

    def table(self) -> Any:
        """A rich ``Table``: case, dtype, max error and tolerance per tensor, the outcome."""
        from rich.table import Table

        names = [
            n for n in ("out", "lse", "dq", "dk", "dv") if any(n in r.errors for r in self.results)
        ]
        table = Table(title=f"golden check: {self.impl} on {self.directory}")
        table.add_column("case")
        table.add_column("dtype")
        for n in names:
            table.add_column(f"{n} err", justify="right")
            table.add_column(f"{n} tol", justify="right")
        table.add_column("result")
        for r in self.results:
            cells = [r.id, r.dtype]
            for n in names:
                err, tol = r.errors.get(n), r.tolerances.get(n)
                bad = err is not None and tol is not None and not err <= tol
                cells.append("" if err is None else (f"[red]{err:.2e}[/]" if bad else f"{err:.2e}"))
                cells.append("" if tol is None else f"{tol:.2e}")
            cells.append(_OUTCOME_CELL.get(r.outcome, f"[red]FAIL {r.outcome}[/]"))
            table.add_row(*cells)
        return table

    def details(self) -> list[str]:
        """One line per failed, unsupported or skipped case: ``id: message``."""
        return [f"{r.id}: {r.message.strip()}" for r in self.results if r.message]


def load_impl(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` (attribute path allowed after the colon) -> the callable."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"impl must look like 'package.module:function', got {spec!r}")
    module_name, attr = spec.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def _takes_case(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` declares a ``case`` keyword parameter (``**kwargs`` does not count)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("case")
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)


def _max_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs error over entries finite in the reference (inf/NaN placement checked separately);
    NaN when the implementation has NaN there."""
    actual = np.asarray(actual)
    if actual.dtype.name == "bfloat16":
        actual = actual.astype(np.float32)
    finite = np.isfinite(expected)
    if not finite.any():
        return 0.0
    diff = np.abs(actual[finite].astype(np.float64) - expected[finite])
    return float(np.max(diff)) if not np.isnan(diff).any() else float("nan")


def _compare(
    case: Case, name: str, got: Any, expected: np.ndarray, tol: float, result: CaseResult
) -> None:
    if hasattr(got, "detach"):  # a torch tensor that may require grad
        got = got.detach()
    arr = as_cpu_array(got, name)  # NumPy, DLPack (torch bfloat16 included) or __array__
    if name in ("out", "lse"):
        arr = case.select_rows(arr)
    result.tolerances[name] = float(tol)
    if arr.shape != expected.shape:
        result._fail(
            "shape", f"{name}: shape {tuple(arr.shape)} != expected {tuple(expected.shape)}"
        )
        return
    err = _max_err(arr, expected)
    result.errors[name] = err
    result.ratios[name] = err / tol if tol > 0 else (0.0 if err == 0 else float("inf"))
    try:
        tolerance.assert_matches(arr, expected, tol, name)
    except tolerance.MismatchError as mismatch:
        result._fail(mismatch.kind, str(mismatch))


def _run_case(
    case: Case,
    want: str,
    fn: Callable[..., Any] | None,
    bw: Callable[..., Any] | None,
    fb: Callable[..., Any] | None,
    result: CaseResult,
) -> None:
    """Run the implementation(s) on one case and compare every returned tensor."""
    tol = case.tolerances[want]
    q, k, v = case.inputs(want)
    pattern = case.pattern
    kwargs: dict[str, Any] = {"scale": case.scale, "softcap": case.softcap}
    grads_wanted = case.has_gradients and (bw is not None or fb is not None)
    dout = np.asarray(case.dout).astype(as_dtype(want)) if case.has_gradients else None
    grads = None
    if fb is not None:
        got = fb(q, k, v, pattern, dout, **kwargs, **_case_kw(fb, case))
        out, lse, *grads = got
    else:
        assert fn is not None
        got = fn(q, k, v, pattern, **kwargs, **_case_kw(fn, case))
        out, lse = got if isinstance(got, tuple) and len(got) == 2 else (got, None)
        if bw is not None and grads_wanted:
            grads = bw(q, k, v, pattern, dout, **kwargs, **_case_kw(bw, case))
    _compare(case, "out", out, case.expected_out, tol["out"], result)
    if lse is not None:
        _compare(case, "lse", lse, case.expected_lse, tol["lse"], result)
    if grads_wanted and grads is not None and any(g is not None for g in grads):
        for name, g in zip(("dq", "dk", "dv"), grads, strict=True):
            _compare(case, name, g, case._need(name), tol[name], result)


def _case_kw(fn: Callable[..., Any], case: Case) -> dict[str, Any]:
    return {"case": case.entry} if _takes_case(fn) else {}


def check(
    fn: Callable[..., Any] | str | None,
    directory: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    backward: Callable[..., Any] | str | None = None,
    forward_backward: Callable[..., Any] | str | None = None,
    only: str | Iterable[str] | None = None,
    require_all: bool = False,
    progress: bool = False,
) -> Report:
    """Run an implementation on every case of the suite in ``directory``.

    ``fn(q, k, v, pattern, *, scale, softcap)`` receives 4-D NumPy arrays ``(B, H, n, d)`` in the
    case dtype (or in ``dtype``: ``"float32"``, ``"float16"``, ``"bfloat16"`` (``ml_dtypes``) for
    cases storing tolerances for it; others are skipped) and returns ``out`` or ``(out, lse)``,
    anything ``numpy.asarray`` accepts. ``pattern`` is rebuilt from the manifest's ``family`` and
    ``params`` (fingerprint checked), so an adapter can map ``pattern.family``/``pattern.params``
    to its own arguments; a callable that declares a ``case`` keyword also gets the manifest
    entry (a dict). ``backward`` is ``bw(q, k, v, pattern, dout, *, scale, softcap) -> (dq, dk,
    dv)``; ``forward_backward`` (instead of ``fn`` and ``backward``) is ``fb(q, k, v, pattern,
    dout, *, scale, softcap) -> (out, lse, dq, dk, dv)`` (``lse`` may be ``None``; ``dout`` is
    ``None`` for cases without gradients, whose returned gradients are ignored). Each may be a
    ``"package.module:function"`` string.

    Raising ``NotImplementedError`` marks the case ``unsupported`` (counted, not failed, unless
    ``require_all``); any other exception fails it (``error``). A broken suite raises
    :class:`~sparse_ref.golden.store.GoldenFormatError`. ``only``: a glob or a list of globs.
    """
    if dtype is not None:
        dtype = _check_dtype_name(dtype)
    if (fn is None) == (forward_backward is None):
        raise ValueError("pass an implementation fn or forward_backward (exactly one)")
    if forward_backward is not None and backward is not None:
        raise ValueError("pass backward or forward_backward, not both")
    named = fn if fn is not None else forward_backward
    impl_name = named if isinstance(named, str) else getattr(named, "__qualname__", repr(named))
    fn = load_impl(fn) if isinstance(fn, str) else fn
    bw = load_impl(backward) if isinstance(backward, str) else backward
    fb = load_impl(forward_backward) if isinstance(forward_backward, str) else forward_backward
    cases = list(load(directory, only=only, lazy=True))
    results: list[CaseResult] = []
    with _progress(progress, len(cases)) as advance:
        for case in cases:
            want = dtype or case.dtype
            result = CaseResult(case.id, case.family, want, passed=True)
            t0 = time.perf_counter()
            if want not in case.tolerances:
                result.message = f"skipped: the case stores no tolerances for {want}"
                result.skipped, result.outcome = True, "skipped"
            else:
                try:
                    _run_case(case, want, fn, bw, fb, result)
                except GoldenFormatError:
                    raise  # a broken suite is not an implementation failure
                except NotImplementedError as err:
                    result.outcome, result.passed = "unsupported", not require_all
                    result.errors, result.ratios, result.tolerances = {}, {}, {}
                    result.message = f"unsupported: {err}" if str(err) else "unsupported"
                except Exception as err:  # noqa: BLE001 - the implementation may raise anything
                    result._fail("error", f"{type(err).__name__}: {err}")
            result.seconds = time.perf_counter() - t0
            case.unload()
            results.append(result)
            advance()
    return Report(str(directory), impl_name, dtype, results, require_all)


def _check_dtype_name(dtype: Any) -> str:
    """``dtype`` as a NumPy floating dtype name (``"float16"``, ...); ``ValueError`` otherwise."""
    try:
        dt = as_dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or (dt.kind != "f" and dt.name != "bfloat16"):
        raise ValueError(
            f"dtype must name a floating dtype (bfloat16, float16, float32, float64), got {dtype!r}"
        )
    return dt.name


class _progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._p: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        self._p = Progress(console=Console(stderr=True), transient=True)
        self._p.__enter__()
        task = self._p.add_task("checking", total=self.total)
        return lambda: self._p.update(task, advance=1)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


# ------------------------------------------------------------------------------------- verify
@dataclass
class VerifyResult:
    """Outcome of verifying one case (``ok``), with a message and, after a recompute, max diffs."""

    id: str
    ok: bool
    message: str = ""
    diffs: dict[str, float] = field(default_factory=dict)


def _recompute(case: Case, same_rule: bool = True) -> tuple[dict[str, float], list[str]]:
    """Regenerate the case from its manifest entry and compare with the stored tensors (and, when
    the suite was written under the current tolerance rule, its tolerances)."""
    from .generate import compute_case

    problems: list[str] = []
    entry = case.entry
    spec = dict(entry)
    try:
        case.pattern  # noqa: B018 - rebuilds the pattern from family/params and checks it
    except GoldenFormatError as err:
        problems.append(f"cannot rebuild the pattern: {err}")
        return {}, problems
    extra = [d for d in entry["tolerances"] if d != entry["dtype"]]
    spec["extra_tolerance_dtypes"] = extra
    meta, data = compute_case(spec)
    if store.sha256_hex(data) == entry["sha256"]:
        return {"bytes": 0.0}, problems
    fresh, _ = store.decode_case(data, case.id)
    diffs: dict[str, float] = {}
    for name, arr in fresh.items():
        stored = case._get(name)
        if stored is None or stored.shape != arr.shape:
            problems.append(f"{name}: missing or reshaped")
            continue
        if name in ("out", "lse", "dq", "dk", "dv"):
            same_inf = np.array_equal(np.isfinite(arr), np.isfinite(stored))
            diff = _max_err(stored, arr)
            diffs[name] = diff
            floor = tolerance.rounding_floor(arr, np.float64)
            bound = 64 * floor + 1e-6 * case.tolerance.get(name, 0.0)
            if not same_inf or not diff <= bound:
                problems.append(f"{name}: recomputed differs by {diff:.3e} (> {bound:.3e})")
        elif not np.array_equal(arr, stored):
            problems.append(f"{name}: regenerated {name} differs from the stored one")
    for key in ("tolerances",) if same_rule else ():
        if meta[key] != entry[key]:
            tol_new, tol_old = meta[key], entry[key]
            for dt, vals in tol_new.items():
                for n, t in vals.items():
                    old = tol_old.get(dt, {}).get(n)
                    if old is None or not abs(t - old) <= 0.01 * max(t, old) + 1e-300:
                        problems.append(f"tolerance {dt}/{n}: recomputed {t:.3e}, stored {old}")
    return diffs, problems


def verify(
    directory: str | os.PathLike[str],
    *,
    recompute: bool = False,
    only: str | Iterable[str] | None = None,
    max_case_bytes: int = store.DEFAULT_MAX_CASE_BYTES,
) -> list[VerifyResult]:
    """Check every case of a suite: manifest schema, paths, sizes, sha256, tensor headers, shapes,
    the stored pattern's fingerprint; with ``recompute`` also regenerate each case (catalog pattern,
    inputs from the seed, oracle outputs) and compare. Raises ``ValueError`` for a bad manifest;
    per-case problems are returned, not raised."""
    root = Path(directory)
    manifest = store.read_manifest(root)
    same_rule = store.rule_version(manifest) == tolerance.RULE_VERSION
    results = []
    for entry in _select(manifest["cases"], only):
        case = Case(root, entry, max_case_bytes)
        try:
            case.load()
            if recompute:
                diffs, problems = _recompute(case, same_rule)
                results.append(VerifyResult(case.id, not problems, "; ".join(problems), diffs))
            else:
                results.append(VerifyResult(case.id, True))
        except ValueError as err:
            results.append(VerifyResult(case.id, False, str(err)))
        finally:
            case.unload()
    if only is None and not manifest["complete"]:
        missing = manifest["planned"] - len(manifest["cases"])
        results.append(
            VerifyResult(
                "<suite>",
                False,
                f"incomplete: {missing} planned case(s) missing; run generate --resume",
            )
        )
    return results


def demo(out_dir: str | os.PathLike[str] = "golden-demo", *, progress: bool = False) -> Report:
    """Write (or finish) the ``smoke`` suite in ``out_dir``; check ``sparse_ref.attention`` on it.

    Idempotent: an existing intact suite is kept (``resume=True``). For ``sparse-ref demo``.
    """
    from .. import attention
    from .generate import generate

    generate("smoke", out_dir, resume=True, progress=progress)
    report = check(attention, out_dir)
    report.impl = "sparse_ref.attention (numba)"
    return report
