"""The benchmark report (``asv_benchmarks/report.py``) on asv result files written here.

The files follow asv's results format (``result_columns``, one flat list of values per parameter
grid, ``None`` for skipped combinations); the report merges them, fills the section of the
benchmarks page between its markers and draws the plot.
"""

from __future__ import annotations

import ast
import json
import math
import sys
from itertools import product
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # asv_benchmarks is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from asv_benchmarks import report  # noqa: E402

COLUMNS = ["result", "params", "version", "started_at", "duration"]
KERNEL_GRID = [
    ["'causal_window_256'", "'causal_window_4096'", "'bigbird_64'"],
    ["4096", "16384", "65536"],
    ["64", "128"],
    ["'float32'", "'float64'"],
]
FLEX_GRID = [*KERNEL_GRID[:3], ["'create_block_mask'", "'exact_blocks'"]]


def _grid_values(grid: list[list[str]], set_: dict[tuple, float]) -> list[float | None]:
    values: list[float | None] = []
    for combo in product(*grid):
        key = tuple(ast.literal_eval(v) for v in combo)
        values.append(set_.get(key))
    return values


def _write(path: Path, date: int, results: dict[str, list], commit: str = "0123abcd") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "commit_hash": commit,
        "env_name": "existing-py",
        "date": date,
        "params": {"machine": "box", "cpu": "Test CPU", "num_cpu": "2", "ram": str(24 << 30)},
        "result_columns": COLUMNS,
        "results": {
            name: [values, grid, "v", date, 1.0] for name, (values, grid) in results.items()
        },
        "version": 2,
    }
    path.write_text(json.dumps(data))


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    cw = ("causal_window_256", 16384, 64)
    old = {
        report.PEAK_GEMM: ([50.0], []),
        report.BSR_FWD: (_grid_values(KERNEL_GRID, {(*cw, "float32"): 10.0}), KERNEL_GRID),
        report.CSR_FWD: (_grid_values(KERNEL_GRID, {(*cw, "float32"): 30.0}), KERNEL_GRID),
    }
    new = {
        report.PEAK_GEMM: ([100.0], []),
        report.PEAK_MEMORY: ([10.0], []),
        # the newer run skipped CSR (None): the older value stays
        report.CSR_FWD: (_grid_values(KERNEL_GRID, {}), KERNEL_GRID),
        report.BSR_FWD: (_grid_values(KERNEL_GRID, {(*cw, "float32"): 40.0}), KERNEL_GRID),
        report.FLEX: (_grid_values(FLEX_GRID, {(*cw, "create_block_mask"): 20.0}), FLEX_GRID),
        report.FLEX_CSR: (_grid_values(FLEX_GRID, {(*cw, "create_block_mask"): 1.25}), FLEX_GRID),
        report.HEADLINE_TIME: ([0.5], []),
    }
    stale = {report.SDPA: (_grid_values(KERNEL_GRID[:3], {cw: 3.0}), KERNEL_GRID[:3])}
    _write(root / "box" / "ffff-existing.json", 500, stale, commit="ffffffff")  # another commit
    _write(root / "box" / "0123abcd-env-a.json", 1000, old)
    _write(root / "box" / "0123abcd-env-b.json", 2000, new)
    (root / "box" / "machine.json").write_text(json.dumps({"machine": "box", "version": 1}))
    return root


def test_load_results_merges_the_newest_commits_files(results_dir):
    res = report.load_results(results_dir)
    assert res is not None and res.commit == "0123abcd"
    assert math.isnan(res.get(report.SDPA, "causal_window_256", 16384, 64))  # other commit
    assert res.get(report.PEAK_GEMM) == 100.0
    assert res.get(report.BSR_FWD, "causal_window_256", 16384, 64, "float32") == 40.0
    assert res.get(report.CSR_FWD, "causal_window_256", 16384, 64, "float32") == 30.0
    assert math.isnan(res.get(report.BSR_FWD, "bigbird_64", 4096, 64, "float32"))
    assert report.load_results(results_dir, machine="other") is None


def test_section_has_fractions_of_peak_ratios_and_targets(results_dir):
    section = report.render_section(report.load_results(results_dir))
    row = next(line for line in section.splitlines() if line.startswith("| causal_window_256 |"))
    assert "| 30.0 (30%) | 40.0 (40%) | 20.0 (20%) |" in row and "1.25×" in row
    assert "![useful GFLOP/s per pattern](img/benchmarks.png)" in section
    target = next(line for line in section.splitlines() if "CSR forward, causal window 256" in line)
    assert "1.25×" in target and target.endswith("| met |")
    build = next(line for line in section.splitlines() if "causal_sliding_window(65536" in line)
    assert build.endswith("| not met |")  # 0.5 s > 0.35 s
    assert "| memory bandwidth (triad) | 10.0 GB/s |" in section


def test_main_writes_page_section_and_plot(results_dir, tmp_path):
    pytest.importorskip("matplotlib")
    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    page.write_text(f"# B\n\nbefore\n\n{report.START}\nold\n{report.END}\n\nafter\n")
    png = tmp_path / "docs" / "img" / "benchmarks.png"
    args = ["--results", str(results_dir), "--page", str(page), "--plot", str(png)]
    assert report.main(args) == 0
    text = page.read_text()
    assert text.startswith("# B\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old" not in text and "40.0 (40%)" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert report.main(args) == 0 and page.read_text() == text  # idempotent


def test_without_results_the_page_is_left_alone_or_gets_the_note(tmp_path):
    page = tmp_path / "benchmarks.md"
    original = f"x\n{report.START}\nkept\n{report.END}\n"
    page.write_text(original)
    png = tmp_path / "img" / "b.png"
    args = ["--results", str(tmp_path / "none"), "--page", str(page), "--plot", str(png)]
    assert report.main(args) == 1 and page.read_text() == original
    assert report.main([*args, "--allow-empty"]) == 0
    assert report.PLACEHOLDER.strip() in page.read_text() and not png.exists()


def test_replace_section_needs_one_pair_of_markers():
    with pytest.raises(ValueError, match="needs one"):
        report.replace_section("no markers", "x")
    with pytest.raises(ValueError, match="needs one"):
        report.replace_section(f"{report.END}\n{report.START}", "x")


def test_the_benchmarks_page_has_the_markers():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert page.count(report.START) == 1 and page.count(report.END) == 1
    report.replace_section(page, "x")
