"""``sparse-ref patterns``: list, show (text picture or PNG) and compare."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from sparse_ref.cli import app


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def _app():
    return app


def test_cli_patterns_show_text(runner):
    result = runner.invoke(
        _app(), ["patterns", "show", "sliding_window", "--n", "64", "-p", "left=3"]
    )
    assert result.exit_code == 0, result.output
    assert "sliding_window shape (64, 64)" in result.output
    assert "'left': 3" in result.output
    assert "@" in result.output


def test_cli_patterns_show_png(runner, tmp_path):
    out = tmp_path / "bb.png"
    result = runner.invoke(_app(), ["patterns", "show", "bigbird", "--n", "512", "--png", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args,message",
    [
        (["patterns", "show", "nope"], "unknown family"),
        (["patterns", "show", "causal", "-p", "oops"], "key=value"),
        (["patterns", "show", "sliding_window", "-p", "left=-1"], "left"),
        (["patterns", "compare", "--n", "256", "--pattern", "nope"], "no example"),
    ],
)
def test_cli_patterns_errors(runner, args, message):
    result = runner.invoke(_app(), args)
    assert result.exit_code == 2
    assert message in result.output


def test_cli_patterns_compare_and_list(runner):
    result = runner.invoke(
        _app(),
        [
            "patterns",
            "compare",
            "--n",
            "512",
            "--layers",
            "2",
            "--markdown",
            "--no-memory",
            "--pattern",
            "causal_sliding_window window=64",
            "--pattern",
            "bigbird block=32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| causal_sliding_window window=64 | O(n·w) |" in result.output
    assert "127 (24.8%)" in result.output  # 2 * 63 + 1 tokens
    result = runner.invoke(_app(), ["patterns", "compare", "--n", "512", "--no-dense"])
    assert result.exit_code == 0, result.output
    assert "BigBird" in result.output and "Score-matrix memory" in result.output
    result = runner.invoke(_app(), ["patterns", "list"])
    assert result.exit_code == 0 and "neighborhood_2d" in result.output


def test_cli_patterns_show_png_without_matplotlib_names_the_viz_extra(
    runner, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    out = tmp_path / "x.png"
    result = runner.invoke(_app(), ["patterns", "show", "causal", "--n", "64", "--png", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "pip install 'sparse-ref[viz]'" in text  # the extra survives rich's markup
    assert not out.exists()


def test_cli_patterns_text_is_not_read_as_markup(runner):
    result = runner.invoke(
        _app(), ["patterns", "show", "global_local", "--n", "64", "-p", "global_tokens=[0, 5]"]
    )
    assert result.exit_code == 0, result.output
    assert "'global_tokens': [0, 5]" in result.output
    result = runner.invoke(_app(), ["patterns", "show", "causal", "-p", "align='[red]x'"])
    assert result.exit_code == 2
    assert "[red]x" in result.output  # the bad value, printed as given
