"""The console the command groups print to, and their one way of failing."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape


class _LazyConsole:
    """A rich Console made at print time (so a test runner's swapped stdout is the one used):
    160 columns when stdout is not a terminal (logs, CI), so tables are not truncated."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        Console(width=None if sys.stdout.isatty() else 160).print(*args, **kwargs)


console = _LazyConsole()


def fail(message: str) -> typer.Exit:
    """Print ``message`` as an error and return the exit (code 2) to raise. The message is escaped:
    rich would read ``[viz]`` or ``[dask]`` in an install hint as markup and drop it."""
    console.print(f"[red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(2)
