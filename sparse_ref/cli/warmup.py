"""``sparse-ref warmup``: compile the Numba kernels into their on-disk cache ahead of time."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class DType(StrEnum):
    """The dtypes of ``--dtype``."""

    float32 = "float32"
    float64 = "float64"


def warmup(
    dtype: Annotated[
        list[DType] | None,
        typer.Option(help="dtype to compile for, repeatable (default: float32 and float64)"),
    ] = None,
) -> None:
    """Compile every CPU kernel once (15-30 s each in a fresh cache), so that later calls and
    processes load it from Numba's on-disk cache instead of compiling."""
    from .. import warmup as _warmup  # Numba: imported here so `sparse-ref` runs without it
    from ..kernels import _compile_notice

    names = [DType(t).value for t in dtype] if dtype else list(_warmup.DTYPES)
    console = Console(stderr=True)
    work = [(name, label, call) for name in names for label, call in _warmup.steps(name)]
    seconds = dict.fromkeys(names, 0.0)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with (
        _compile_notice.quiet(),  # the bar says what compiles
        Progress(*columns, console=console, disable=not console.is_terminal) as progress,
    ):
        task = progress.add_task("numba warm-up", total=len(work))
        for name, label, call in work:
            progress.update(task, description=f"compiling {label} ({name})")
            start = time.perf_counter()
            call()
            seconds[name] += time.perf_counter() - start
            progress.advance(task)
    for name in names:
        typer.echo(f"numba warm-up {name}: {seconds[name]:.1f} s")
