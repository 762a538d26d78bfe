"""``sparse-ref bench`` (the quick table) and the building blocks of :mod:`sparse_ref.benchmarking`.

The CLI runs at n = 512 with one timed call per kernel; the machine's peaks are replaced by fixed
figures (they take seconds and are checked on their own, small), so the file runs in seconds.
"""

from __future__ import annotations

import doctest
import json
import math

import numba
import pytest
from typer.testing import CliRunner

from sparse_ref import bench as bm
from sparse_ref.bench import flops, peers, timing
from sparse_ref.cli import app
from sparse_ref.cli import bench as bench_cli

runner = CliRunner()
GEMM, MEMORY = 123.0, 4.5  # the peaks the CLI tests see


@pytest.fixture
def fixed_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "gemm_gflops", lambda *a, **k: GEMM)
    monkeypatch.setattr(bm, "triad_gbytes", lambda *a, **k: MEMORY)


def _bench(*args: str) -> object:
    return runner.invoke(app, ["bench", "--n", "512", "--repeat", "1", "--d", "32", *args])


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
    assert data["schema"] == "sparse-ref-bench/1"
    assert data["config"] | {"cases": None} == {
        "cases": None,
        "d": 32,
        "dtype": "float32",
        "repeat": 1,
        "threads": 1,
        "peers": False,
        "flex_mask": "create_block_mask",
    }
    assert [c["pattern"] for c in data["config"]["cases"]] == list(bench_cli.PATTERN_FORMS)
    assert data["machine"]["gemm_gflops"] == GEMM and data["machine"]["memory_gbytes"] == MEMORY
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
        assert r["gflops"] == pytest.approx(flops / (r["ms"] * 1e-3) / 1e9)
        assert r["peak_pct"] == pytest.approx(100 * r["gflops"] / GEMM)
        assert r["x_flex"] is None and r["x_oracle"] is None  # --no-peers
    assert numba.get_num_threads() == threads  # --threads 1 is undone


def test_peers_without_torch_are_skipped_with_the_reason(tmp_path, fixed_peaks, monkeypatch):
    def no_torch() -> None:
        raise bm.PeerUnavailable("torch is not installed: pip install -e '.[torch]'")

    for module in (bm, peers):  # the package's name (the CLI) and the one the runners call
        monkeypatch.setattr(module, "import_torch", no_torch)
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app, ["bench", "--n", "256", "--n", "512", "--repeat", "1", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "skipped: torch is not" in result.output
    rows = json.loads(out.read_text())["rows"]
    by = {(r["case"], r["kernel"]): r for r in rows}
    assert by["causal_window_256 n=256 CSR", "-"]["skipped"] == "window 256 covers n = 256"
    case = "causal_window_256 n=512 CSR"
    for peer in (bench_cli.FLEX, bench_cli.SDPA):
        assert by[case, peer]["skipped"] == "torch is not installed: pip install -e '.[torch]'"
    oracle, ours = by[case, bench_cli.ORACLE], by[case, "ours CSR forward"]
    assert oracle["skipped"] is None and ours["x_flex"] is None
    assert ours["x_oracle"] == pytest.approx(oracle["ms"] / ours["ms"])


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
    assert result.exit_code == 0 and "about 1-2 minutes" in result.output
    assert "scale" in result.output
    result = runner.invoke(app, ["bench", "scale", "--help"])
    assert result.exit_code == 0 and "million tokens" in result.output
    result = runner.invoke(app, ["bench", "scale", "--n", "0"])
    assert result.exit_code == 2


def test_useful_flops():
    assert bm.useful_flops(1000, 64) == 4 * 1000 * 64
    assert bm.useful_flops(1000, 64, backward=True) == 8 * 1000 * 64
    case = bm.make_case("causal_window_16", 64, 8, backward=True)
    assert case.flops == 8 * case.pattern.nnz * 8 and case.pattern.nnz == 16 * 64 - 16 * 15 // 2


def test_interleaved_min_calls_in_rounds_and_keeps_each_best(monkeypatch):
    clock = [0.0]
    calls: list[str] = []
    durations = {"a": [3.0, 1.0, 2.0], "b": [5.0, 6.0, 4.0]}

    def fn(name: str):
        def call() -> None:
            clock[0] += durations[name][sum(c == name for c in calls)]
            calls.append(name)

        return call

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    assert bm.interleaved_min([fn("a"), fn("b")], repeat=3) == [1.0, 4.0]
    assert calls == ["a", "b"] * 3
    calls.clear()
    assert bm.ratio(fn("b"), fn("a"), repeat=3) == 4.0
    assert calls == ["b", "a"] * 3


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "out.json"
    bench_cli.write_json(path, {"x": 1})
    with pytest.raises(ValueError):  # NaN is not JSON: the old file stays, no temporary is left
        bench_cli.write_json(path, {"x": math.nan})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_thread_limit_restores_threads():
    before = numba.get_num_threads()
    with bm.thread_limit(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_peaks_measure_something():
    assert bm.gemm_gflops(n=128, repeat=1) > 0
    assert bm.triad_gbytes(size=1 << 12, repeat=1) > 0


@pytest.mark.parametrize("module", [bm, flops])
def test_module_examples(module):
    assert doctest.testmod(module).failed == 0
