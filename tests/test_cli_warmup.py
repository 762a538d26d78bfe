"""``sparse-ref warmup``: every step of every dtype asked for, one summary line per dtype, and no
compile notice (the progress bar says what compiles)."""

from __future__ import annotations

import numba
import numpy as np
from typer.testing import CliRunner

from sparse_ref import warmup as library
from sparse_ref.cli import app

runner = CliRunner()


def test_warmup_runs_the_steps_of_each_dtype_quietly(monkeypatch):
    ran: list[tuple[str, str]] = []

    def fake_steps(dtype: str):
        def compile_something() -> None:
            def kernel(x):
                return x + 1

            kernel.__module__ = "sparse_ref._fake"  # a package kernel: would print the notice
            numba.njit(kernel)(np.ones(2))
            ran.append((dtype, "A"))

        return [("A", compile_something), ("B", lambda: ran.append((dtype, "B")))]

    monkeypatch.setattr(library, "steps", fake_steps)
    result = runner.invoke(app, ["warmup", "--dtype", "float64", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert ran == [("float64", "A"), ("float64", "B"), ("float32", "A"), ("float32", "B")]
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("numba warm-up")] == [
        "numba warm-up float64",
        "numba warm-up float32",
    ]
    assert "sparse-ref: compiling" not in result.output


def test_warmup_defaults_to_both_dtypes(monkeypatch):
    monkeypatch.setattr(library, "steps", lambda dtype: [])
    result = runner.invoke(app, ["warmup"])
    assert result.exit_code == 0, result.output
    assert "numba warm-up float32" in result.output and "numba warm-up float64" in result.output


def test_warmup_refuses_an_unknown_dtype():
    result = runner.invoke(app, ["warmup", "--dtype", "float16"])
    assert result.exit_code == 2 and "float16" in result.output
