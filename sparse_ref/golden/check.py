"""Read golden suites and check implementations against them.

``load(DIR)`` yields :class:`Case` objects; ``check(fn, DIR)`` runs ``fn(q, k, v, pattern, *,
scale, softcap)`` on every case and returns a :class:`Report`; ``verify(DIR)`` re-checks a suite's
integrity (and, with ``recompute=True``, its expected tensors against a fresh oracle run).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import testing
from ..pattern import Pattern
from . import store

__all__ = [
    "Case",
    "CaseResult",
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
    ``pattern`` (a :class:`~sparse_ref.Pattern` rebuilt from the stored CSR, fingerprint checked);
    ``expected_out (B, H, R, d_v)``, ``expected_lse (B, H, R)`` in float64 with ``R = n_q``, or the
    sampled ``rows`` for large cases; ``dout``, ``expected_dq``, ``expected_dk``, ``expected_dv``
    (``None`` without gradients).
    """

    def __init__(self, root: Path, entry: dict[str, Any], max_case_bytes: int) -> None:
        self.root = root
        self.entry = entry
        self._max = max_case_bytes
        self._tensors: dict[str, np.ndarray] | None = None
        self._pattern: Pattern | None = None
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

    def _rebuild_pattern(self, tensors: dict[str, np.ndarray]) -> Pattern:
        info = self.entry["pattern"]
        shape = (self.n_q, self.n_k)
        if list(shape) != info["shape"]:
            raise ValueError(
                f"case {self.id!r}: pattern shape {info['shape']} != (n_q, n_k) {shape}"
            )
        heads = []
        for h in range(info["heads"]):
            try:
                heads.append(
                    Pattern.from_csr(
                        (tensors[f"pattern.indptr.h{h}"], tensors[f"pattern.indices.h{h}"], shape)
                    )
                )
            except (KeyError, ValueError, TypeError) as err:
                raise ValueError(
                    f"case {self.id!r}: stored pattern head {h} is invalid: {err}"
                ) from None
        pattern = heads[0] if len(heads) == 1 else Pattern.stack(heads)
        if pattern.fingerprint() != info["fingerprint"]:
            raise ValueError(
                f"case {self.id!r}: pattern fingerprint {pattern.fingerprint()} != manifest "
                f"{info['fingerprint']}"
            )
        if pattern.nnz != info["nnz"]:
            raise ValueError(
                f"case {self.id!r}: pattern nnz {pattern.nnz} != manifest {info['nnz']}"
            )
        if pattern.num_heads not in (1, self.heads):
            raise ValueError(
                f"case {self.id!r}: pattern has {pattern.num_heads} heads, q {self.heads}"
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
    def pattern(self) -> Pattern:
        self.load()
        assert self._pattern is not None
        return self._pattern

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
        """``(q, k, v)`` as fresh arrays in ``dtype`` (default: the case dtype)."""
        dt = np.dtype(dtype or self.dtype)
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
        tol = self.tolerances[str(np.dtype(dtype or self.dtype))]
        errs = {
            "out": testing.assert_matches(
                self.select_rows(out), self.expected_out, tol["out"], f"{self.id}: out"
            )
        }
        if lse is not None:
            errs["lse"] = testing.assert_matches(
                self.select_rows(lse), self.expected_lse, tol["lse"], f"{self.id}: lse"
            )
        if grads is not None:
            if not self.has_gradients:
                raise ValueError(f"case {self.id!r} stores no gradients")
            for name, got in zip(("dq", "dk", "dv"), grads, strict=True):
                errs[name] = testing.assert_matches(
                    np.asarray(got), self._need(name), tol[name], f"{self.id}: {name}"
                )
        return errs


def _select(entries: list[dict[str, Any]], only: str | None) -> list[dict[str, Any]]:
    return [e for e in entries if only is None or fnmatch.fnmatchcase(e["id"], only)]


def load(
    directory: str | os.PathLike[str],
    *,
    only: str | None = None,
    lazy: bool = False,
    max_case_bytes: int = store.DEFAULT_MAX_CASE_BYTES,
) -> Iterator[Case]:
    """Yield the cases of the golden suite in ``directory`` (manifest order).

    The manifest is read and validated at once; each case file is read and checked when the case
    is yielded (``lazy=False``) or on its first tensor access (``lazy=True``). Any problem raises
    ``ValueError`` naming the case. ``only`` is a glob over case ids.
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
@dataclass
class CaseResult:
    """Outcome of one case: ``errors`` and ``tolerances`` per checked tensor, or the exception."""

    id: str
    family: str
    dtype: str
    passed: bool
    errors: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    message: str = ""
    seconds: float = 0.0
    skipped: bool = False


@dataclass
class Report:
    """All case results of a ``check`` run; truthy when every case passed."""

    directory: str
    impl: str
    dtype: str | None
    results: list[CaseResult]

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
        return [r for r in self.results if r.skipped]

    def summary(self) -> str:
        n_fail, n_skip = len(self.failures), len(self.skipped)
        text = f"{len(self.results) - n_fail - n_skip} passed, {n_fail} failed"
        return text + (f", {n_skip} skipped" if n_skip else "")

    def table(self) -> Any:
        """A rich ``Table``: case, family, dtype, max error and tolerance per tensor, pass/fail."""
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
            cells.append("skip" if r.skipped else "[green]pass[/]" if r.passed else "[red]FAIL[/]")
            table.add_row(*cells)
        return table

    def details(self) -> list[str]:
        """One line per failed or skipped case: ``id: message``."""
        return [f"{r.id}: {r.message}" for r in self.results if r.message]


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


def _max_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs error over entries finite in the reference (inf/NaN placement checked separately)."""
    finite = np.isfinite(expected)
    if not finite.any():
        return 0.0
    diff = np.abs(actual[finite].astype(np.float64) - expected[finite])
    return float(np.max(diff)) if not np.isnan(diff).any() else float("nan")


def _compare(
    case: Case, name: str, got: Any, expected: np.ndarray, tol: float, result: CaseResult
) -> None:
    arr = np.asarray(got)
    if name in ("out", "lse"):
        arr = case.select_rows(arr)
    result.tolerances[name] = tol
    if arr.shape != expected.shape:
        result.passed = False
        result.message += f"{name}: shape {arr.shape} != expected {expected.shape}. "
        return
    result.errors[name] = _max_err(arr, expected)
    try:
        testing.assert_matches(arr, expected, tol, name)
    except AssertionError as err:
        result.passed = False
        result.message += f"{err}. "


def check(
    fn: Callable[..., Any] | str,
    directory: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    backward: Callable[..., Any] | str | None = None,
    only: str | None = None,
    progress: bool = False,
) -> Report:
    """Run implementation ``fn`` on every case of the suite in ``directory``.

    ``fn(q, k, v, pattern, *, scale, softcap)`` receives 4-D NumPy arrays ``(B, H, n, d)`` in the
    case dtype (or in ``dtype``, e.g. ``"float16"``, for cases storing tolerances for it; others are
    skipped) and returns ``out`` or ``(out, lse)``, anything ``numpy.asarray`` accepts.
    ``backward``, if given, is ``bw(q, k, v, pattern, dout, *, scale, softcap) -> (dq, dk, dv)``,
    checked on the cases that store gradients. ``fn`` may also be a ``"package.module:function"``
    string.

    A case passes when every returned tensor is within the stored tolerance (DESIGN §9) and has
    ``-inf``/NaN exactly where the reference does; an exception in ``fn`` fails the case.
    """
    if dtype is not None:
        dtype = _check_dtype_name(dtype)
    impl_name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
    fn = load_impl(fn) if isinstance(fn, str) else fn
    bw = load_impl(backward) if isinstance(backward, str) else backward
    cases = list(load(directory, only=only, lazy=True))
    results: list[CaseResult] = []
    progress_ctx = _progress(progress, len(cases))
    with progress_ctx as advance:
        for case in cases:
            want = dtype or case.dtype
            result = CaseResult(case.id, case.family, want, passed=True)
            t0 = time.perf_counter()
            try:
                if want not in case.tolerances:
                    result.message = f"skipped: the case stores no tolerances for {want}"
                    result.skipped = True
                    results.append(result)
                    advance()
                    continue
                tol = case.tolerances[want]
                q, k, v = case.inputs(want)
                got = fn(q, k, v, case.pattern, scale=case.scale, softcap=case.softcap)
                out, lse = got if isinstance(got, tuple) and len(got) == 2 else (got, None)
                _compare(case, "out", out, case.expected_out, tol["out"], result)
                if lse is not None:
                    _compare(case, "lse", lse, case.expected_lse, tol["lse"], result)
                if bw is not None and case.has_gradients:
                    dout = np.asarray(case.dout).astype(want)
                    grads = bw(q, k, v, case.pattern, dout, scale=case.scale, softcap=case.softcap)
                    for name, g in zip(("dq", "dk", "dv"), grads, strict=True):
                        _compare(case, name, g, case._need(name), tol[name], result)
            except ValueError as err:
                if str(err).startswith(f"case {case.id!r}"):
                    raise  # a broken suite is not an implementation failure
                result.passed = False
                result.message = f"{type(err).__name__}: {err}"
            except Exception as err:  # noqa: BLE001 - the implementation under test may raise anything
                result.passed = False
                result.message = f"{type(err).__name__}: {err}"
            result.seconds = time.perf_counter() - t0
            case.unload()
            results.append(result)
            advance()
    return Report(str(directory), impl_name, dtype, results)


def _check_dtype_name(dtype: Any) -> str:
    """``dtype`` as a NumPy floating dtype name (``"float16"``, ...); ``ValueError`` otherwise."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise ValueError(
            f"dtype must name a floating dtype (float16, float32, float64), got {dtype!r}"
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


def _recompute(case: Case) -> tuple[dict[str, float], list[str]]:
    """Regenerate the case from its manifest entry and compare with the stored tensors."""
    from .generate import compute_case
    from .suites import build_pattern, catalog_families, spec_families

    problems: list[str] = []
    entry = case.entry
    have = catalog_families()
    needed = spec_families(case.family, case.params)
    spec = dict(entry)
    if not needed <= have:
        problems.append(f"cannot rebuild: catalog lacks {sorted(needed - have)}")
        return {}, problems
    pattern = build_pattern(case.family, case.params, {"q": case.q, "k": case.k, "v": case.v})
    if pattern.fingerprint() != entry["pattern"]["fingerprint"]:
        problems.append("the catalog now builds a different pattern for these params")
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
            floor = testing.rounding_floor(arr, np.float64)
            bound = 64 * floor + 1e-6 * case.tolerance.get(name, 0.0)
            if not same_inf or not diff <= bound:
                problems.append(f"{name}: recomputed differs by {diff:.3e} (> {bound:.3e})")
        elif not np.array_equal(arr, stored):
            problems.append(f"{name}: regenerated {name} differs from the stored one")
    for key in ("tolerances",):
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
    only: str | None = None,
    max_case_bytes: int = store.DEFAULT_MAX_CASE_BYTES,
) -> list[VerifyResult]:
    """Check every case of a suite: manifest schema, paths, sizes, sha256, tensor headers, shapes,
    the stored pattern's fingerprint; with ``recompute`` also regenerate each case (catalog pattern,
    inputs from the seed, oracle outputs) and compare. Raises ``ValueError`` for a bad manifest;
    per-case problems are returned, not raised."""
    root = Path(directory)
    manifest = store.read_manifest(root)
    results = []
    for entry in _select(manifest["cases"], only):
        case = Case(root, entry, max_case_bytes)
        try:
            case.load()
            if recompute:
                diffs, problems = _recompute(case)
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
