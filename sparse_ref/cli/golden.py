"""``sparse-ref golden``: generate, verify, check and list golden suites (typer + rich).

Mounted by :mod:`sparse_ref.cli` with ``app.add_typer(golden_app, name="golden")``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..golden import store
from ..golden.suites import SUITES

golden_app = typer.Typer(
    help="Golden suites: expected outputs from the float64 oracle, to test other implementations.",
    no_args_is_help=True,
    add_completion=False,
)


class _LazyConsole:
    """A rich Console made at print time: 160 columns when stdout is not a terminal (logs, CI)."""

    def print(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        tty = sys.stdout.isatty()
        Console(width=None if tty else 160).print(*args, **kwargs)


console = _LazyConsole()


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(2)


@golden_app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="suite directory to write")],
    suite: Annotated[str, typer.Option(help=f"one of {', '.join(SUITES)}")] = "smoke",
    resume: Annotated[bool, typer.Option(help="keep intact cases already in --out")] = False,
    workers: Annotated[
        int | None, typer.Option(help="run on a dask LocalCluster of N worker processes")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="run on the dask cluster at this address")
    ] = None,
    dtype: Annotated[
        list[str] | None, typer.Option(help="only cases of this dtype (repeatable)")
    ] = None,
    only: Annotated[str | None, typer.Option(help="only case ids matching this glob")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Compute a suite with the oracle and write DIR/manifest.json and DIR/cases/*.safetensors."""
    from ..golden.generate import generate as run

    if suite not in SUITES:
        raise _fail(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if workers is not None and scheduler is not None:
        raise _fail("pass --workers or --scheduler, not both")
    try:
        result = run(
            suite,
            out,
            resume=resume,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            dtypes=dtype or None,
            only=only,
        )
    except (FileExistsError, ValueError, ImportError) as err:
        raise _fail(str(err)) from None
    console.print(
        f"suite [bold]{result.suite}[/]: {result.cases} cases in {out} "
        f"({len(result.computed)} computed, {len(result.kept)} kept), "
        f"{result.bytes / 2**20:.1f} MiB, {result.seconds:.1f} s",
        highlight=False,
    )
    for skip in result.skipped:
        console.print(f"  skipped {skip['id']}: {skip['reason']}", style="yellow", highlight=False)


@golden_app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="suite directory")],
    recompute: Annotated[
        bool, typer.Option(help="also regenerate every case with the oracle and compare")
    ] = False,
    only: Annotated[str | None, typer.Option(help="only case ids matching this glob")] = None,
) -> None:
    """Check hashes, schema, tensor headers, shapes and patterns; exit 1 on any problem."""
    from ..golden.check import verify as run

    try:
        results = run(directory, recompute=recompute, only=only)
    except ValueError as err:
        raise _fail(str(err)) from None
    table = Table(title=f"golden verify {directory}" + (" --recompute" if recompute else ""))
    table.add_column("case")
    table.add_column("result")
    if recompute:
        table.add_column("max diff", justify="right")
    table.add_column("detail")
    for r in results:
        row = [r.id, "[green]ok[/]" if r.ok else "[red]FAIL[/]"]
        if recompute:
            row.append(
                "identical"
                if r.diffs == {"bytes": 0.0}
                else (f"{max(r.diffs.values()):.1e}" if r.diffs else "")
            )
        row.append(r.message)
        table.add_row(*row)
    console.print(table)
    bad = sum(not r.ok for r in results)
    console.print(f"{len(results) - bad} ok, {bad} failed", highlight=False)
    if bad:
        raise typer.Exit(1)


@golden_app.command()
def check(
    directory: Annotated[Path, typer.Argument(help="suite directory")],
    impl: Annotated[
        str, typer.Option(help="package.module:function, fn(q, k, v, pattern, *, scale, softcap)")
    ],
    backward: Annotated[
        str | None,
        typer.Option(help="package.module:function, bw(q, k, v, pattern, dout, *, scale, softcap)"),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="cast inputs to this dtype (e.g. float16) and use its tolerances"),
    ] = None,
    only: Annotated[str | None, typer.Option(help="only case ids matching this glob")] = None,
) -> None:
    """Run an implementation on every case; print max errors and tolerances; exit 1 on a failure."""
    from ..golden.check import check as run
    from ..golden.check import load_impl

    if str(Path.cwd()) not in sys.path:  # like `python -m`: modules in the working directory
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = load_impl(impl)
        bw = load_impl(backward) if backward else None
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        raise _fail(f"cannot load implementation: {err}") from None
    try:
        report = run(fn, directory, dtype=dtype, backward=bw, only=only, progress=True)
    except ValueError as err:
        raise _fail(str(err)) from None
    report.impl = impl
    console.print(report.table())
    for line in report.details():
        console.print(line, highlight=False, markup=False)
    console.print(report.summary(), highlight=False)
    if not report.passed:
        raise typer.Exit(1)


@golden_app.command("list")
def list_cases(directory: Annotated[Path, typer.Argument(help="suite directory")]) -> None:
    """List the cases of a suite (from the manifest; files are not read)."""
    try:
        manifest = store.read_manifest(directory)
    except ValueError as err:
        raise _fail(str(err)) from None
    table = Table(
        title=f"suite {manifest['suite']} ({len(manifest['cases'])}/{manifest['planned']} cases, "
        f"sparse-ref {manifest['library']['version']}, {manifest['created_utc']})"
    )
    for col in (
        "case",
        "family",
        "dtype",
        "B,H,Hkv",
        "n_q x n_k",
        "d,d_v",
        "nnz",
        "softcap",
        "grads",
        "MiB",
    ):
        table.add_column(col, justify="left" if col in ("case", "family") else "right")
    for e in manifest["cases"]:
        table.add_row(
            e["id"],
            e["family"],
            e["dtype"],
            f"{e['batch']},{e['heads']},{e['kv_heads']}",
            f"{e['n_q']}x{e['n_k']}",
            f"{e['d']},{e['d_v']}",
            f"{e['pattern']['nnz']:,}",
            "" if e["softcap"] is None else f"{e['softcap']:g}",
            "yes" if e["gradients"] else ("rows" if e["rows"] else "no"),
            f"{e['bytes'] / 2**20:.2f}",
        )
    console.print(table)
    for skip in manifest["skipped"]:
        console.print(f"skipped {skip['id']}: {skip['reason']}", style="yellow", highlight=False)
