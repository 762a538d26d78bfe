"""sparse_ref.analysis.tables: the comparison and memory tables."""

from __future__ import annotations

import doctest
import math

import pytest

from sparse_ref import analysis, patterns
from sparse_ref.analysis import tables


def test_format_bytes():
    assert analysis.format_bytes(256 * 2**20) == "256 MiB"
    assert analysis.format_bytes(2**30) == "1 GiB"
    assert analysis.format_bytes(999) == "999 B"


def test_compare_reproduces_the_literature_numbers_at_8192():
    n = 8192
    chosen = {
        "window 256": patterns.causal_sliding_window(n, 256),
        "longformer": patterns.sliding_window(n, 128, 128),
        "strided": patterns.sparse_transformer_strided(n, 128),
    }
    t = analysis.compare(chosen, layers=4)
    rows = {r["pattern"]: r for r in t.rows}
    recs = {r["label"]: r for r in t.records}
    assert rows["window 256"]["density"] == "3.1%"
    assert rows["window 256"]["complexity"] == "O(n·w)"
    assert rows["strided"]["complexity"] == "O(n·√n)"
    assert recs["window 256"]["receptive_field"] == 4 * 255 + 1  # L * w
    assert recs["longformer"]["receptive_field"] == 4 * 256 + 1
    assert recs["strided"]["receptive_field"] == n  # two hops reach everything
    assert recs["window 256"]["dense_score_bytes"] == 256 * 2**20
    assert all(r["components"] == 1 for r in t.records)
    assert recs["strided"]["diameter"] == 2
    assert recs["window 256"]["diameter"] == math.ceil((n - 1) / 255)
    text = str(t)
    assert "window 256" in text and "3.1%" in text
    md = t.to_markdown()
    assert md.count("\n| ") == 1 + len(chosen)
    assert t.to_rich().row_count == len(chosen)


def test_compare_labels_and_validation():
    t = analysis.compare([patterns.sliding_window(64, 2, 2)], layers=1)
    assert t.rows[0]["pattern"] == "sliding_window(left=2, right=2)"
    with pytest.raises(ValueError, match="at least one"):
        analysis.compare({})
    with pytest.raises(ValueError, match="shape"):
        analysis.compare([patterns.causal(8), patterns.causal(9)])


def test_memory_table():
    t = analysis.memory_table([1024, 8192], window=256)
    assert [r["dense float32"] for r in t.rows] == ["4 MiB", "256 MiB"]
    assert [r["dense float16"] for r in t.rows] == ["2 MiB", "128 MiB"]
    assert t.records[1]["window_bytes"] == 4 * patterns.causal_sliding_window(8192, 256).nnz


def test_module_examples():
    assert doctest.testmod(tables).failed == 0
