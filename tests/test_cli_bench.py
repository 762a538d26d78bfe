"""``sparse-ref bench`` (the quick table of :mod:`sparse_ref.bench.quick`) and ``bench scale``.

The CLI runs at n = 512 with one timed round; the machine's peaks are replaced by fixed figures
(they take seconds and are checked on their own, small, in test_bench_peaks.py), so the file
runs in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numba
import pytest
from typer.testing import CliRunner

from sparse_ref import bench as bm
from sparse_ref.bench import peers, quick
from sparse_ref.bench.timing import Timing
from sparse_ref.cli import app

runner = CliRunner()
GEMM, MEMORY = 123.0, 4.5  # the peaks the CLI tests see


@pytest.fixture
def fixed_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    peaks = quick.Peaks(Timing((1.0, 1.0, 1.5)), int(GEMM * 1e9), Timing((2.0,)), int(MEMORY * 2e9))
    monkeypatch.setattr(quick, "measure_peaks", lambda *a, **k: peaks)


def _bench(*args: str) -> object:
    # --no-passive-openmp: this test process keeps its environment (see the subprocess test)
    return runner.invoke(
        app, ["bench", "--n", "512", "--repeat", "1", "--d", "32", "--no-passive-openmp", *args]
    )


def test_quick_table_writes_json(tmp_path, fixed_peaks):
    out = tmp_path / "bench.json"
    threads = numba.get_num_threads()
    result = _bench("--no-peers", "--threads", "1", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert (
        "sparse-ref bench: float32, d=32" in result.output and "ours CSR forward" in result.output
    )
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left
    data = json.loads(out.read_text())
    assert data["schema"] == "sparse-ref-bench/2"
    assert data["config"] | {"cases": None} == {
        "cases": None,
        "d": 32,
        "dtype": "float32",
        "repeat": 1,
        "warmup_calls": quick.WARMUP_CALLS,
        "threads": 1,
        "peers": False,
        "flex_mask": "create_block_mask",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    assert [c["pattern"] for c in data["config"]["cases"]] == list(quick.PATTERN_FORMS)
    machine = data["machine"]
    assert machine["gemm_gflops"] == pytest.approx(GEMM) and machine["gemm_spread_pct"] > 0
    assert machine["memory_gbytes"] == pytest.approx(MEMORY)
    assert "float32 GEMM peak 123 GFLOP/s" in " ".join(result.output.split())
    rows = {(r["pattern"], r["kernel"]): r for r in data["rows"]}
    assert list(rows) == [
        ("causal_window_256", "ours CSR forward"),
        ("causal_window_256", "ours CSR backward"),
        ("bigbird_64", "ours BSR forward"),
        ("bigbird_64", "ours BSR backward"),
        ("causal_window_4096", "-"),
    ]
    assert rows["causal_window_4096", "-"]["skipped"] == "window 4096 covers n = 512"
    fwd = rows["causal_window_256", "ours CSR forward"]
    assert fwd["nnz"] == bm.expected_nnz("causal_window_256", 512) == 256 * 512 - 256 * 255 // 2
    for r in data["rows"][:4]:
        flops = bm.useful_flops(r["nnz"], 32, backward=r["kernel"].endswith("backward"))
        assert r["ms"] > 0 and r["skipped"] is None
        assert r["ms_best"] == r["ms"] and r["spread_pct"] == 0  # one round
        assert r["gflops"] == pytest.approx(flops / (r["ms"] * 1e-3) / 1e9)
        assert r["peak_pct"] == pytest.approx(100 * r["gflops"] / GEMM)
        assert r["x_flex"] is None and r["x_oracle"] is None  # --no-peers
    assert numba.get_num_threads() == threads  # --threads 1 is undone


def test_peers_without_torch_are_skipped_with_the_reason(tmp_path, fixed_peaks, monkeypatch):
    def no_torch() -> None:
        raise bm.PeerUnavailable("torch is not installed: pip install -e '.[torch]'")

    for module in (quick, peers):  # the name the quick table calls and the one the runners call
        monkeypatch.setattr(module, "import_torch", no_torch)
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        ["bench", "--n", "256", "--n", "512", "--repeat", "3", "--no-passive-openmp"]
        + ["--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "skipped: torch is not installed: pip install -e '.[torch]'" in text  # not markup
    rows = json.loads(out.read_text())["rows"]
    by = {(r["case"], r["kernel"]): r for r in rows}
    assert by["causal_window_256 n=256 CSR", "-"]["skipped"] == "window 256 covers n = 256"
    case = "causal_window_256 n=512 CSR"
    for peer in (quick.FLEX, quick.SDPA):
        assert by[case, peer]["skipped"] == "torch is not installed: pip install -e '.[torch]'"
    oracle, ours = by[case, quick.ORACLE], by[case, "ours CSR forward"]
    assert oracle["skipped"] is None and ours["x_flex"] is None
    assert ours["x_oracle"] == pytest.approx(oracle["ms"] / ours["ms"])
    for row in (oracle, ours):  # three rounds: a median, its best and spread
        assert row["ms_best"] <= row["ms"] and row["spread_pct"] >= 0


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--n", "0"], "--n"),
        (["--n", "512", "--n", "-4"], "--n"),
        (["--d", "0"], "--d"),
        (["--repeat", "0"], "--repeat"),
        (["--threads", "0"], "--threads"),
        (["--threads", "999"], "--threads"),
        (["--dtype", "float16"], "--dtype"),
        (["--n", "x"], "--n"),
        (["--json", "/nonexistent-dir/b.json"], "--json"),
        (["--json", "."], "--json"),  # a directory
    ],
)
def test_bad_options_exit_2_and_name_the_option(args, option):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output


def test_help_and_scale_subcommand_still_mounted():
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "about 2 minutes" in result.output
    assert "interleaved rounds" in " ".join(result.output.split())
    assert "scale" in result.output
    result = runner.invoke(app, ["bench", "scale", "--help"])
    assert result.exit_code == 0 and "million tokens" in result.output
    result = runner.invoke(app, ["bench", "scale", "--n", "0"])
    assert result.exit_code == 2


def test_openmp_threads_sleep_when_idle_in_a_fresh_process(tmp_path):
    out = tmp_path / "b.json"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cmd = [sys.executable, "-m", "sparse_ref", "bench", "--n", "256", "--repeat", "1"]
    cmd += ["--no-peers", "--d", "16", "--json", str(out)]
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    # set before Numba loaded its OpenMP runtime, so in force for it
    assert json.loads(out.read_text())["config"]["omp_wait_policy"] == "PASSIVE"
