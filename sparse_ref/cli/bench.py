"""``sparse-ref bench ...``: benchmarks runnable from the shell.

Mounted by :mod:`sparse_ref.cli` with ``app.add_typer(bench_app, name="bench")``:

- ``sparse-ref bench``: the quick table (:func:`quick`), our forward and backward against the
  dense oracle, FlexAttention (CPU, compiled) and torch SDPA with a boolean mask, in one process,
  without asv; built from :mod:`sparse_ref.bench` like the asv suites.
- ``sparse-ref bench scale --n 1048576 --window 4096``: the million-token causal-window forward
  (:mod:`sparse_ref.bench.scale`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import bench as bm

bench_app = typer.Typer(add_completion=False)  # its help: the docstring of ``quick``
console = Console()


class QuickCase(NamedTuple):
    """A case of the quick table: a benchmark pattern (named as in :mod:`sparse_ref.bench.cases`), n, and
    the form our kernels run it in (``"csr"``: token CSR, ``"bsr"``: block form)."""

    pattern: str
    n: int
    form: str

    @property
    def label(self) -> str:
        return f"{self.pattern} n={self.n} {self.form.upper()}"


#: the form each pattern of the quick table runs in
PATTERN_FORMS = {"causal_window_256": "csr", "bigbird_64": "bsr", "causal_window_4096": "bsr"}
#: the default cases (DESIGN §12's targets at the sizes a quick run affords)
DEFAULT_CASES = [
    QuickCase("causal_window_256", 4096, "csr"),
    QuickCase("causal_window_256", 16384, "csr"),
    QuickCase("bigbird_64", 16384, "bsr"),
    QuickCase("causal_window_4096", 16384, "bsr"),
]
#: the dense float64 oracle runs at n <= this (it costs 4 * n**2 * d flops in float64)
ORACLE_MAX_N = 4096
#: SDPA with a dense n x n boolean mask runs at n <= this
SDPA_MAX_N = 16384
#: FlexAttention's block mask: its own ``create_block_mask``, what a user writes (as in the asv
#: report's targets)
FLEX_MASK = "create_block_mask"
#: calls of the GEMM and of the triad that measure the peaks (the best is kept)
GEMM_REPEAT = 10
OURS_FWD, OURS_BWD = "ours {form} forward", "ours {form} backward"
ORACLE, FLEX, SDPA = "oracle float64", "FlexAttention compiled", "SDPA bool mask"


class DType(StrEnum):
    """The input dtypes of ``--dtype``."""

    float32 = "float32"
    float64 = "float64"


@dataclass
class Row:
    """One line of the quick table (and of its JSON). Times in milliseconds, best of ``repeat``;
    ``gflops``: useful GFLOP/s (``4 * nnz * d`` forward, ``8 * nnz * d`` backward);
    ``peak_pct``: ``gflops`` in percent of the measured float32 GEMM peak; ``x_flex``,
    ``x_oracle``: the peer's time over ours (forward rows of ours only); ``compile_s``:
    FlexAttention's first call minus its best call; ``skipped``: why it did not run."""

    case: str
    pattern: str
    n: int
    form: str
    nnz: int
    density: float
    kernel: str
    ms: float | None = None
    gflops: float | None = None
    peak_pct: float | None = None
    x_flex: float | None = None
    x_oracle: float | None = None
    compile_s: float | None = None
    note: str = ""
    skipped: str | None = None


def quick_cases(ns: Sequence[int] | None) -> list[QuickCase]:
    """:data:`DEFAULT_CASES`, or every pattern of :data:`PATTERN_FORMS` at each of ``ns``."""
    if not ns:
        return list(DEFAULT_CASES)
    return [QuickCase(p, n, form) for n in ns for p, form in PATTERN_FORMS.items()]


def _reason(err: BaseException) -> str:
    """Why a peer did not run: :class:`sparse_ref.bench.PeerUnavailable`'s message, else the
    exception's type and first line."""
    text = (str(err).strip().splitlines() or [""])[0]
    return (text if isinstance(err, bm.PeerUnavailable) else f"{type(err).__name__}: {text}")[:120]


