"""mkdocs hook: draw the catalog pictures and the analysis tables at build time.

Nothing drawn here is checked in. On every build this hook

- draws one density picture per catalog family (every name in ``sparse_ref.patterns.available()``,
  built by ``sparse_ref.viz.example`` with the small parameters of ``sparse_ref.viz.EXAMPLES``) as
  ``img/patterns/<family>.png``, and the page ``catalog-pictures.md`` that shows them all; other
  pages can show one with ``![sliding_window](img/patterns/sliding_window.png)`` (path relative
  to the docs root);
- draws the receptive-field pictures ``img/analysis/*.png``;
- replaces the markers ``<!-- sparse-ref:compare -->`` and ``<!-- sparse-ref:memory -->`` in a page
  by the tables of ``sparse_ref.analysis.compare`` / ``memory_table``.

A family without example parameters fails the build (strict docs: every family has a picture).
"""

from __future__ import annotations

import inspect
import io
import logging
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.pictures")

PICTURES = "img/patterns"
GALLERY = "catalog-pictures.md"
COMPARE_N = 8192


def _sparse_ref(config: Any) -> Any:
    """Import sparse_ref from the repository next to mkdocs.yml (installed or not)."""
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import sparse_ref  # noqa: F401
    except ImportError as err:
        raise PluginError(
            f"the docs build draws pictures with sparse_ref and matplotlib: {err}; "
            "pip install -e '.[docs]'"
        ) from err
    return sparse_ref


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _family_picture(family: str) -> tuple[bytes, Any]:
    import matplotlib.pyplot as plt

    from sparse_ref import viz

    try:
        pattern = viz.example(family)
    except KeyError as err:
        raise PluginError(f"catalog picture: {err.args[0]}") from None
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    viz.plot(pattern, ax=ax, title=f"{family}  (n = {pattern.shape[0]})")
    return _png(fig), pattern


def _summary(family: str) -> tuple[str, str]:
    from sparse_ref import patterns

    fn = getattr(patterns, family)
    doc = inspect.getdoc(fn) or ""
    return (doc.splitlines()[0] if doc else ""), fn.__module__


def _params_text(pattern: Any) -> str:
    parts = []
    for k, v in pattern.params.items():
        if k.endswith("_fingerprint"):
            continue
        text = repr(v)
        parts.append(f"`{k}={text}`" if len(text) <= 40 else f"`{k}=…`")
    return ", ".join(parts)


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pictures and the pictures page to the site's files."""
    _sparse_ref(config)
    import matplotlib.pyplot as plt

    from sparse_ref import patterns, viz

    lines = [
        "# Pattern pictures",
        "",
        "One picture per catalog family, drawn by the docs build with `sparse_ref.viz.plot` from",
        f"`sparse_ref.viz.example(family)` (small parameters, n = {viz.DEFAULT_N}, the table",
        "`sparse_ref.viz.EXAMPLES`). Queries run down, keys across; a pixel's shade is the",
        "fraction of allowed (query, key) pairs in its cell. Draw your own with",
        "`sparse-ref patterns show NAME --n N --param key=value --png FILE`.",
        "",
    ]
    for family in patterns.available():
        png, pattern = _family_picture(family)
        files.append(File.generated(config, f"{PICTURES}/{family}.png", content=png))
        rule, module = _summary(family)
        lines += [
            f"## {family}",
            "",
            rule,
            "",
            f'![{family}]({PICTURES}/{family}.png){{ width="340" }}',
            "",
            f"Parameters: {_params_text(pattern)}; density {pattern.density:.3g}. "
            f"[API](api/patterns.md#{module}.{family})",
            "",
        ]
    files.append(File.generated(config, GALLERY, content="\n".join(lines)))

    # receptive-field pictures for the analysis page
    n, w = 1024, 64
    window = patterns.causal_sliding_window(n, w)
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    viz.plot_receptive_field(window, layers=8, row=n - 1, ax=ax)
    files.append(File.generated(config, "img/analysis/rf_window.png", content=_png(fig)))
    fig, ax = plt.subplots(figsize=(6.4, 2.2))
    viz.plot_receptive_field([window, window, window, patterns.dense(n)], row=n // 2, ax=ax)
    files.append(File.generated(config, "img/analysis/rf_hybrid.png", content=_png(fig)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the table markers by tables computed now."""
    if "<!-- sparse-ref:" not in markdown:
        return markdown
    from sparse_ref import analysis

    if "<!-- sparse-ref:compare -->" in markdown:
        table = analysis.compare(analysis.literature_patterns(COMPARE_N, include_dense=False))
        markdown = markdown.replace("<!-- sparse-ref:compare -->", _markdown_table(table))
    if "<!-- sparse-ref:memory -->" in markdown:
        table = analysis.memory_table()
        markdown = markdown.replace("<!-- sparse-ref:memory -->", _markdown_table(table))
    return markdown


def _markdown_table(table: Any) -> str:
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    for row in table.rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in table.columns) + " |")
    lines.append("")
    lines += [f"*{note}*  " for note in table.notes]
    return "\n".join(lines) + "\n"
