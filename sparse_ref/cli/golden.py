"""``sparse-ref golden``: generate, verify, check and list golden suites (typer + rich).

Mounted by :mod:`sparse_ref.cli` with ``app.add_typer(golden_app, name="golden")``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..golden import store
from ..golden.conformance import PEERS
from ..golden.suites import SUITES
from ._console import console, fail

golden_app = typer.Typer(
    help="Golden suites: expected outputs from the float64 oracle, to test other implementations.",
    no_args_is_help=True,
    add_completion=False,
)


_ONLY_HELP = "only case ids matching this glob (repeatable: a case matching any is kept)"


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
    only: Annotated[list[str] | None, typer.Option(help=_ONLY_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Compute a suite with the oracle and write DIR/manifest.json and DIR/cases/*.safetensors."""
    from ..golden.generate import generate as run

    if suite not in SUITES:
        raise fail(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if workers is not None and scheduler is not None:
        raise fail("pass --workers or --scheduler, not both")
    try:
        result = run(
            suite,
            out,
            resume=resume,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            dtypes=dtype or None,
            only=only or None,
        )
    except (FileExistsError, ValueError, ImportError) as err:
        raise fail(str(err)) from None
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
    only: Annotated[list[str] | None, typer.Option(help=_ONLY_HELP)] = None,
) -> None:
    """Check hashes, schema, tensor headers, shapes and patterns; exit 1 on any problem."""
    from ..golden.check import verify as run

    try:
        results = run(directory, recompute=recompute, only=only or None)
    except ValueError as err:
        raise fail(str(err)) from None
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
        str | None,
        typer.Option(help="package.module:function, fn(q, k, v, pattern, *, scale, softcap)"),
    ] = None,
    backward: Annotated[
        str | None,
        typer.Option(help="package.module:function, bw(q, k, v, pattern, dout, *, scale, softcap)"),
    ] = None,
    forward_backward: Annotated[
        str | None,
        typer.Option(
            help="package.module:function, fb(q, k, v, pattern, dout, *, scale, softcap) -> "
            "(out, lse, dq, dk, dv), instead of --impl/--backward"
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="run in this dtype (float32, float16, bfloat16) with its stored tolerances"
        ),
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help=_ONLY_HELP)] = None,
    require_all: Annotated[
        bool, typer.Option(help="count unsupported cases (NotImplementedError) as failures")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the report as JSON to this file")
    ] = None,
) -> None:
    """Run an implementation on every case; print max errors and tolerances; exit 1 on a failure.

    An implementation that raises NotImplementedError marks the case unsupported (counted, not
    failed, unless --require-all).
    """
    from ..golden.check import check as run
    from ..golden.check import load_impl

    if (impl is None) == (forward_backward is None):
        raise fail("pass --impl (with an optional --backward) or --forward-backward")
    if str(Path.cwd()) not in sys.path:  # like `python -m`: modules in the working directory
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn = load_impl(impl) if impl else None
        bw = load_impl(backward) if backward else None
        fb = load_impl(forward_backward) if forward_backward else None
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        raise fail(f"cannot load implementation: {err}") from None
    try:
        report = run(
            fn,
            directory,
            dtype=dtype,
            backward=bw,
            forward_backward=fb,
            only=only or None,
            require_all=require_all,
            progress=True,
        )
    except ValueError as err:
        raise fail(str(err)) from None
    report.impl = impl or forward_backward or ""
    console.print(report.table())
    for line in report.details():
        console.print(line, highlight=False, markup=False)
    console.print(report.summary(), highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=1, allow_nan=True) + "\n")
    if not report.passed:
        raise typer.Exit(1)


@golden_app.command()
def conformance(
    directory: Annotated[Path, typer.Argument(help="suite directory")],
    peer: Annotated[
        list[str] | None,
        typer.Option(
            help=f"{', '.join(PEERS)} (repeatable; default: every importable peer for the device)"
        ),
    ] = None,
    dtype: Annotated[
        list[str] | None,
        typer.Option(help="float64, float32, float16, bfloat16 (repeatable; default: all four)"),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    only: Annotated[list[str] | None, typer.Option(help=_ONLY_HELP)] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the matrix as JSON to this file")
    ] = None,
) -> None:
    """Check the peers you have (torch SDPA, FlexAttention, the CuPy kernels) in every dtype and
    print the matrix: peer x dtype -> passed / unsupported / failed (with the worst case)."""
    from ..golden import conformance as conf

    if device not in ("cpu", "cuda"):
        raise fail(f"--device must be cpu or cuda, got {device!r}")

    def show(name: str, dt: str, report: object) -> None:
        console.print(f"{name} {dt}: {conf.Matrix.cell(report)}", highlight=False)  # type: ignore[arg-type]

    try:
        matrix = conf.run(
            directory,
            peers=peer or None,
            dtypes=dtype or None,
            device=device,
            only=only or None,
            on_report=show,
        )
    except (ValueError, ImportError) as err:
        raise fail(str(err)) from None
    if not matrix.reports:
        raise fail(f"no peer is available on {device} (install torch, or cupy for a GPU)")
    console.print(matrix.table())
    for (name, dt), report in matrix.reports.items():
        for r in report.failures:
            console.print(f"{name} {dt} {r.id}: {r.message.strip()}", highlight=False, markup=False)
    if json_out is not None:
        json_out.write_text(json.dumps(matrix.to_json(), indent=1) + "\n")
    if not matrix.passed:
        raise typer.Exit(1)


@golden_app.command("list")
def list_cases(directory: Annotated[Path, typer.Argument(help="suite directory")]) -> None:
    """List the cases of a suite (from the manifest; files are not read)."""
    try:
        manifest = store.read_manifest(directory)
    except ValueError as err:
        raise fail(str(err)) from None
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
