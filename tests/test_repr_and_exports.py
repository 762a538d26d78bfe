"""Small user-facing pieces of issue 17: notebook pictures, exports, the LICENSE file."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest

from sparse_ref import Pattern, patterns

ROOT = Path(__file__).resolve().parents[1]


def test_repr_png_draws_the_pattern_for_notebooks() -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the viz extra) is not installed")
    png = patterns.causal_sliding_window(300, 20)._repr_png_()
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")
    other = patterns.dense(300)._repr_png_()
    assert other != png  # the picture depends on the pattern
    # block forms of any size draw without materialising tokens
    huge = patterns.causal_sliding_window(1 << 20, 4096, block=128)
    assert huge._repr_png_().startswith(b"\x89PNG")


def test_repr_png_without_matplotlib_falls_back_to_text(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    assert patterns.causal(8)._repr_png_() is None
    assert repr(patterns.causal(8)).startswith("Pattern(")


def test_hierarchical_keys_is_exported_from_patterns() -> None:
    module = importlib.import_module("sparse_ref.patterns.hierarchical")  # shadowed by the family
    assert patterns.hierarchical_keys is module.hierarchical_keys
    assert "hierarchical_keys" in patterns.__all__
    assert "hierarchical_keys" not in patterns.available()  # a helper, not a family
    assert isinstance(patterns.hierarchical(8, 4, 1, 1), Pattern)


def test_license_file_matches_pyproject() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "BSD-3-Clause"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, the sparse-ref developers" in text
    assert "Neither the name of the copyright holder" in text
