"""sparse_ref.bench.quick: the cases, the peaks measured like the kernels, atomic JSON."""

from __future__ import annotations

import json
import math

import pytest

from sparse_ref.bench import quick


def test_quick_cases():
    assert quick.quick_cases(None) == quick.DEFAULT_CASES
    cases = quick.quick_cases([512, 1024])
    assert [(c.n, c.pattern) for c in cases] == [
        (n, p) for n in (512, 1024) for p in quick.PATTERN_FORMS
    ]
    assert cases[0].label == "causal_window_256 n=512 CSR"


def test_measure_peaks_warms_and_times_both_in_rounds(monkeypatch):
    calls: list[str] = []

    def runner(name: str, work: int):
        return lambda *a, **k: ((lambda: calls.append(name)), work)

    monkeypatch.setattr(quick, "gemm_runner", runner("gemm", 2 * 10**9))
    monkeypatch.setattr(quick, "triad_runner", runner("triad", 12 * 10**9))
    p = quick.measure_peaks(repeat=3)
    warmups = 2 * quick.WARMUP_CALLS
    assert calls[:warmups] == ["gemm"] * quick.WARMUP_CALLS + ["triad"] * quick.WARMUP_CALLS
    assert calls[warmups:] == ["gemm", "triad", "triad", "gemm", "gemm", "triad"]  # rotated
    assert len(p.gemm.samples) == len(p.triad.samples) == 3
    assert p.gemm_gflops == pytest.approx(2 / p.gemm.median)
    assert p.memory_gbytes == pytest.approx(12 / p.triad.median)


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "out.json"
    quick.write_json(path, {"x": 1})
    with pytest.raises(ValueError):  # NaN is not JSON: the old file stays, no temporary is left
        quick.write_json(path, {"x": math.nan})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
