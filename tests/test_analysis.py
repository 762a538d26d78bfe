"""sparse_ref.analysis: cost, receptive field, graph measures and the literature's numbers.

Brute-force references here use dense boolean matrices on small n (independent of the sparse code);
the literature's numbers at n = 8192 are checked against closed forms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csgraph

from sparse_ref import analysis, patterns
from sparse_ref.pattern import Pattern

FAST = settings(max_examples=40, deadline=None)


@st.composite
def square_masks(draw, max_n=24, max_heads=2):
    n = draw(st.integers(1, max_n))
    h = draw(st.integers(1, max_heads))
    p = draw(st.sampled_from([0.05, 0.15, 0.4]))
    seed = draw(st.integers(0, 2**31 - 1))
    mask = np.random.default_rng(seed).random((h, n, n)) < p
    return mask


def _pattern(mask: np.ndarray) -> Pattern:
    return Pattern.from_dense(mask if mask.shape[0] > 1 else mask[0])


def _union(mask: np.ndarray) -> np.ndarray:
    return mask.any(axis=0)


# ----------------------------------------------------------------------------------- density, cost
def test_window_256_covers_3_1_percent_of_8192():
    n, w = 8192, 256
    p = patterns.causal_sliding_window(n, w)
    nnz = n * w - w * (w - 1) // 2  # closed form: rows i < w see i + 1 keys
    assert p.nnz == nnz
    assert analysis.density(p) == pytest.approx(nnz / n**2)
    assert f"{100 * analysis.density(p):.1f}%" == "3.1%"
    # the two-sided Longformer window of w keys (w // 2 each side) covers the same 3.1%
    assert f"{100 * analysis.density(patterns.sliding_window(n, w // 2, w // 2)):.1f}%" == "3.1%"


def test_bigbird_coverage_at_8192_from_its_block_count():
    # BigBird-ITC as published: blocks of 64, 3 window blocks, first/last global, 3 random blocks
    n, b = 8192, 64
    nb = n // b
    p = patterns.bigbird(n, b)
    # global rows are full; every other block row has 3 window + 2 global + 3 random blocks, less
    # the window/global overlap of block rows 1 and nb - 2
    blocks = 2 * nb + (nb - 2) * 8 - 2
    bsr = p.to_bsr((b, b))
    assert bsr.nblocks == blocks and bsr.full.all()
    assert analysis.density(p) == pytest.approx(blocks * b * b / n**2)
    assert f"{100 * analysis.density(p):.1f}%" == "7.7%"


def test_cost_numbers():
    p = patterns.causal_sliding_window(1000, 37)
    c = analysis.cost(p, d=64)
    assert c.flops == 4 * p.nnz * 64
    assert c.dense_flops == 4 * 1000 * 1000 * 64
    assert c.flop_ratio == pytest.approx(p.density)
    assert c.backward_flops == 2 * c.flops == 8 * p.nnz * 64  # dP, dV, dQ, dK
    assert c.score_bytes == 4 * p.nnz and c.dense_score_bytes == 4 * 10**6
    assert c.io_bytes == 4 * (1000 * 128 + 1000 * 128)
    assert c.csr_bytes == 1001 * 8 + 4 * p.nnz
    bsr = p.to_bsr(128)
    assert c.bsr_block == (128, 128)
    assert (
        c.bsr_bytes
        == bsr.indptr.nbytes + bsr.indices.nbytes + bsr.mask_index.nbytes + bsr.mask_table.nbytes
    )
    c2 = analysis.cost(p, d=64, d_v=32, heads=8, dtype="bfloat16", block=(64, 32))
    assert c2.nnz == 8 * p.nnz
    assert c2.flops == 2 * 8 * p.nnz * (64 + 32)
    assert c2.backward_flops == 4 * 8 * p.nnz * (64 + 32)
    assert c2.itemsize == 2 and c2.bsr_block == (64, 32)
    assert c2.dense_score_bytes == 8 * 2 * 10**6


def test_cost_uses_the_block_form_of_a_block_pattern():
    p = patterns.causal_sliding_window(4096, 300, block=64)
    c = analysis.cost(p, d=16)
    assert c.bsr_block == (64, 64)
    assert c.flops == 4 * p.nnz * 16


def test_cost_validation():
    p = patterns.bigbird(64, 8, num_heads=2)
    with pytest.raises(ValueError, match="multiple"):
        analysis.cost(p, d=8, heads=3)
    with pytest.raises(ValueError, match="d must"):
        analysis.cost(p, d=0)


def test_dense_score_bytes_and_format():
    assert analysis.dense_score_bytes(8192) == 256 * 2**20
    assert analysis.dense_score_bytes(8192, dtype="float16", heads=16) == 16 * 128 * 2**20
    assert analysis.format_bytes(256 * 2**20) == "256 MiB"
    assert analysis.format_bytes(2**30) == "1 GiB"
    assert analysis.format_bytes(999) == "999 B"


# ---------------------------------------------------------------------------- receptive field
def _dense_reach(masks: list[np.ndarray], residual: bool) -> np.ndarray:
    """Reference: the product A_L ... A_1 of dense 0/1 matrices (top layer first)."""
    n = masks[0].shape[-1]
    reach = np.eye(n, dtype=np.int64)
    for m in reversed(masks):
        a = _union(m).astype(np.int64) if m.ndim == 3 else m.astype(np.int64)
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
    p = _pattern(mask)
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


# ------------------------------------------------------------------------------------- graphs
@FAST
@given(square_masks(max_n=30), st.sampled_from(["weak", "strong"]))
def test_connected_components_match_scipy(mask, connection):
    p = _pattern(mask)
    count, labels = analysis.connected_components(p, connection=connection)
    ref_count, ref_labels = csgraph.connected_components(
        sp.csr_array(_union(mask)), directed=True, connection=connection
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
    a = _union(mask)
    if not directed:
        a = a | a.T
    d = csgraph.shortest_path(sp.csr_array(a.astype(np.float64)), unweighted=True, directed=True)
    return float(d.max()) if d.size else 0.0


@FAST
@given(square_masks(max_n=30), st.booleans())
def test_diameter_exact_matches_all_pairs_shortest_paths(mask, directed):
    p = _pattern(mask)
    got = analysis.diameter(p, directed=directed)
    assert got.exact
    assert got.value == _dense_diameter(mask, directed)


@FAST
@given(square_masks(max_n=40, max_heads=1), st.integers(0, 3))
def test_sampled_diameter_is_a_lower_bound_and_exact_when_certified(mask, seed):
    p = _pattern(mask)
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
    monkeypatch.setattr(analysis, "TRANSPOSE_LIMIT", 0)
    got = analysis.diameter(p, exact_limit=0, samples=4)
    assert got == expected and got.value == math.ceil(2999 / 20)
    assert analysis.diameter(patterns.sliding_window(40, 2, 1)).value == math.ceil(39 / 2)


def test_graph_functions_need_square_patterns():
    p = patterns.hierarchical(64, 8, 2, 2)
    for fn in (analysis.connected_components, analysis.diameter):
        with pytest.raises(ValueError, match="square"):
            fn(p)


# -------------------------------------------------------------------------------------- tables
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


def test_literature_patterns_are_the_published_configurations():
    lit = analysis.literature_patterns(1024, include_dense=False)
    assert "full (Vaswani 2017)" not in lit
    bb = lit["BigBird ITC (b=64, 3+2+3)"]
    assert (
        bb.family == "bigbird" and bb.params["block"] == 64 and bb.params["num_random_blocks"] == 3
    )
    assert lit["window 256 causal (Mistral)"].params == {"n": 1024, "window": 256}
    assert set(analysis.COMPLEXITY) >= {p.family for p in lit.values()}


@pytest.mark.parametrize("module", ["metrics", "receptive", "graph", "tables", "presets"])
def test_module_examples(module):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(f"sparse_ref.analysis.{module}")).failed == 0


def test_the_public_names_stay_in_the_package():
    assert all(hasattr(analysis, name) for name in analysis.__all__)
    assert analysis.cost.__module__ == "sparse_ref.analysis.metrics"
