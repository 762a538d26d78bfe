"""The catalog as a whole (``sparse_ref.patterns``): ``available``/``build`` round trips, edge cases
across families, parameter validation, and every structured family through the Numba kernel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import expect_pattern

import sparse_ref
from sparse_ref import patterns, testing
from sparse_ref.pattern import Pattern
from sparse_ref.patterns import (
    bigbird,
    block_topk,
    causal,
    causal_sliding_window,
    dense,
    dilated,
    document,
    global_local,
    hierarchical,
    lsh,
    neighborhood_2d,
    prefix_lm,
    random,
    routing,
    sinks,
    sliding_window,
    sparse_transformer_fixed,
    sparse_transformer_strided,
    strided,
    topk,
    vertical_slash,
)
from sparse_ref.patterns.hierarchical import hierarchical_keys


@pytest.mark.parametrize(
    ("pattern", "mask"),
    [
        (dense(1), [[1]]),
        (causal(1), [[1]]),
        (causal(2, 4), [[1, 0, 0, 0], [1, 1, 0, 0]]),
        (causal(2, 4, "bottom_right"), [[1, 1, 1, 0], [1, 1, 1, 1]]),
        (causal(4, 2), [[1, 0], [1, 1], [1, 1], [1, 1]]),
        (causal(4, 2, "bottom_right"), [[0, 0], [0, 0], [1, 0], [1, 1]]),  # empty rows
        (sliding_window(3, 0, 0), np.eye(3)),
        (sliding_window(3, 9, 9), np.ones((3, 3))),  # window > n
        (causal_sliding_window(3, 0), np.zeros((3, 3))),  # window 0: every row empty
        (causal_sliding_window(3, 1), np.eye(3)),
        (causal_sliding_window(3, 7), np.tril(np.ones((3, 3)))),
        (dilated(4, 0, 3), np.eye(4)),
        (strided(3, 1), np.ones((3, 3))),
        (strided(3, 5), np.eye(3)),
        (sinks(3, 0, 0), np.zeros((3, 3))),
        (sinks(3, 5, 0), np.tril(np.ones((3, 3)))),
        (prefix_lm(3, 0), np.tril(np.ones((3, 3)))),
        (prefix_lm(3, 10), np.ones((3, 3))),
        (global_local(3, 0, 0, []), np.eye(3)),
        (global_local(3, 0, 0, [-1, 2, 2]), [[1, 0, 1], [0, 1, 1], [1, 1, 1]]),
        (document([7, 7, 7]), np.ones((3, 3))),  # one document
        (document(lengths=[3]), np.ones((3, 3))),
        (document(lengths=[]), np.zeros((0, 0))),
        (document(lengths=[0, 2, 0]), np.ones((2, 2))),
        (random(1, per_row=3), [[1]]),
        (random(3, per_row=0, include_self=False), np.zeros((3, 3))),
        (random(3, per_row=5), np.ones((3, 3))),  # fewer admissible keys than per_row: all
        (random(3, per_row=5, causal=True), np.tril(np.ones((3, 3)))),
    ],
    ids=lambda x: x.family if isinstance(x, Pattern) else "",
)
def test_edge_cases(pattern, mask):
    expect_pattern(pattern, np.asarray(mask, dtype=bool))


def test_empty_shapes():
    for p in [
        dense(0),
        causal(0, 3),
        causal(3, 0),
        sliding_window(0, 1, 1),
        random(0, 4, per_row=2),
    ]:
        assert p.nnz == 0
        expect_pattern(p, np.zeros(p.shape, dtype=bool))


EXAMPLES = {
    "dense": dense(3, 5),
    "causal": causal(4, 6, "bottom_right"),
    "sliding_window": sliding_window(9, 2, 1),
    "causal_sliding_window": causal_sliding_window(9, 3),
    "dilated": dilated(11, 5, 2, causal=True),
    "strided": strided(11, 3),
    "global_local": global_local(12, 1, 2, [0, -1, 5]),
    "sinks": sinks(10, 2, 3),
    "prefix_lm": prefix_lm(8, 3),
    "document": document(lengths=[3, 0, 4]),
    "random": random(10, 12, 3, seed=5, causal=True, include_self=False),
}


def test_examples_cover_every_family_of_these_modules():
    mine = {name for module in patterns._MODULES[:5] for name in module.__all__}
    assert mine == set(EXAMPLES)
    assert mine <= set(patterns.available())


@pytest.mark.parametrize("family", sorted(EXAMPLES))
def test_build_round_trip(family):
    p = EXAMPLES[family]
    assert p.family == family
    params = json.loads(json.dumps(p.params))  # survives JSON
    assert all(not isinstance(v, tuple) for v in params.values())
    assert patterns.build(family, **params) == p


def test_available_and_reexports():
    names = patterns.available()
    assert names == sorted(names) and len(set(names)) == len(names)
    for module in patterns._MODULES:
        for name in module.__all__:
            assert getattr(patterns, name) is getattr(module, name), name
            assert name in names and name in patterns.__all__


def test_build_rejects_unknown_and_custom():
    with pytest.raises(ValueError, match="unknown family 'nope'.*causal_sliding_window"):
        patterns.build("nope")
    with pytest.raises(ValueError, match="custom"):
        patterns.build("custom")
    with pytest.raises(TypeError):
        patterns.build("causal", n=3)  # wrong parameter name


def test_build_derived_families():
    a, b = sliding_window(8, 1, 1), strided(8, 3)
    for p in [
        a | b,
        a & b,
        a - b,
        (a | b).causal("bottom_right"),
        a.transpose(),
        Pattern.stack([a, b]),
        Pattern.stack([a, b]).head(1),
        ((a - b) | causal(8)).transpose(),
    ]:
        params = json.loads(json.dumps(p.params))
        assert patterns.build(p.family, **params) == p, p.family
    with pytest.raises(ValueError, match="of"):
        patterns.build("union", of=[a.params])
    with pytest.raises(ValueError, match="custom"):
        patterns.build("transpose", **Pattern.from_dense(np.eye(2, dtype=bool)).transpose().params)


BAD_ARGS = [
    (dense, (-1,), {}, ValueError, "n_q"),
    (dense, (2, -1), {}, ValueError, "n_k"),
    (dense, (2.0,), {}, TypeError, "n_q"),
    (causal, (True,), {}, TypeError, "n_q"),
    (causal, (3,), {"align": "bottom-right"}, ValueError, "align"),
    (sliding_window, (4, -1, 0), {}, ValueError, "left"),
    (sliding_window, (4, 0, -2), {}, ValueError, "right"),
    (sliding_window, (4, 1.5, 0), {}, TypeError, "left"),
    (sliding_window, ("4", 1, 0), {}, TypeError, "n"),
    (causal_sliding_window, (4, -1), {}, ValueError, "window"),
    (causal_sliding_window, (4, False), {}, TypeError, "window"),
    (causal_sliding_window, (-4, 1), {}, ValueError, "n"),
    (dilated, (8, 3, 0), {}, ValueError, "dilation"),
    (dilated, (8, -3, 1), {}, ValueError, "window"),
    (dilated, (8, 3, 1), {"causal": 1}, TypeError, "causal"),
    (strided, (8, 0), {}, ValueError, "stride"),
    (strided, (8, None), {}, TypeError, "stride"),
    (strided, (8, 2), {"causal": "yes"}, TypeError, "causal"),
    (global_local, (4, 1, 1, [4]), {}, ValueError, "global_tokens"),
    (global_local, (4, 1, 1, [-5]), {}, ValueError, "global_tokens"),
    (global_local, (4, 1, 1, [1.0]), {}, TypeError, "global_tokens"),
    (global_local, (4, 1, 1, 2), {}, TypeError, "global_tokens"),
    (global_local, (4, -1, 1, []), {}, ValueError, "left"),
    (sinks, (4, -1, 2), {}, ValueError, "num_sinks"),
    (sinks, (4, 1, -2), {}, ValueError, "window"),
    (prefix_lm, (4, -1), {}, ValueError, "prefix"),
    (document, (), {}, ValueError, "seq_ids, lengths and cu_seqlens"),
    (document, ([0, 1],), {"lengths": [2]}, ValueError, "seq_ids, lengths and cu_seqlens"),
    (document, (), {"lengths": [2, -1]}, ValueError, r"lengths\[1\]"),
    (document, (), {"lengths": [2.0]}, TypeError, "lengths"),
    (document, ([0.5, 1],), {}, TypeError, "seq_ids"),
    (document, ([[0, 1]],), {}, TypeError, "seq_ids"),
    (random, (4,), {"per_row": -1}, ValueError, "per_row"),
    (random, (4,), {"per_row": 1, "seed": -1}, ValueError, "seed"),
    (random, (4,), {"per_row": 1, "seed": 1.5}, TypeError, "seed"),
    (random, (4,), {"per_row": 1, "seed": None}, TypeError, "seed"),
    (random, (4,), {"per_row": 1, "seed": np.random.default_rng(0)}, TypeError, "seed"),
    (random, (4,), {"per_row": 1, "causal": None}, TypeError, "causal"),
    (random, (4,), {"per_row": 1, "include_self": 0}, TypeError, "include_self"),
    (random, (4, -2), {"per_row": 1}, ValueError, "n_k"),
]


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "exc", "name"),
    BAD_ARGS,
    ids=[f"{b[0].__name__}-{b[4]}" for b in BAD_ARGS],
)
def test_validation_names_the_parameter(fn, args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        fn(*args, **kwargs)


def test_numpy_ints_are_accepted_and_params_stay_plain():
    p = sliding_window(np.int64(6), np.int32(1), np.uint8(2))
    assert p == sliding_window(6, 1, 2)
    assert all(type(v) is int for v in p.params.values())
    assert global_local(np.int64(5), 0, 0, np.array([4, 0])).params["global_tokens"] == [0, 4]


X_ZERO = np.zeros((4, 2))


BAD_CALLS = [
    (lambda: sparse_transformer_strided(-1, 2), ValueError, "n"),
    (lambda: sparse_transformer_strided(8, 0), ValueError, "stride"),
    (lambda: sparse_transformer_strided(8, 2, split_heads=1), TypeError, "split_heads"),
    (lambda: sparse_transformer_fixed(8, 2.0, 1), TypeError, "stride"),
    (lambda: sparse_transformer_fixed(8, 2, 3), ValueError, "c must be <= stride"),
    (lambda: sparse_transformer_fixed(8, 2, -1), ValueError, "c"),
    (lambda: bigbird(0, 2), ValueError, "n"),
    (lambda: bigbird(8, 0), ValueError, "block"),
    (lambda: bigbird(8, 2, num_window_blocks=-1), ValueError, "num_window_blocks"),
    (lambda: bigbird(8, 2, global_blocks=[4]), ValueError, "global_blocks"),
    (lambda: bigbird(8, 2, global_blocks=[0.5]), TypeError, "global_blocks"),
    (lambda: bigbird(8, 2, num_random_blocks=-2), ValueError, "num_random_blocks"),
    (lambda: bigbird(8, 2, seed=-1), ValueError, "seed"),
    (lambda: bigbird(8, 2, num_heads=0), ValueError, "num_heads"),
    (lambda: neighborhood_2d(0, 4, 1), ValueError, "height"),
    (lambda: neighborhood_2d(4, 4.0, 1), TypeError, "width"),
    (lambda: neighborhood_2d(4, 4, 5), ValueError, "kernel \\* dilation along height"),
    (lambda: neighborhood_2d(4, 4, 2, dilation=3), ValueError, "kernel \\* dilation"),
    (lambda: neighborhood_2d(4, 4, (1, 2, 3)), ValueError, "kernel"),
    (lambda: neighborhood_2d(4, 4, 0), ValueError, "kernel"),
    (lambda: neighborhood_2d(4, 4, 1, dilation=(1, 0)), ValueError, "dilation\\[1\\]"),
    (lambda: neighborhood_2d(4, 4, 1, causal=(True, 1)), TypeError, "causal\\[1\\]"),
    (lambda: vertical_slash(4, [4], [0]), ValueError, "vertical"),
    (lambda: vertical_slash(4, [0], [-1]), ValueError, "slash"),
    (lambda: vertical_slash(4, [0], [4], causal=False), ValueError, "slash"),
    (lambda: vertical_slash(4, [0], ["a"]), TypeError, "slash"),
    (lambda: vertical_slash(4, [0], [0], causal="yes"), TypeError, "causal"),
    (lambda: hierarchical(4, 0, 1, 1), ValueError, "block"),
    (lambda: hierarchical(4, 2, -1, 1), ValueError, "left"),
    (lambda: hierarchical(4, 2, 1, None), TypeError, "right"),
    (lambda: hierarchical_keys(X_ZERO, np.zeros((3, 2)), 2), ValueError, "k and v"),
    (lambda: hierarchical_keys(X_ZERO, X_ZERO.astype(int), 2), TypeError, "v"),
    (lambda: hierarchical_keys(X_ZERO, X_ZERO, 0), ValueError, "block"),
    (lambda: lsh(np.zeros(4), 2), ValueError, "x must be 2-D"),
    (lambda: lsh(X_ZERO.astype(int), 2), TypeError, "x must have dtype"),
    (lambda: lsh(X_ZERO + np.nan, 2), ValueError, "x must be finite"),
    (lambda: lsh(X_ZERO, 3), ValueError, "num_buckets must be even"),
    (lambda: lsh(X_ZERO, 2, num_hashes=0), ValueError, "num_hashes"),
    (lambda: lsh(X_ZERO, 2, seed=True), TypeError, "seed"),
    (lambda: lsh(X_ZERO, 2, x_fingerprint="abc"), ValueError, "x_fingerprint"),
    (lambda: lsh(np.zeros((4, 0)), 2), ValueError, "x must have d >= 1"),
    (lambda: routing(X_ZERO, np.zeros((4, 3)), 2), ValueError, "same d"),
    (lambda: routing(X_ZERO, X_ZERO, 9), ValueError, "num_clusters"),
    (lambda: routing(X_ZERO, X_ZERO, 2, iters=-1), ValueError, "iters"),
    (lambda: routing(X_ZERO, X_ZERO[None], 2), ValueError, "k must be 2-D"),
    (lambda: topk(X_ZERO, X_ZERO, -1), ValueError, "per_row"),
    (lambda: topk(X_ZERO, X_ZERO, 1, scale=0.0), ValueError, "scale"),
    (lambda: topk(X_ZERO, X_ZERO, 1, scale="1"), TypeError, "scale"),
    (lambda: topk(X_ZERO, X_ZERO, 1, causal=None), TypeError, "causal"),
    (lambda: topk(X_ZERO, X_ZERO, 1, q_fingerprint=3), TypeError, "q_fingerprint"),
    (lambda: topk(X_ZERO + 1e200, X_ZERO + 1e200, 1), ValueError, "overflow"),
    (lambda: block_topk(X_ZERO, X_ZERO, 0, 1), ValueError, "block"),
    (lambda: block_topk(X_ZERO, X_ZERO, 2, -1), ValueError, "blocks_per_row"),
    (lambda: block_topk(X_ZERO, X_ZERO, 2, 1, include_local=0), TypeError, "include_local"),
    (
        lambda: block_topk(X_ZERO.astype(np.complex128), X_ZERO, 2, 1),
        TypeError,
        "q must have dtype",
    ),
]


@pytest.mark.parametrize("make, exc, match", BAD_CALLS)
def test_validation_names_parameter(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


_R = np.random.default_rng(7)


_QK = _R.standard_normal((48, 16))


_Q2, _K2 = _R.standard_normal((40, 16)), _R.standard_normal((48, 16))


KERNEL_CASES = {
    "sparse_transformer_strided": lambda: sparse_transformer_strided(48, 6),
    "sparse_transformer_strided_split": lambda: sparse_transformer_strided(48, 6, True),
    "sparse_transformer_fixed": lambda: sparse_transformer_fixed(48, 8, 2),
    "bigbird": lambda: bigbird(45, 4, num_random_blocks=2, seed=1, num_heads=2),
    "neighborhood_2d": lambda: neighborhood_2d(6, 8, 3, dilation=(1, 2), causal=(False, True)),
    "vertical_slash": lambda: vertical_slash(48, [0, 5, -1], [0, 1, 7]),
    "hierarchical": lambda: hierarchical(48, 5, 3, 2),
    "lsh": lambda: lsh(_QK, 6, 2, seed=3, causal=True),
    "routing": lambda: routing(_Q2, _K2, 4, seed=2),
    "topk": lambda: topk(_Q2, _K2, 5, causal=True),
    "block_topk": lambda: block_topk(_Q2, _K2, 8, 2, causal=True),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_kernel_matches_oracle(case, dtype):
    p = KERNEL_CASES[case]()
    n_q, n_k = p.shape
    rng = np.random.default_rng(11)
    heads = p.num_heads
    q = rng.standard_normal((heads, n_q, 16)).astype(dtype)
    if case == "hierarchical":
        k, v = hierarchical_keys(
            rng.standard_normal((heads, 48, 16)), rng.standard_normal((heads, 48, 8)), 5
        )
        k, v = k.astype(dtype), v.astype(dtype)
    else:
        k = rng.standard_normal((heads, n_k, 16)).astype(dtype)
        v = rng.standard_normal((heads, n_k, 8)).astype(dtype)
    out, lse = sparse_ref.attention(q, k, v, p, backend="numba", return_lse=True)
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse)
