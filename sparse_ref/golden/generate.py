"""Generate a golden suite: expected outputs from the float64 oracle, one atomic file per case.

``generate(suite, out_dir)`` computes each case (:func:`compute_case`, a pure function of the
:class:`~sparse_ref.golden.suites.CaseSpec`), writes ``cases/<id>.safetensors`` atomically and
rewrites ``manifest.json`` atomically after every case, so a killed run loses nothing already
written.
``resume=True`` keeps every case whose file is intact (size and sha256 as recorded, or, for a file
written just before a kill, a valid file whose embedded description equals the planned case).

Cases run in this process, or as tasks on a dask.distributed cluster (``workers=N`` starts a
``LocalCluster`` of N single-threaded worker processes; ``scheduler=ADDRESS`` joins a running one).
Workers return the file bytes; only this process writes, so workers need no shared filesystem.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import tolerance
from ..kernels._blas_threads import single_threaded_blas
from ..validation import prepare
from . import store
from .suites import CaseSpec, Suite, build_pattern, build_suite, pattern_shape

__all__ = ["generate", "compute_case", "make_inputs", "tolerance_dtypes", "GenerateResult"]

#: The rule that computed the stored tolerances (``tolerance_rule`` in the manifest).
TOLERANCE_RULE = {"version": tolerance.RULE_VERSION, "text": tolerance.RULE_TEXT}

#: Implementation dtypes whose tolerances every case stores, beside its own dtype.
_LOWER_DTYPES = {"float64": ("float32", "float16", "bfloat16"), "float32": ("float16", "bfloat16")}


# ------------------------------------------------------------------------------------ inputs
def _round_to_bf16_grid(x: np.ndarray) -> np.ndarray:
    """float32 values exactly representable in bfloat16 and in float16 (round to nearest even).

    Keeps 8 significant bits (bfloat16) and flushes magnitudes below 2**-14 (float16's smallest
    normal) to zero, so the value survives a cast to either half type unchanged.
    """
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(
        0xFFFF0000
    )
    out = rounded.view(np.float32)
    out[np.abs(out) < np.float32(2.0**-14)] = 0
    return out


def make_inputs(spec: CaseSpec, n_q: int, n_k: int) -> dict[str, np.ndarray]:
    """``q, k, v, dout`` of a case (see :class:`CaseSpec` for the distribution)."""
    rng = np.random.default_rng(spec.seed)
    d_v = spec.d if spec.d_v is None else spec.d_v
    shapes: dict[str, tuple[int, ...]] = {
        "q": (spec.batch, spec.heads, n_q, spec.d),
        "k": (spec.batch, spec.kv_heads, n_k, spec.d),
        "v": (spec.batch, spec.kv_heads, n_k, d_v),
        "dout": (spec.batch, spec.heads, n_q, d_v),
    }
    out = {}
    for name, shape in shapes.items():
        x = rng.standard_normal(shape) * spec.input_std
        out[name] = _round_to_bf16_grid(x) if spec.dtype == "float32" else x
    return out


def sample_rows(spec: CaseSpec, n_q: int) -> np.ndarray:
    """Sorted distinct query rows for a sampled-row case: the first 8, the last 8, random others."""
    count = min(spec.rows or n_q, n_q)
    rng = np.random.default_rng([spec.seed, 1])
    fixed = np.unique(np.r_[np.arange(min(8, n_q)), np.arange(max(0, n_q - 8), n_q)])
    rest = np.setdiff1d(np.arange(n_q), fixed)
    extra = rng.choice(rest, size=max(0, min(count - len(fixed), len(rest))), replace=False)
    return np.sort(np.r_[fixed, extra][:count]).astype(np.int64)


# ------------------------------------------------------------------------------------ one case
def tolerance_dtypes(spec: CaseSpec) -> list[str]:
    """The implementation dtypes a case stores tolerances for: its own first, then every lower
    precision (float32, float16, bfloat16) and any the spec adds."""
    extra = [d for d in spec.extra_tolerance_dtypes if d not in _LOWER_DTYPES[spec.dtype]]
    return [spec.dtype, *_LOWER_DTYPES[spec.dtype], *[d for d in extra if d != spec.dtype]]


def _compute(
    spec: CaseSpec,
    inputs: dict[str, np.ndarray],
    pattern: Any,
    rows: np.ndarray | None,
    gradients: bool,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Reference tensors (in the case's reference dtype) and the rule's tolerances per dtype."""
    dt = np.dtype(spec.dtype)
    q, k, v = (inputs[n].astype(dt) for n in ("q", "k", "v"))
    first = pattern[0] if isinstance(pattern, list) else pattern  # per-batch: one shape
    prep = prepare(
        q, k, v, first, scale=spec.resolved_scale(), softcap=spec.softcap, check_finite=False
    )
    args = (prep.q, prep.k, prep.v, pattern)
    dtypes = tolerance_dtypes(spec)
    ref, tols = tolerance.forward_reference(*args, prep.scale, prep.softcap, dtypes, rows=rows)
    if gradients:
        dout = inputs["dout"].astype(dt)
        grads, grad_tols = tolerance.backward_reference(
            *args, dout, prep.scale, prep.softcap, dtypes
        )
        ref.update(grads)
        for name, tol in tols.items():
            tol.update(grad_tols[name])
    return ref, tols


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread: OpenBLAS/MKL round differently with different thread counts, and
    a dask worker (one thread) must produce the same bytes as a run in this process. The kernels'
    limit, shared by all threads: threadpoolctl's own, taken per dask worker thread, let the second
    of two overlapping threads run on two BLAS threads, and left the process on one after them."""
    try:
        import threadpoolctl  # noqa: F401  (without it only OpenBLAS is limited)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        warnings.warn(
            "threadpoolctl is not installed: golden case bytes may depend on the BLAS thread count",
            RuntimeWarning,
            stacklevel=3,
        )
    with single_threaded_blas():
        yield


def compute_case(spec_json: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Compute one case: ``(entry, file_bytes)``; ``entry`` lacks ``sha256`` and ``bytes``.

    A pure function of the spec (plus the installed library and the BLAS build), run in a worker
    process or here, with BLAS on one thread so the bytes do not depend on where it runs.
    """
    with _single_threaded_blas():
        return _compute_case(spec_json)


