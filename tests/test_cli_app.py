"""The ``sparse-ref`` command as a whole: every group mounted, ``python -m sparse_ref``, and the
command line kept in sparse_ref/cli/ (the only package that imports typer or argparse)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sparse_ref
from sparse_ref.cli import app

PACKAGE = Path(sparse_ref.__file__).parent


def test_every_command_is_mounted():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("demo", "warmup", "golden", "patterns", "bench"):
        assert re.search(rf"│ {command}\b", result.output), command


@pytest.mark.parametrize("group", ["golden", "patterns", "bench", "warmup", "demo"])
def test_each_group_has_help(group):
    result = CliRunner().invoke(app, [group, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_python_dash_m_runs_the_same_app():
    out = subprocess.run(
        [sys.executable, "-m", "sparse_ref", "--help"], capture_output=True, text=True, check=True
    )
    assert "warmup" in out.stdout and "patterns" in out.stdout


def test_only_the_cli_package_imports_typer_or_argparse():
    pattern = re.compile(r"^\s*(import|from)\s+(typer|argparse)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "cli" not in path.relative_to(PACKAGE).parts[:1] and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_errors_keep_install_extras_in_every_group(tmp_path, capsys):
    """rich reads ``[dask]`` as markup; an error message must print it literally."""
    from sparse_ref.cli._console import fail

    exit_ = fail("install the extra: pip install 'sparse-ref[dask]'")
    assert exit_.exit_code == 2
    assert "pip install 'sparse-ref[dask]'" in capsys.readouterr().out
    # the golden group's errors go through the same function
    result = CliRunner().invoke(
        app, ["golden", "generate", "--out", str(tmp_path), "--suite", "x[y]"]
    )
    assert result.exit_code == 2
    assert "'x[y]'" in result.output, result.output
