"""``sparse-ref patterns``: look at a catalog pattern and compare patterns (typer + rich).

Mounted by :mod:`sparse_ref.cli` with ``app.add_typer(patterns_app, name="patterns")``.

- ``sparse-ref patterns list``: the catalog families and their example parameters;
- ``sparse-ref patterns show NAME [--n N] [--param key=value ...] [--png FILE]``: summary and a text
  picture, or a PNG (matplotlib, ``pip install 'sparse-ref[viz]'``);
- ``sparse-ref patterns compare [--n 8192] [--layers 4] [--pattern "family key=value ..."]``: the
  literature's comparison table (complexity, density, memory, receptive field, connectivity,
  diameter) and the score-memory table per sequence length.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import analysis, patterns, viz
from ._console import console, fail

patterns_app = typer.Typer(
    help="Pattern pictures and comparison tables (complexity, density, memory, receptive field).",
    no_args_is_help=True,
    add_completion=False,
)


def parse_value(text: str) -> Any:
    """A Python literal (``3``, ``1.5``, ``True``, ``[0, 1]``, ``'x'``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: parse_value(value)}``; ``ValueError`` names a bad item."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_spec(spec: str, n: int) -> tuple[str, Any]:
    """``"family key=value ..."`` -> (label, pattern at length ``n``); examples fill the rest."""
    try:
        words = shlex.split(spec)
    except ValueError as err:  # e.g. an unclosed quote
        raise ValueError(f"--pattern {spec!r}: {err}") from None
    if not words:
        raise ValueError("empty --pattern")
    family, overrides = words[0], parse_params(words[1:])
    return spec, viz.example(family, n, **overrides)


@patterns_app.command("list")
def list_families() -> None:
    """List the catalog families with the example parameters `show` uses (n = 256)."""
    from rich.table import Table

    table = Table(title="Catalog families (example parameters at n = 256)")
    table.add_column("family")
    table.add_column("example parameters")
    for family in patterns.available():
        try:
            params = viz.example_params(family)
            text = ", ".join(
                f"{k}={v!r}" if not hasattr(v, "shape") else f"{k}=<array {tuple(v.shape)}>"
                for k, v in params.items()
            )
        except KeyError:
            text = "(no example parameters)"
        table.add_row(family, escape(text))
    console.print(table)


@patterns_app.command()
def show(
    name: Annotated[str, typer.Argument(help="catalog family, e.g. sliding_window")],
    n: Annotated[int, typer.Option(help="sequence length")] = viz.DEFAULT_N,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="override a parameter: key=value (repeatable)"),
    ] = None,
    png: Annotated[
        Path | None, typer.Option(help="write a density picture to this PNG file")
    ] = None,
    head: Annotated[int, typer.Option(help="which head to draw")] = 0,
    max_pixels: Annotated[int, typer.Option(help="at most this many pixels per side")] = 512,
    width: Annotated[int, typer.Option(help="text picture width (characters)")] = 64,
) -> None:
    """Build NAME with example parameters (overridable) and show it: a summary and a text picture,
    or a PNG with --png."""
    if name not in patterns.available():
        raise fail(f"unknown family {name!r}; available: {', '.join(patterns.available())}")
    for option, value in (("--n", n), ("--max-pixels", max_pixels), ("--width", width)):
        if value < 1:
            raise fail(f"{option} must be >= 1, got {value}")
    if head < 0:
        raise fail(f"--head must be >= 0, got {head}")
    try:
        pattern = viz.example(name, n, **parse_params(param))
    except (ValueError, TypeError, KeyError) as err:
        raise fail(str(err)) from None
    if pattern.num_heads > 1 and head >= pattern.num_heads:
        raise fail(f"--head must be < {pattern.num_heads} (the pattern's heads), got {head}")
    block = f", block form {pattern.block}" if pattern.block else ""
    console.print(
        f"[bold]{pattern.family}[/] shape {pattern.shape}, {pattern.num_heads} head(s), "
        f"nnz {pattern.nnz:,}, density {pattern.density:.4g}{block}",
        highlight=False,
    )
    shown = {
        k: v
        for k, v in pattern.params.items()
        if not isinstance(v, dict | list) or len(str(v)) < 80
    }
    console.print(f"params: {shown}", highlight=False, markup=False)
    if png is None:
        console.print(
            viz.text_picture(pattern, head=head, width=width, height=max(1, width // 2)),
            highlight=False,
            markup=False,
        )
        return
    try:
        viz.require_matplotlib().use("Agg")
    except ImportError as err:
        raise fail(str(err)) from None
    ax = viz.plot(pattern, head=head, max_pixels=max_pixels, colorbar=True)
    ax.figure.tight_layout()
    try:
        ax.figure.savefig(png, dpi=150)
    except (OSError, ValueError) as err:  # a missing directory, no permission, unknown format
        raise fail(f"--png: cannot write {png}: {err}") from None
    console.print(f"wrote {png}", highlight=False, markup=False)


@patterns_app.command()
def compare(
    n: Annotated[int, typer.Option(help="sequence length")] = 8192,
    layers: Annotated[int, typer.Option(help="layers for the receptive field")] = 4,
    d: Annotated[int, typer.Option(help="head dimension for FLOPs")] = 64,
    pattern: Annotated[
        list[str] | None,
        typer.Option(
            "--pattern",
            help='a pattern to compare instead of the literature set: "family key=value ..." '
            "(example parameters fill the rest; repeatable)",
        ),
    ] = None,
    dense: Annotated[
        bool, typer.Option(help="include full and causal attention (slow at large n)")
    ] = True,
    memory: Annotated[bool, typer.Option(help="also print the score-memory table per n")] = True,
    markdown: Annotated[bool, typer.Option(help="print markdown instead of rich tables")] = False,
) -> None:
    """Compare patterns at length N: complexity, density, FLOPs, score memory, receptive field after
    L layers, connected components and diameter (defaults: the literature's configurations)."""
    for option, value, least in (("--n", n, 2), ("--layers", layers, 1), ("--d", d, 1)):
        if value < least:
            raise fail(f"{option} must be >= {least}, got {value}")
    try:
        if pattern:
            chosen = dict(parse_spec(spec, n) for spec in pattern)
        else:
            chosen = analysis.literature_patterns(n, include_dense=dense)
        table = analysis.compare(chosen, layers=layers, d=d)
    except (ValueError, TypeError, KeyError) as err:
        raise fail(str(err)) from None
    tables = [table]
    if memory:
        tables.append(analysis.memory_table(sorted({1024, 4096, n, 16384, 65536, 131072})))
    for t in tables:
        if markdown:
            console.print(t.to_markdown(), highlight=False, markup=False)
        else:
            console.print(t.to_rich())
