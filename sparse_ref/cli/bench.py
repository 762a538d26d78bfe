"""``sparse-ref bench ...``: benchmarks runnable from the shell.

Mounted by :mod:`sparse_ref.cli` with ``app.add_typer(bench_app, name="bench")``:

- ``sparse-ref bench``: the quick table (:func:`quick`), our forward and backward against the
  dense oracle, FlexAttention (CPU, compiled) and torch SDPA with a boolean mask, in one process,
  without asv; measured by :mod:`sparse_ref.bench.quick`, built like the asv suites from
  :mod:`sparse_ref.bench`.
- ``sparse-ref bench scale --n 1048576 --window 4096``: the million-token causal-window forward
  (:mod:`sparse_ref.bench.scale`).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..bench import process
from ..bench import quick as qt
from ..kernels import _compile_notice

bench_app = typer.Typer(add_completion=False)  # its help: the docstring of ``quick``
console = Console()


class DType(StrEnum):
    """The input dtypes of ``--dtype``."""

    float32 = "float32"
    float64 = "float64"


def table(rows: Sequence[qt.Row], title: str, caption: str) -> Table:
    """The rich table of :func:`sparse_ref.bench.quick.run_case`'s rows, one section per case.
    Text that comes from elsewhere (reasons, notes) is escaped: rich would read ``[torch]`` in
    an install hint as markup and drop it."""
    t = Table(title=title, caption=caption, caption_justify="left")
    columns = ("case", "kernel", "ms", "± IQR", "GFLOP/s", "% GEMM peak", "x Flex", "x oracle")
    for col in (*columns, "note"):
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
            dashes = ["-"] * (len(columns) - 2)
            t.add_row(case, r.kernel, *dashes, f"skipped: {escape(r.skipped)}", style="dim")
            continue
        ours = r.kernel.startswith("ours")
        t.add_row(
            case,
            f"[bold]{r.kernel}[/]" if ours else r.kernel,
            num(r.ms, ".2f"),
            "-" if r.spread_pct is None else f"{r.spread_pct:.0f}%",
            num(r.gflops, ".1f"),
            num(r.peak_pct, ".0f"),
            num(r.x_flex, ".2f"),
            num(r.x_oracle, ".1f"),
            escape(r.note),
        )
    return t


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
    repeat: Annotated[
        int, typer.Option(help="timed interleaved rounds per case (the median is shown)")
    ] = 7,
    threads: Annotated[int, typer.Option(help="threads for Numba, the BLAS and torch")] = 2,
    peers: Annotated[
        bool, typer.Option(help="also time the oracle, FlexAttention and SDPA (needs torch)")
    ] = True,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="also write the numbers as JSON to this file", dir_okay=False),
    ] = None,
    passive_openmp: Annotated[
        bool,
        typer.Option(
            help="OpenMP threads (Numba's, torch's) sleep when idle instead of spinning: "
            "OMP_WAIT_POLICY=PASSIVE unless set"
        ),
    ] = True,
) -> None:
    """Benchmarks; without a command, a quick table of our kernels against the peers.

    Quick table, no asv needed: about 2 minutes on 2 cores with the defaults
    (the full suites are in asv_benchmarks/, see docs/benchmarks.md). Default
    cases (B = H = 1): causal window 256 at n = 4096 and 16384 (token CSR),
    BigBird of 64-blocks and causal window 4096 at n = 16384 (block form).
    For each: our forward and backward, and the peers: the dense float64
    oracle (n <= 4096), FlexAttention compiled on the CPU (compile time shown
    apart) and torch SDPA with a boolean mask (n <= 16384).

    Every kernel is called twice first (compilation, first-touch memory),
    then all are timed in --repeat interleaved rounds, each round starting at
    the next kernel. ms is the median, "± IQR" its interquartile range in
    percent of it. GFLOP/s count useful flops (4 nnz d forward, 8 nnz d
    backward); % GEMM peak is against this machine's float32 GEMM, measured
    first the same way; "x Flex" and "x oracle" are the peer's median over
    ours. OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE unless
    set; --no-passive-openmp keeps the runtimes' default): threads spinning
    on a loaded machine made our CSR forward 3-4x slower and unstable.
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
    # before Numba's first parallel kernel and torch's import load their OpenMP runtimes
    wait_policy = process.passive_openmp() if passive_openmp else os.environ.get("OMP_WAIT_POLICY")
    out = console if console.is_terminal else Console(width=160)
    cases = qt.quick_cases(ns)
    t_start = time.perf_counter()
    rows: list[qt.Row] = []
    with (
        process.thread_limit(threads),
        _compile_notice.quiet(),  # the progress bar says when a warm-up compiles
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
        peaks = qt.measure_peaks()
        progress.advance(task)
        for case in cases:

            def stage(what: str, label: str = case.label) -> None:
                progress.update(task, description=f"{label}: {what}")

            rows.extend(qt.run_case(case, d, dtype_name, repeat, peers, peaks.gemm_gflops, stage))
            progress.advance(task)
    wall = time.perf_counter() - t_start
    title = (
        f"sparse-ref bench: {dtype_name}, d={d}, B=H=1, {threads} threads, median of {repeat} "
        "interleaved rounds"
    )
    caption = (
        f"float32 GEMM peak {peaks.gemm_gflops:.0f} GFLOP/s (± {100 * peaks.gemm.spread:.0f}% "
        f"IQR), memory {peaks.memory_gbytes:.1f} GB/s (± {100 * peaks.triad.spread:.0f}%), "
        f"medians of {qt.PEAK_REPEAT}; OpenMP wait policy {wait_policy or 'as loaded'}; "
        "GFLOP/s are useful flops (4*nnz*d forward, 8*nnz*d "
        "backward); x Flex, x oracle: the peer's median over ours (measured interleaved); wall "
        f"time {wall:.0f} s"
    )
    out.print(table(rows, title, caption))
    if json_path is not None:
        data = {
            "schema": "sparse-ref-bench/2",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {
                "cases": [c._asdict() for c in cases],
                "d": d,
                "dtype": dtype_name,
                "repeat": repeat,
                "warmup_calls": qt.WARMUP_CALLS,
                "threads": threads,
                "peers": peers,
                "flex_mask": qt.FLEX_MASK,
                "omp_wait_policy": wait_policy,
            },
            "machine": {
                "gemm_gflops": peaks.gemm_gflops,
                "gemm_spread_pct": 100 * peaks.gemm.spread,
                "memory_gbytes": peaks.memory_gbytes,
                "memory_spread_pct": 100 * peaks.triad.spread,
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
            },
            "versions": _versions(),
            "wall_s": wall,
            "rows": [asdict(r) for r in rows],
        }
        qt.write_json(json_path, data)
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
