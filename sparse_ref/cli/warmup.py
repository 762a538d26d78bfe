"""``sparse-ref warmup``: compile the Numba kernels into their on-disk cache ahead of time."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from .. import warmup as _warmup


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
    """Compile every CPU kernel once (minutes in a fresh cache), so that later calls load it from
    Numba's on-disk cache instead of compiling."""
    for name in [DType(t).value for t in dtype] if dtype else list(_warmup.DTYPES):
        typer.echo(f"numba warm-up {name}: {_warmup.warmup(name):.1f} s")
