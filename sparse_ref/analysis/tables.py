"""The literature's comparison tables (plain text, markdown, rich) built from the other modules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bench.flops import useful_flops
from ..pattern import Pattern
from ._structure import _dtype_name, _np_dtype, _pos_int, _square
from .graph import connected_components, diameter
from .metrics import dense_score_bytes
from .presets import COMPLEXITY
from .receptive import receptive_field

__all__ = ["Comparison", "compare", "format_bytes", "memory_table"]


def format_bytes(b: float) -> str:
    """Binary units, three significant digits: ``format_bytes(2**28) == '256 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1000 or unit == "TiB":
            return f"{b:.3g} {unit}"
        b /= 1024
    raise AssertionError("unreachable")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x >= 0.001 else f"{100 * x:.3f}%"


@dataclass
class Comparison:
    """A comparison table: ``columns`` and one dict per pattern in ``rows`` (raw numbers under
    ``records``); print it with ``str()``, :meth:`to_markdown` or :meth:`to_rich`."""

    title: str
    columns: list[str]
    rows: list[dict[str, str]]
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table (with the notes below it)."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(row[c] for c in self.columns) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_rich(self) -> Any:
        """A ``rich.table.Table`` (rich is a dependency of the CLI); the cells are plain text, not
        rich markup (a label such as ``[0, 1]`` or ``[viz]`` prints as it is)."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(
            title=escape(self.title),
            caption=escape("\n".join(self.notes)) or None,
            caption_justify="left",
        )
        for i, c in enumerate(self.columns):
            table.add_column(escape(c), justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*(escape(row[c]) for c in self.columns))
        return table

    def __str__(self) -> str:
        widths = [max(len(c), *(len(r[c]) for r in self.rows)) for c in self.columns]
        line = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))
        out = [self.title, line, "-" * len(line)]
        for r in self.rows:
            out.append("  ".join(r[c].ljust(w) for c, w in zip(self.columns, widths, strict=True)))
        return "\n".join(out + self.notes)


def _label(p: Pattern) -> str:
    params = {k: v for k, v in p.params.items() if k not in ("n", "n_q", "n_k")}
    inner = ", ".join(
        f"{k}={v}" for k, v in params.items() if not isinstance(v, dict | list) or len(str(v)) < 24
    )
    return f"{p.family}({inner})"


def compare(
    patterns: Mapping[str, Pattern] | Iterable[Pattern],
    *,
    layers: int = 4,
    d: int = 64,
    dtype: Any = "float32",
    rf_rows: Any = None,
    diameter_samples: int = 8,
    seed: int = 0,
) -> Comparison:
    """The literature's comparison table for square patterns of one size ``n``.

    Columns: asymptotic complexity (:data:`COMPLEXITY`), mean keys per query, density, forward
    GFLOP at head dimension ``d`` (``4 * nnz * d``), memory of the sparse score matrix next to the
    dense one (``n * n`` per head, in ``dtype``), the receptive field after ``layers`` layers (the
    largest over ``rf_rows``, default the middle and last rows; see :func:`receptive_field`),
    connected components (weak) and the diameter (undirected; ``≥`` marks a sampled lower bound).

    Args:
        patterns: ``{label: pattern}`` or patterns (labelled by family and params).

    Example:
        >>> from sparse_ref import patterns
        >>> t = compare({"window 16": patterns.causal_sliding_window(512, 16)}, layers=2)
        >>> t.records[0]["receptive_field"], t.rows[0]["density"]
        (31, '3.1%')
    """
    items = (
        list(patterns.items())
        if isinstance(patterns, Mapping)
        else [(_label(p), p) for p in patterns]
    )
    if not items:
        raise ValueError("compare needs at least one pattern")
    n = _square(items[0][1], "compare")
    for label, p in items:
        if p.shape != (n, n):
            raise ValueError(f"{label}: shape {p.shape}, expected {(n, n)} like the first pattern")
    rows_sel = np.array(sorted({n // 2, n - 1}), dtype=np.int64) if rf_rows is None else rf_rows
    itemsize = np.dtype(_np_dtype(dtype)).itemsize
    columns = [
        "pattern",
        "complexity",
        "keys/query",
        "density",
        "GFLOP fwd",
        "scores",
        f"RF after {layers} layers",
        "components",
        "diameter",
    ]
    rows, records = [], []
    for label, p in items:
        nnz = p.nnz / p.num_heads  # per head
        rf = receptive_field(p, layers, rows=rows_sel)
        comps, _ = connected_components(p)
        diam = diameter(p, samples=diameter_samples, seed=seed)
        rec = {
            "label": label,
            "family": p.family,
            "complexity": COMPLEXITY.get(p.family, "O(nnz)"),
            "keys_per_query": nnz / n,
            "density": p.density,
            "gflop_forward": useful_flops(p.nnz, d) / p.num_heads / 1e9,
            "score_bytes": int(nnz * itemsize),
            "dense_score_bytes": n * n * itemsize,
            "receptive_field": rf.max,
            "receptive_coverage": rf.coverage,
            "components": comps,
            "diameter": diam.value,
            "diameter_exact": diam.exact,
        }
        records.append(rec)
        rows.append(
            {
                "pattern": label,
                "complexity": rec["complexity"],
                "keys/query": f"{rec['keys_per_query']:.1f}",
                "density": _pct(rec["density"]),
                "GFLOP fwd": f"{rec['gflop_forward']:.3g}",
                "scores": f"{format_bytes(rec['score_bytes'])}",
                f"RF after {layers} layers": f"{rf.max} ({_pct(rf.coverage)})",
                "components": str(comps),
                "diameter": str(diam),
            }
        )
    notes = [
        f"n = {n}, d = {d}, {_dtype_name(dtype)} scores per head; a dense score matrix is "
        f"{format_bytes(n * n * itemsize)}.",
        "keys/query and density per head; RF = input tokens the widest traced output token "
        f"(rows {', '.join(map(str, np.asarray(rows_sel).tolist()))}) depends on, with residual "
        "connections.",
        "diameter: undirected token graph, union of heads; ≥ marks a sampled lower bound.",
    ]
    return Comparison(
        title=f"Sparse attention patterns at n = {n}",
        columns=columns,
        rows=rows,
        records=records,
        notes=notes,
    )


def memory_table(
    ns: Sequence[int] = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
    *,
    dtypes: Sequence[Any] = ("float32", "float16"),
    window: int = 256,
    heads: int = 1,
) -> Comparison:
    """Memory of the dense score matrix per sequence length, next to a window of ``window`` keys.

    One row per ``n``: the dense ``n x n`` score matrix in each dtype (``heads`` heads), and the
    sparse scores of ``causal_sliding_window(n, window)`` (``n * window - window * (window - 1) /
    2`` entries, counted without building the pattern) in the first dtype.

    Example:
        >>> memory_table([8192]).rows[0]["dense float32"]
        '256 MiB'
    """
    cols = ["n"] + [f"dense {_dtype_name(t)}" for t in dtypes]
    cols += [f"window {window} ({dtypes[0]})", "ratio"]
    rows, records = [], []
    for n in ns:
        n = _pos_int(n, "n")
        w = min(window, n)
        nnz = n * w - w * (w - 1) // 2
        dense = [dense_score_bytes(n, dtype=t, heads=heads) for t in dtypes]
        sparse = heads * nnz * np.dtype(_np_dtype(dtypes[0])).itemsize
        row = {"n": str(n)}
        for c, b in zip(cols[1 : 1 + len(dtypes)], dense, strict=True):
            row[c] = format_bytes(b)
        row[cols[-2]] = format_bytes(sparse)
        row["ratio"] = f"{dense[0] / sparse:.0f}x"
        rows.append(row)
        records.append({"n": n, "dense_bytes": dense, "window_bytes": sparse})
    return Comparison(
        title=f"Score-matrix memory per sequence length ({heads} head{'s' if heads > 1 else ''})",
        columns=cols,
        rows=rows,
        records=records,
        notes=[
            "dense = n² entries; the window stores n·w − w(w−1)/2 entries (causal, w keys per row)."
        ],
    )
