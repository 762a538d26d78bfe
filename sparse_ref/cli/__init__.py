"""The ``sparse-ref`` command (typer + rich), one module per command group.

``demo`` (:mod:`.demo`), ``patterns`` (:mod:`.patterns`), ``bench`` (:mod:`.bench`), ``golden``
(:mod:`.golden`) and ``warmup`` (:mod:`.warmup`). This package is the only place that imports
typer or argparse; the library code it calls lives outside it. ``[project.scripts]`` points at
:data:`app`; ``python -m sparse_ref`` calls :func:`main`.
"""

from __future__ import annotations

import typer

from .bench import bench_app
from .demo import demo
from .golden import golden_app
from .patterns import patterns_app
from .warmup import warmup

__all__ = ["app", "main"]

app = typer.Typer(
    help="sparse-ref: the reference for sparse attention.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(demo)
app.command()(warmup)
app.add_typer(golden_app, name="golden")
app.add_typer(patterns_app, name="patterns")
app.add_typer(bench_app, name="bench")


def main() -> None:
    """Entry point for ``python -m sparse_ref``."""
    app()
