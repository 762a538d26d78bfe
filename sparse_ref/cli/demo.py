"""``sparse-ref demo``: catalog patterns through the Numba kernels against the oracle, then the smoke
golden suite (typer + rich)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from .. import golden, oracle, patterns, testing
from ..api import attention
from ..bench.timing import best_time
from ..pattern import Pattern

console = Console()
if not console.is_terminal:  # logs and pipes: keep the demo table on one line per row
    console = Console(width=160)


def demo_patterns(n: int) -> list[tuple[str, Callable[[], Pattern]]]:
    """The demo's catalog entries at length ``n``: (label, builder)."""
    w = max(1, n // 16)
    return [
        (f"causal_sliding_window(n, {w})", lambda: patterns.causal_sliding_window(n, w)),
        (
            f"sliding_window(n, {w // 2}, {w // 2})",
            lambda: patterns.sliding_window(n, w // 2, w // 2),
        ),
        (f"dilated(n, {w // 4}, 4)", lambda: patterns.dilated(n, w // 4, 4)),
        ("strided(n, 64, causal)", lambda: patterns.strided(n, 64, causal=True)),
        (
            f"global_local(n, {w // 2}, {w // 2}, 8 globals)",
            lambda: patterns.global_local(n, w // 2, w // 2, list(range(8))),
        ),
        (f"sinks(n, 4, {w})", lambda: patterns.sinks(n, 4, w)),
        ("random(n, per_row=64)", lambda: patterns.random(n, per_row=64, seed=0)),
        ("causal(n)", lambda: patterns.causal(n)),
    ]


def demo(
    n: Annotated[int, typer.Option(help="sequence length")] = 4096,
    heads: Annotated[int, typer.Option(help="attention heads")] = 2,
    d: Annotated[int, typer.Option(help="head dimension")] = 64,
    seed: Annotated[int, typer.Option(help="input seed")] = 0,
    golden_dir: Annotated[
        Path, typer.Option(help="where the smoke golden suite is written (resumed if present)")
    ] = Path("golden-demo"),
) -> None:
    """Build catalog patterns, run the Numba kernels against the float64 oracle, print a table,
    then write the smoke golden suite and check the kernels against it."""
    for option, value in (("--n", n), ("--heads", heads), ("--d", d)):
        if value < 1:
            raise typer.BadParameter(f"{option} must be >= 1, got {value}")
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, heads, n, d), dtype=np.float32) for _ in range(3))
    table = Table(title=f"sparse-ref demo: float32, B=1, H={heads}, n={n}, d={d}")
    for col in ("family", "nnz", "density", "max err", "tolerance", "ok", "numba ms", "oracle ms"):
        table.add_column(col, justify="left" if col == "family" else "right")
    table.add_column("speed-up", justify="right")
    failures = 0
    for label, build in track(demo_patterns(n), description="patterns", console=console):
        pattern = build()
        attention(q, k, v, pattern)  # compile / warm up
        kernel_s = best_time(partial(attention, q, k, v, pattern), repeat=3)
        oracle_s = best_time(partial(oracle.attention, q, k, v, pattern), repeat=1)
        ref = testing.oracle_reference(q, k, v, pattern, dtype=np.float32)
        out = attention(q, k, v, pattern)
        err = float(np.max(np.abs(out.astype(np.float64) - ref.out)))
        ok = err <= ref.out_tol
        failures += not ok
        table.add_row(
            label,
            f"{pattern.nnz * heads // pattern.num_heads:,}",
            f"{pattern.density:.4f}",
            f"{err:.2e}",
            f"{ref.out_tol:.2e}",
            "[green]yes[/]" if ok else "[red]NO[/]",
            f"{kernel_s * 1e3:.1f}",
            f"{oracle_s * 1e3:.0f}",
            f"{oracle_s / kernel_s:.0f}x",
        )
    console.print(table)
    report = golden.demo(golden_dir, progress=True)
    console.print(report.table())
    console.print(f"golden suite: {golden_dir} ({len(report.results)} cases)")
    if failures or not report.passed:
        console.print(
            f"[red]{failures} pattern(s) outside the tolerance rule, "
            f"{len(report.failures)} golden case(s) failed[/]"
        )
        raise typer.Exit(1)
