"""``sparse-ref bench ...``: benchmarks runnable from the shell.

Mounted by ``sparse_ref/cli.py`` with ``app.add_typer(bench_app, name="bench")``:

- ``sparse-ref bench scale --n 1048576 --window 4096``: the million-token causal-window forward
  (:mod:`sparse_ref.bench_scale`).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

bench_app = typer.Typer(
    help="Benchmarks of the kernels (see also asv_benchmarks/).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


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
    from .bench_scale import report, run

    if n < 1 or window < 0 or d < 1 or block < 1 or rows < 1:
        raise typer.BadParameter("n, d, block and rows must be positive and window >= 0")
    with console.status(f"causal window {window} at n = {n:,} ..."):
        result = run(n, window, d=d, block=block, rows=rows, seed=seed)
    console.print(report(result))
    raise typer.Exit(0 if result.ok else 1)