def _compute_case(spec_json: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    spec = CaseSpec.from_json(spec_json)
    shape = pattern_shape(spec.family, spec.params)
    if shape is not None:  # data-dependent: the pattern is computed from the inputs
        inputs = make_inputs(spec, *shape)
        pattern = build_pattern(spec.family, spec.params, inputs)
    else:
        pattern = build_pattern(spec.family, spec.params)
        first = pattern[0] if isinstance(pattern, list) else pattern
        inputs = make_inputs(spec, *first.shape)
    per_batch = isinstance(pattern, list)
    if per_batch and len(pattern) != spec.batch:
        raise ValueError(
            f"case {spec.id!r}: {len(pattern)} per-batch patterns for batch size {spec.batch}"
        )
    elements = pattern if per_batch else [pattern]
    n_q, n_k = elements[0].shape
    for p in elements:
        if p.num_heads not in (1, spec.heads):
            raise ValueError(
                f"case {spec.id!r}: pattern has {p.num_heads} heads, the case {spec.heads}"
            )
    rows = sample_rows(spec, n_q) if spec.rows is not None else None
    gradients = spec.gradients and rows is None
    ref, tolerances = _compute(spec, inputs, pattern, rows, gradients)

    dt = np.dtype(spec.dtype)
    tensors: dict[str, np.ndarray] = {
        "q": inputs["q"].astype(dt),
        "k": inputs["k"].astype(dt),
        "v": inputs["v"].astype(dt),
    }
    if gradients:
        tensors["dout"] = inputs["dout"].astype(dt)
    for name, arr in ref.items():
        tensors[name] = np.asarray(arr).astype(np.float64)
    if rows is not None:
        tensors["rows"] = rows
    for b, p in enumerate(elements):
        tag = f".b{b}" if per_batch else ""
        for h in range(p.num_heads):
            csr = p.to_csr(h)
            tensors[f"pattern.indptr{tag}.h{h}"] = np.asarray(csr.indptr)
            tensors[f"pattern.indices{tag}.h{h}"] = np.asarray(csr.indices)
    index_dtype = np.result_type(
        *(arr for name, arr in tensors.items() if name.startswith("pattern.indices"))
    )
    info: dict[str, Any] = {
        "fingerprint": store.batch_fingerprint(pattern) if per_batch else pattern.fingerprint(),
        "heads": max(p.num_heads for p in elements),
        "nnz": sum(p.nnz for p in elements),
        "shape": [n_q, n_k],
        "index_dtype": np.dtype(index_dtype).name,
    }
    if per_batch:
        info["batch"] = [
            {"fingerprint": p.fingerprint(), "heads": p.num_heads, "nnz": p.nnz} for p in elements
        ]

    meta = spec.to_json()
    del meta["extra_tolerance_dtypes"]
    meta.update(
        file=store.case_relpath(spec.id),
        n_q=n_q,
        n_k=n_k,
        scale=spec.resolved_scale(),
        input_rounding=spec.input_rounding,
        gradients=gradients,
        pattern=info,
        shapes={name: list(arr.shape) for name, arr in tensors.items()},
        tensor_dtypes={name: store.tensor_dtype_name(arr) for name, arr in tensors.items()},
        tolerances=tolerances,
        reference_dtype="longdouble"
        if tolerance.reference_dtype(spec.dtype) != np.float64
        else "float64",
    )
    return meta, store.encode_case(tensors, meta)


def spec_of_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest entry that identifies the case: compared on ``--resume``."""
    keys = (
        "id",
        "family",
        "params",
        "dtype",
        "batch",
        "heads",
        "kv_heads",
        "d",
        "d_v",
        "scale",
        "softcap",
        "seed",
        "input_std",
        "rows",
        "gradients",
        "note",
    )
    out = {k: entry.get(k) for k in keys}
    out["tolerance_dtypes"] = sorted(entry.get("tolerances", {}))
    return out


def _planned_spec(spec: CaseSpec) -> dict[str, Any]:
    data = spec.to_json()
    data["scale"] = spec.resolved_scale()
    data["gradients"] = spec.gradients and spec.rows is None
    data["tolerances"] = dict.fromkeys(tolerance_dtypes(spec))
    return spec_of_entry(data)


# ------------------------------------------------------------------------------------ the suite
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "scipy", "safetensors", "numba", "threadpoolctl"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is just not recorded
            pass
    return out


def _blas() -> str:
    """The BLAS that computed the references (its build and CPU kernels decide the last bits)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return "unknown"
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return (
        "; ".join(
            f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
            for i in libs
        )
        or "unknown"
    )


def _manifest(suite: Suite, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from .. import __version__

    cases = [entries[c.id] for c in suite.cases if c.id in entries]
    return {
        "schema_version": store.SCHEMA_VERSION,
        "format": "sparse-ref-golden",
        "suite": suite.name,
        "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "library": {"name": "sparse-ref", "version": __version__},
        "dependencies": _versions(),
        "platform": {
            "system": platform.system(),
            "machine": platform.machine(),
            "longdouble_eps": float(np.finfo(np.longdouble).eps),
            "blas": _blas(),
        },
        "tolerance_rule": TOLERANCE_RULE,
        "complete": len(cases) == len(suite.cases),
        "planned": len(suite.cases),
        "skipped": list(suite.skipped),
        "cases": cases,
    }


@dataclass
class GenerateResult:
    """What ``generate`` did: the suite directory, cases computed and kept, seconds, total bytes."""

    out_dir: Path
    suite: str
    computed: list[str]
    kept: list[str]
    skipped: list[dict[str, str]]
    seconds: float
    bytes: int

    @property
    def cases(self) -> int:
        return len(self.computed) + len(self.kept)


def _existing_entry(
    root: Path, spec: CaseSpec, planned: dict[str, Any], old: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The intact existing entry of a planned case, or ``None`` when it must be (re)computed."""
    entry = old.get(spec.id)
    if entry is not None and spec_of_entry(entry) == planned:
        try:
            store.read_case_bytes(root, entry)
            return entry
        except ValueError:
            return None
    # written just before a kill, not yet in the manifest: accept a valid file describing this case
    path = root / store.case_relpath(spec.id)
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = path.read_bytes()
        _, metadata = store.decode_case(data, spec.id)
        meta = json.loads(metadata[store.METADATA_KEY])
        if spec_of_entry(meta) != planned:
            return None
        entry = dict(meta, sha256=store.sha256_hex(data), bytes=len(data))
        store.read_case(root, entry)
        return entry
    except (ValueError, KeyError, OSError):
        return None


def _resolve_suite(suite: str | Suite, dtypes: Any, only: str | list[str] | None) -> Suite:
    s = build_suite(suite) if isinstance(suite, str) else suite
    if not isinstance(s, Suite):
        raise TypeError(f"suite must be a suite name or a golden.Suite, got {type(suite).__name__}")
    if dtypes is not None or only is not None:
        s = s.select(dtypes=[dtypes] if isinstance(dtypes, str) else dtypes, only=only)
    return s


def _local_results(specs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bytes]]:
    for spec in specs:
        yield compute_case(spec)


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError(
            "--workers/--scheduler need dask.distributed: pip install 'sparse-ref[dask]'"
        ) from None


def _dask_results(
    specs: list[dict[str, Any]], workers: int | None, scheduler: str | None
) -> Iterator[tuple[dict[str, Any], bytes]]:
    _require_dask()
    import logging

    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is not None:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=int(workers or 1),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    try:
        futures = [
            client.submit(compute_case, spec, key=f"sparse-ref-golden-{spec['id']}", pure=False)
            for spec in specs
        ]
        for future in as_completed(futures):
            result = future.result()
            future.release()
            yield result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def generate(
    suite: str | Suite,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    dtypes: str | list[str] | None = None,
    only: str | list[str] | None = None,
    on_case: Callable[[str], None] | None = None,
) -> GenerateResult:
    """Generate golden suite ``suite`` (``smoke``, ``default``, ``papers``, ``stress`` or a
    :class:`Suite`) into ``out_dir``.

    Args:
        resume: keep intact cases already in ``out_dir`` (checked by size and sha256) and compute
            the rest. Without it ``out_dir`` must not hold a suite yet.
        workers: run cases on a new dask ``LocalCluster`` of this many worker processes.
        scheduler: run cases on the running dask cluster at this address (``tcp://host:8786``).
        progress: show a rich progress bar (on stderr).
        dtypes: only cases of these dtypes (``"float32"``, ``"float64"``).
        only: only cases whose id matches this glob (or any of a list of globs).
        on_case: called with each case id after its file and the manifest are written.

    Returns:
        a :class:`GenerateResult`.

    Example:
        >>> from sparse_ref import golden
        >>> result = golden.generate("smoke", "golden-smoke", progress=False)  # doctest: +SKIP
    """
    if workers is not None and scheduler is not None:
        raise ValueError("pass workers or scheduler, not both")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    t0 = time.perf_counter()
    s = _resolve_suite(suite, dtypes, only)
    if workers is not None or scheduler is not None:
        _require_dask()  # before anything is written: a refused run leaves nothing behind
    root = Path(out_dir)
    manifest_path = root / store.MANIFEST_NAME
    old: dict[str, dict[str, Any]] = {}
    if manifest_path.exists():
        if not resume:
            raise FileExistsError(
                f"{root} already holds a golden suite; pass resume=True (--resume) to finish it or "
                "choose a new directory"
            )
        previous = store.read_manifest(root)
        if previous["suite"] != s.name:
            raise ValueError(f"{root} holds suite {previous['suite']!r}, not {s.name!r}")
        old = {e["id"]: e for e in previous["cases"]}
    root.joinpath(store.CASES_DIR).mkdir(parents=True, exist_ok=True)

    entries: dict[str, dict[str, Any]] = {}
    todo: list[dict[str, Any]] = []
    kept: list[str] = []
    for spec in s.cases:
        planned = _planned_spec(spec)
        entry = _existing_entry(root, spec, planned, old) if resume else None
        if entry is not None:
            entries[spec.id] = entry
            kept.append(spec.id)
        else:
            todo.append(spec.to_json())
    store.write_manifest(root, _manifest(s, entries))

    computed: list[str] = []
    if not todo:
        return GenerateResult(
            root,
            s.name,
            [],
            kept,
            list(s.skipped),
            time.perf_counter() - t0,
            sum(e["bytes"] for e in entries.values()),
        )
    results = (
        _local_results(todo)
        if workers is None and scheduler is None
        else _dask_results(todo, workers, scheduler)
    )
    bar = _ProgressBar(progress, s.name, len(s.cases), len(kept))
    try:
        _write_results(root, s, entries, results, computed, bar, on_case)
    except BaseException:
        if not entries and not resume:  # nothing kept: leave no manifest that blocks a rerun
            manifest_path.unlink(missing_ok=True)
        raise
    store.write_manifest(root, _manifest(s, entries))  # full validation of the final manifest
    total = sum(e["bytes"] for e in entries.values())
    return GenerateResult(
        root, s.name, computed, kept, list(s.skipped), time.perf_counter() - t0, total
    )


def _write_results(
    root: Path,
    s: Suite,
    entries: dict[str, dict[str, Any]],
    results: Iterator[tuple[dict[str, Any], bytes]],
    computed: list[str],
    bar: _ProgressBar,
    on_case: Callable[[str], None] | None,
) -> None:
    """Write each computed case file, then the manifest with it (so a kill loses nothing)."""
    with bar as advance:
        for meta, data in results:
            case_id = meta["id"]
            store.write_atomic(root / store.case_relpath(case_id), data)
            entries[case_id] = dict(meta, sha256=store.sha256_hex(data), bytes=len(data))
            store.validate_entry(entries[case_id])
            store.write_manifest(root, _manifest(s, entries), validate=False)
            computed.append(case_id)
            advance(case_id)
            if on_case is not None:
                on_case(case_id)


class _ProgressBar:
    """A rich progress bar on stderr, or a no-op; ``with bar as advance: advance(case_id)``."""

    def __init__(self, enabled: bool, name: str, total: int, done: int) -> None:
        self.enabled, self.name, self.total, self.done = enabled, name, total, done
        self._progress: Any = None

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda case_id: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[case]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.__enter__()
        task = self._progress.add_task(
            f"golden {self.name}", total=self.total, completed=self.done, case=""
        )
        return lambda case_id: self._progress.update(task, advance=1, case=case_id)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