def run_case(
    case: QuickCase,
    d: int,
    dtype: str,
    repeat: int,
    peers: bool,
    gemm_peak: float,
    stage: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Measure one case: our forward and backward and (``peers``) the oracle, FlexAttention and
    SDPA, all warmed up first, then timed interleaved, best of ``repeat``. ``stage`` is told what
    is running (for a progress bar)."""
    pattern, n, form = case
    w = bm.window_of(pattern)
    if w is not None and w >= n:
        why = f"window {w} covers n = {n}"
        return [Row(case.label, pattern, n, form, 0, 0.0, "-", skipped=why)]
    stage("building the pattern and inputs")
    c = bm.make_case(pattern, n, d, dtype, form=form, count=4)
    p = c.pattern
    nnz = int(p.nnz)
    base = dict(case=case.label, pattern=pattern, n=n, form=form, nnz=nnz, density=p.density)
    flops = {"fwd": bm.useful_flops(nnz, d), "bwd": bm.useful_flops(nnz, d, backward=True)}
    fns: dict[str, Callable[[], Any]] = {
        "fwd": bm.forward_runner(*c.qkv, p),
        "bwd": bm.backward_runner(*c.qkv, c.dout, p),
    }
    skipped: dict[str, str] = {}
    first_flex = math.nan
    stage("warming up ours (Numba compile or cache load, first touch)")
    bm.warm(fns["fwd"], fns["bwd"])
    if peers:
        if n <= ORACLE_MAX_N:
            stage("warming up the oracle")
            fns["oracle"] = bm.oracle_runner(*c.qkv, p)
            bm.warm(fns["oracle"])
        else:
            skipped["oracle"] = f"n > {ORACLE_MAX_N} (dense, slow)"
        try:
            stage("compiling FlexAttention")
            torch = bm.import_torch()
            torch._dynamo.reset()  # a fresh compile per case (dynamo's recompile limit)
            mask = bm.flex_block_mask(FLEX_MASK, p, bm.flex_mask_mod(pattern, p))
            fns["flex"] = bm.flex_runner(*c.qkv, mask)
            first_flex = bm.first_call_s(fns["flex"])
        except Exception as err:  # a peer that cannot run is reported, not fatal
            fns.pop("flex", None)
            skipped["flex"] = _reason(err)
        if n > SDPA_MAX_N:
            skipped["sdpa"] = f"n > {SDPA_MAX_N} (dense n x n mask)"
        else:
            try:
                stage("warming up SDPA")
                fns["sdpa"] = bm.sdpa_runner(*c.qkv, bm.dense_mask(p))
                bm.warm(fns["sdpa"])
            except Exception as err:
                fns.pop("sdpa", None)
                skipped["sdpa"] = _reason(err)
    stage(f"timing, best of {repeat}, interleaved")
    best = dict(zip(fns, bm.interleaved_min(list(fns.values()), repeat)))
    del fns

    def gflops(key: str, kind: str = "fwd") -> dict[str, Any]:
        g = flops[kind] / best[key] / 1e9
        return dict(ms=best[key] * 1e3, gflops=g, peak_pct=100 * g / gemm_peak)

    def x(peer: str) -> float | None:
        return best[peer] / best["fwd"] if peer in best else None

    label = form.upper()
    rows = [
        Row(
            **base,
            kernel=OURS_FWD.format(form=label),
            **gflops("fwd"),
            x_flex=x("flex"),
            x_oracle=x("oracle"),
        ),
        Row(
            **base,
            kernel=OURS_BWD.format(form=label),
            **gflops("bwd", "bwd"),
            note=f"{best['bwd'] / best['fwd']:.1f}x forward time",
        ),
    ]
    if not peers:
        return rows
    for key, name in (("oracle", ORACLE), ("flex", FLEX), ("sdpa", SDPA)):
        if key in skipped:
            rows.append(Row(**base, kernel=name, skipped=skipped[key]))
            continue
        row = Row(**base, kernel=name, **gflops(key))
        if key == "flex":
            row.compile_s = max(0.0, first_flex - best["flex"])
            row.note = f"compile {row.compile_s:.1f} s"
        rows.append(row)
    return rows


def table(rows: Sequence[Row], title: str, caption: str) -> Table:
    """The rich table of :func:`run_case`'s rows, one section per case."""
    t = Table(title=title, caption=caption, caption_justify="left")
    for col in ("case", "kernel", "ms", "GFLOP/s", "% GEMM peak", "x Flex", "x oracle", "note"):
        t.add_column(col, justify="left" if col in ("case", "kernel", "note") else "right")

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    last = None
    for r in rows:
        if last is not None and r.case != last:
            t.add_section()
        first = r.case != last
        last = r.case
        case = r.case if first else ""
        if r.skipped is not None:
            t.add_row(case, r.kernel, "-", "-", "-", "-", "-", f"skipped: {r.skipped}", style="dim")
            continue
        ours = r.kernel.startswith("ours")
        t.add_row(
            case,
            f"[bold]{r.kernel}[/]" if ours else r.kernel,
            num(r.ms, ".2f"),
            num(r.gflops, ".1f"),
            num(r.peak_pct, ".0f"),
            num(r.x_flex, ".2f"),
            num(r.x_oracle, ".1f"),
            r.note,
        )
    return t


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file beside it, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("sparse-ref", "numpy", "numba", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _check(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise typer.BadParameter(message, param_hint=f"'{option}'")


@bench_app.callback(invoke_without_command=True)
def quick(
    ctx: typer.Context,
    n: Annotated[
        list[int] | None,
        typer.Option(
            help="sequence length, repeatable; given: every pattern at each n (windows that "
            "cover n are skipped); default: the four default cases",
            show_default=False,
        ),
    ] = None,
    d: Annotated[int, typer.Option(help="head dimension")] = 64,
    dtype: Annotated[DType, typer.Option(help="input dtype")] = DType.float32,
    repeat: Annotated[int, typer.Option(help="timed calls per kernel (best is kept)")] = 5,
    threads: Annotated[int, typer.Option(help="threads for Numba, the BLAS and torch")] = 2,
    peers: Annotated[
        bool, typer.Option(help="also time the oracle, FlexAttention and SDPA (needs torch)")
    ] = True,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="also write the numbers as JSON to this file", dir_okay=False),
    ] = None,
) -> None:
    """Benchmarks; without a command, a quick table of our kernels against the peers.

    Quick table, no asv needed: about 1-2 minutes on 2 cores with the
    defaults (the full suites are in asv_benchmarks/, see docs/benchmarks.md).
    Default cases (B = H = 1): causal window 256 at n = 4096 and 16384 (token
    CSR), BigBird of 64-blocks and causal window 4096 at n = 16384 (block
    form). For each: our forward and backward, and the peers: the dense
    float64 oracle (n <= 4096), FlexAttention compiled on the CPU (compile
    time shown apart) and torch SDPA with a boolean mask (n <= 16384).

    Every kernel is called once first (compilation, first-touch memory), then
    all are timed interleaved, best of --repeat. GFLOP/s count useful flops
    (4 nnz d forward, 8 nnz d backward); % GEMM peak is against this
    machine's float32 GEMM, measured first; "x Flex" and "x oracle" are the
    peer's time over ours.
    """
    if ctx.invoked_subcommand is not None:
        return
    dtype_name = DType(dtype).value
    import numba

    ns = list(n or [])
    for value in ns:
        _check(value >= 1, "--n", f"must be >= 1, got {value}")
    _check(d >= 1, "--d", f"must be >= 1, got {d}")
    _check(repeat >= 1, "--repeat", f"must be >= 1, got {repeat}")
    max_threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    _check(
        1 <= threads <= max_threads,
        "--threads",
        f"must be between 1 and {max_threads} (NUMBA_NUM_THREADS), got {threads}",
    )
    if json_path is not None:
        _check(json_path.parent.is_dir(), "--json", f"directory {json_path.parent} does not exist")
    out = console if console.is_terminal else Console(width=150)
    cases = quick_cases(ns)
    t_start = time.perf_counter()
    rows: list[Row] = []
    with (
        bm.thread_limit(threads),
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=out,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task(
            "machine peaks: float32 GEMM, memory bandwidth", total=len(cases) + 1
        )
        gemm = bm.gemm_gflops(repeat=GEMM_REPEAT)  # ~0.1 s a call; best of many on a busy box
        memory = bm.triad_gbytes(1 << 24, repeat=GEMM_REPEAT)
        progress.advance(task)
        for case in cases:

            def stage(what: str, label: str = case.label) -> None:
                progress.update(task, description=f"{label}: {what}")

            rows.extend(run_case(case, d, dtype_name, repeat, peers, gemm, stage))
            progress.advance(task)
    wall = time.perf_counter() - t_start
    title = f"sparse-ref bench: {dtype_name}, d={d}, B=H=1, {threads} threads, best of {repeat}"
    caption = (
        f"float32 GEMM peak {gemm:.0f} GFLOP/s, memory {memory:.1f} GB/s; GFLOP/s are useful "
        f"flops (4*nnz*d forward, 8*nnz*d backward); x Flex, x oracle: the peer's time over ours "
        f"(measured interleaved); wall time {wall:.0f} s"
    )
    out.print(table(rows, title, caption))
    if json_path is not None:
        data = {
            "schema": "sparse-ref-bench/1",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {
                "cases": [c._asdict() for c in cases],
                "d": d,
                "dtype": dtype_name,
                "repeat": repeat,
                "threads": threads,
                "peers": peers,
                "flex_mask": FLEX_MASK,
            },
            "machine": {
                "gemm_gflops": gemm,
                "memory_gbytes": memory,
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
            },
            "versions": _versions(),
            "wall_s": wall,
            "rows": [asdict(r) for r in rows],
        }
        write_json(json_path, data)
        out.print(f"wrote {json_path}")


@bench_app.command("scale")
def scale(
    n: Annotated[int, typer.Option(help="sequence length")] = 1 << 20,
    window: Annotated[
        int, typer.Option(help="causal window (keys per row, itself included)")
    ] = 4096,
    d: Annotated[int, typer.Option(help="head dimension")] = 64,
    block: Annotated[int, typer.Option(help="block size of the block form")] = 128,
    rows: Annotated[int, typer.Option(help="query rows checked against the oracle")] = 64,
    seed: Annotated[int, typer.Option(help="input seed")] = 0,
) -> None:
    """Causal-window forward at a million tokens in float32: time, peak extra memory (< 4 GiB) and
    an oracle check of sampled rows. Exits 1 if memory or accuracy misses its target."""
    from ..bench.scale import report, run

    if n < 1 or window < 0 or d < 1 or block < 1 or rows < 1:
        raise typer.BadParameter("n, d, block and rows must be positive and window >= 0")
    with console.status(f"causal window {window} at n = {n:,} ..."):
        result = run(n, window, d=d, block=block, rows=rows, seed=seed)
    console.print(report(result))
    raise typer.Exit(0 if result.ok else 1)
