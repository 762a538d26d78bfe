"""sparse_ref.analysis.receptive: the receptive field against dense boolean matrix products on
small n, and the closed forms of windows."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from analysis_cases import FAST, pattern_of, square_masks, union
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import analysis, patterns
from sparse_ref.analysis import receptive
from sparse_ref.pattern import Pattern


def _dense_reach(masks: list[np.ndarray], residual: bool) -> np.ndarray:
    """Reference: the product A_L ... A_1 of dense 0/1 matrices (top layer first)."""
    n = masks[0].shape[-1]
    reach = np.eye(n, dtype=np.int64)
    for m in reversed(masks):
        a = union(m).astype(np.int64) if m.ndim == 3 else m.astype(np.int64)
        if residual:
            a = a | np.eye(n, dtype=np.int64)
        reach = ((reach @ a) > 0).astype(np.int64)
    return reach.astype(bool)


@FAST
@given(st.data())
def test_receptive_field_matches_dense_products(data):
    mask = data.draw(square_masks())
    n = mask.shape[-1]
    other = np.random.default_rng(n).random((n, n)) < 0.1
    layers = data.draw(st.integers(1, 4))
    residual = data.draw(st.booleans())
    hybrid = data.draw(st.booleans())
    p = pattern_of(mask)
    q = Pattern.from_dense(other)
    stack = [p, q] if hybrid else p
    masks = [mask, other] * layers if hybrid else [mask] * layers
    rf = analysis.receptive_field(stack, layers if not hybrid else 2 * layers, residual=residual)
    expected = _dense_reach(masks, residual)
    assert rf.reach.shape == (n, n)
    np.testing.assert_array_equal(rf.reach.toarray(), expected)
    np.testing.assert_array_equal(rf.sizes, expected.sum(axis=1))


@pytest.mark.parametrize("w,layers", [(256, 4), (16, 1), (16, 7), (3, 10)])
def test_receptive_field_of_a_causal_window_is_L_times_w(w, layers):
    n = 4096
    p = patterns.causal_sliding_window(n, w)
    rf = analysis.receptive_field(p, layers, rows=[n - 1, n // 2])
    # each layer adds w - 1 earlier tokens: L * (w - 1) + 1, the literature's "L * w"
    assert rf.sizes.tolist() == [layers * (w - 1) + 1] * 2
    assert rf.spans.tolist() == rf.sizes.tolist()  # contiguous
    assert rf.max == layers * (w - 1) + 1
    assert rf.coverage == pytest.approx(rf.max / n)


def test_receptive_field_of_a_two_sided_window():
    p = patterns.sliding_window(2048, 10, 5)
    rf = analysis.receptive_field(p, 3, rows=[1024])
    assert rf.sizes.tolist() == [3 * 15 + 1]
    assert rf.reach.indices.min() == 1024 - 30 and rf.reach.indices.max() == 1024 + 15


def test_receptive_field_hybrid_stack_and_cycling():
    n = 512
    window = patterns.causal_sliding_window(n, 8)
    stack = [window, window, window, patterns.dense(n)]
    assert analysis.receptive_field(stack, rows=[0, 300]).sizes.tolist() == [n, n]
    # cycled to 8 layers; a causal stack (dense made causal) only reaches earlier tokens
    causal_stack = [window, patterns.causal(n)]
    rf = analysis.receptive_field(causal_stack, layers=5, rows=[300])
    assert rf.layers == 5 and rf.sizes.tolist() == [301]
    # bottom layer first: a dense layer *below* three windows still reaches everything
    assert analysis.receptive_field(stack[::-1], rows=[7]).max == n


def test_receptive_field_at_large_n_never_builds_n_squared():
    n = 200_000  # n * n bools would be 40 GB
    p = patterns.causal_sliding_window(n, 16)
    rf = analysis.receptive_field(p, 3, rows=[n - 1])
    assert rf.sizes.tolist() == [46]


def test_receptive_field_default_rows_and_validation():
    p = patterns.sliding_window(3000, 1, 1)
    rf = analysis.receptive_field(p, 2)
    assert len(rf.rows) == 65 and {0, 1500, 2999} <= set(rf.rows.tolist())
    assert len(analysis.receptive_field(patterns.sliding_window(50, 1, 1)).rows) == 50
    with pytest.raises(ValueError, match="square"):
        analysis.receptive_field(patterns.hierarchical(64, 8, 2, 2))
    with pytest.raises(ValueError, match="layer 1"):
        analysis.receptive_field([p, patterns.causal(10)])
    with pytest.raises(ValueError, match="rows"):
        analysis.receptive_field(p, rows=[3000])
    with pytest.raises(TypeError):
        analysis.receptive_field([])


def test_module_examples():
    assert doctest.testmod(receptive).failed == 0
