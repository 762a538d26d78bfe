"""The documentation site builds with ``mkdocs build --strict`` (only where mkdocs is installed).

The build runs the docs hook (one picture per catalog family, the analysis tables) and mkdocstrings
over the whole API, so a broken docstring cross-reference or a family without a picture fails here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "matplotlib")


def _missing() -> list[str]:
    out = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(name)
    return out


@pytest.mark.skipif(
    bool(_missing()),
    reason=f"docs extra not installed (missing: {', '.join(_missing())}); pip install -e '.[docs]'",
)
def test_docs_build_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    from sparse_ref import patterns

    pictures = site / "img" / "patterns"
    for family in patterns.available():
        png = pictures / f"{family}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", family
    gallery = (site / "catalog-pictures" / "index.html").read_text()
    assert all(f"img/patterns/{f}.png" in gallery for f in patterns.available())
    analysis_page = (site / "analysis" / "index.html").read_text()
    assert "sparse-ref:compare" not in analysis_page and "3.1%" in analysis_page
    assert (site / "api" / "interop" / "index.html").is_file()
