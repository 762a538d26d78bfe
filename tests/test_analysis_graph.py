"""sparse_ref.analysis.graph: components and diameter against scipy.sparse.csgraph and all-pairs
shortest paths on small n."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import scipy.sparse as sp
from analysis_cases import FAST, pattern_of, square_masks, union
from hypothesis import given
from hypothesis import strategies as st
from scipy.sparse import csgraph

from sparse_ref import analysis, patterns
from sparse_ref.analysis import graph


@FAST
@given(square_masks(max_n=30), st.sampled_from(["weak", "strong"]))
def test_connected_components_match_scipy(mask, connection):
    p = pattern_of(mask)
    count, labels = analysis.connected_components(p, connection=connection)
    ref_count, ref_labels = csgraph.connected_components(
        sp.csr_array(union(mask)), directed=True, connection=connection
    )
    assert count == ref_count
    # same partition (label numbering may differ)
    pairs = set(zip(labels.tolist(), ref_labels.tolist(), strict=True))
    assert len(pairs) == count
    if connection == "weak" and len(labels):
        # numbered by first token
        firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(count)]
        assert firsts == sorted(firsts)


def test_connected_components_named_cases():
    assert analysis.connected_components(patterns.document(lengths=[3, 5, 2]))[0] == 3
    labels = analysis.connected_components(patterns.document(lengths=[3, 5, 2]))[1]
    assert labels.tolist() == [0] * 3 + [1] * 5 + [2] * 2
    assert analysis.connected_components(patterns.causal(100))[0] == 1
    assert analysis.connected_components(patterns.causal(100), connection="strong")[0] == 100
    assert analysis.connected_components(patterns.bigbird(2048, 64))[0] == 1
    with pytest.raises(ValueError, match="connection"):
        analysis.connected_components(patterns.causal(4), connection="both")


def _dense_diameter(mask: np.ndarray, directed: bool) -> float:
    a = union(mask)
    if not directed:
        a = a | a.T
    d = csgraph.shortest_path(sp.csr_array(a.astype(np.float64)), unweighted=True, directed=True)
    return float(d.max()) if d.size else 0.0


@FAST
@given(square_masks(max_n=30), st.booleans())
def test_diameter_exact_matches_all_pairs_shortest_paths(mask, directed):
    p = pattern_of(mask)
    got = analysis.diameter(p, directed=directed)
    assert got.exact
    assert got.value == _dense_diameter(mask, directed)


@FAST
@given(square_masks(max_n=40, max_heads=1), st.integers(0, 3))
def test_sampled_diameter_is_a_lower_bound_and_exact_when_certified(mask, seed):
    p = pattern_of(mask)
    got = analysis.diameter(p, exact_limit=0, samples=3, seed=seed)
    truth = _dense_diameter(mask, False)
    if math.isinf(truth):
        assert math.isinf(got.value) and got.exact
    else:
        assert got.value <= truth
        if got.exact:
            assert got.value == truth


@pytest.mark.parametrize(
    "pattern,value,exact",
    [
        (patterns.sliding_window(64, 4, 4), 16, True),  # ceil(63 / 4)
        (patterns.causal_sliding_window(5000, 100), 51, False),  # ceil(4999 / 99), sampled
        (patterns.global_local(5000, 8, 8, [0]), 2, True),  # certified by the global token
        (patterns.bigbird(2048, 64), 2, True),
        (patterns.dense(2000), 1, True),
        (patterns.document(lengths=[2000, 100]), math.inf, True),
    ],
)
def test_diameter_named_cases(pattern, value, exact):
    d = analysis.diameter(pattern)
    assert d.value == value
    assert d.exact == exact
    assert str(d) == ("inf" if math.isinf(value) else f"{'' if exact else '≥'}{value}")


def test_diameter_directed_and_scan_path(monkeypatch):
    assert math.isinf(analysis.diameter(patterns.causal(50), directed=True).value)
    # the transpose-free search used for big graphs agrees with the adjacency-list search
    p = patterns.sliding_window(3000, 20, 3)
    expected = analysis.diameter(p, exact_limit=0, samples=4)
    monkeypatch.setattr(graph, "TRANSPOSE_LIMIT", 0)  # the module _Graph reads it from
    assert graph._Graph(p, False, "test").scan
    got = analysis.diameter(p, exact_limit=0, samples=4)
    assert got == expected and got.value == math.ceil(2999 / 20)
    assert analysis.diameter(patterns.sliding_window(40, 2, 1)).value == math.ceil(39 / 2)


def test_graph_functions_need_square_patterns():
    p = patterns.hierarchical(64, 8, 2, 2)
    for fn in (analysis.connected_components, analysis.diameter):
        with pytest.raises(ValueError, match="square"):
            fn(p)


def test_module_examples():
    assert doctest.testmod(graph).failed == 0
