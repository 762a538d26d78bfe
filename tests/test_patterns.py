"""The pattern catalog against brute-force predicates written independently of the builders.

Each family's rule is restated here as an elementwise predicate over broadcast index grids ``i``
(query, column vector) and ``j`` (key, row vector); the builders never evaluate such a grid.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ref import patterns
from sparse_ref.pattern import Pattern
from sparse_ref.patterns import (
    _ranges,
    causal,
    causal_sliding_window,
    dense,
    dilated,
    document,
    global_local,
    prefix_lm,
    random,
    sinks,
    sliding_window,
    strided,
)

# At least 60 examples per property (more under HYPOTHESIS_PROFILE=slow, see conftest.py).
FAST = settings(max_examples=max(60, settings.default.max_examples), deadline=None)

sizes = st.integers(0, 40)
small = st.integers(0, 50)  # windows, strides, ... sometimes larger than n


def grid(n_q: int, n_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    n_k = n_q if n_k is None else n_k
    return np.arange(n_q)[:, None], np.arange(n_k)[None, :]


def expect(pattern: Pattern, mask: np.ndarray) -> None:
    """``pattern`` equals the brute-force ``mask`` (broadcast to the pattern's shape)."""
    mask = np.broadcast_to(mask, pattern.shape)
    np.testing.assert_array_equal(pattern.to_dense(), mask)
    assert pattern == Pattern.from_dense(np.ascontiguousarray(mask))
    assert_canonical(pattern)
    assert patterns.build(pattern.family, **pattern.params) == pattern


def assert_canonical(pattern: Pattern) -> None:
    csr = pattern.to_csr()
    assert csr.indices.dtype == np.int32 and csr.indptr.dtype == np.int32
    assert csr.data.dtype == bool and csr.data.all()
    assert csr.indptr[0] == 0 and csr.indptr[-1] == len(csr.indices) == len(csr.data)
    assert (np.diff(csr.indptr) >= 0).all()
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    same_row = rows[1:] == rows[:-1]
    assert (np.diff(csr.indices.astype(np.int64))[same_row] > 0).all(), "sorted, no duplicates"
    if len(csr.indices):
        assert 0 <= csr.indices.min() and csr.indices.max() < csr.shape[1]
    json.dumps(pattern.params)  # JSON-able


# --------------------------------------------------------------------------- rules vs brute force
@FAST
@given(sizes, st.one_of(st.none(), sizes))
def test_dense(n_q, n_k):
    p = dense(n_q, n_k)
    expect(p, np.ones(p.shape, dtype=bool))


@FAST
@given(sizes, st.one_of(st.none(), sizes), st.sampled_from(["top_left", "bottom_right"]))
def test_causal(n_q, n_k, align):
    p = causal(n_q, n_k, align=align)
    nk = n_q if n_k is None else n_k
    i, j = grid(n_q, nk)
    expect(p, j <= i + (nk - n_q if align == "bottom_right" else 0))


@FAST
@given(sizes, small, small)
def test_sliding_window(n, left, right):
    i, j = grid(n)
    expect(sliding_window(n, left, right), (i - left <= j) & (j <= i + right))


@FAST
@given(sizes, small)
def test_causal_sliding_window(n, window):
    i, j = grid(n)
    expect(causal_sliding_window(n, window), (i - window < j) & (j <= i))


@FAST
@given(sizes, small, st.integers(1, 12), st.booleans())
def test_dilated(n, window, dilation, is_causal):
    mask = np.zeros((n, n), dtype=bool)
    for i, j in itertools.product(range(n), range(n)):  # j = i + t * dilation for some admissible t
        ts = range(-(window // 2), (0 if is_causal else window // 2) + 1)
        mask[i, j] = any(j == i + t * dilation for t in ts)
    expect(dilated(n, window, dilation, causal=is_causal), mask)


@FAST
@given(sizes, st.integers(1, 45), st.booleans())
def test_strided(n, stride, is_causal):
    i, j = grid(n)
    expect(
        strided(n, stride, causal=is_causal), ((i - j) % stride == 0) & ((j <= i) | (not is_causal))
    )


@FAST
@given(st.integers(1, 40), small, small, st.data())
def test_global_local(n, left, right, data):
    tokens = data.draw(st.lists(st.integers(-n, n - 1), max_size=8))
    g = np.zeros(n, dtype=bool)
    for t in tokens:
        g[t] = True  # Python indexing: negatives count from the end
    i, j = grid(n)
    expect(
        global_local(n, left, right, tokens),
        ((i - left <= j) & (j <= i + right)) | g[:, None] | g[None, :],
    )


@FAST
@given(sizes, small, small)
def test_sinks(n, num_sinks, window):
    i, j = grid(n)
    expect(sinks(n, num_sinks, window), (j <= i) & ((j < num_sinks) | (j > i - window)))


@FAST
@given(sizes, small)
def test_prefix_lm(n, prefix):
    i, j = grid(n)
    expect(prefix_lm(n, prefix), (j < prefix) | (j <= i))


@FAST
@given(st.lists(st.integers(-3, 3), max_size=40))
def test_document_seq_ids(ids):
    arr = np.asarray(ids, dtype=np.int64)
    expect(document(ids), arr[:, None] == arr[None, :])


@FAST
@given(st.lists(st.integers(0, 7), max_size=8))
def test_document_lengths(lengths):
    ids = np.concatenate([[d] * size for d, size in enumerate(lengths)] + [[]]).astype(np.int64)
    p = document(lengths=lengths)
    expect(p, ids[:, None] == ids[None, :])
    assert p == document(ids.tolist())


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
    expect(pattern, np.asarray(mask, dtype=bool))


def test_empty_shapes():
    for p in [
        dense(0),
        causal(0, 3),
        causal(3, 0),
        sliding_window(0, 1, 1),
        random(0, 4, per_row=2),
    ]:
        assert p.nnz == 0
        expect(p, np.zeros(p.shape, dtype=bool))


def test_window_rule_conventions():
    # DESIGN §4: "half = (w-1)//2" tutorials map to sliding_window(n, (w-1)//2, (w-1)//2); Mistral's
    # window counts the token itself.
    assert (
        causal_sliding_window(20, 5)
        == sliding_window(20, 4, 0).causal()
        == sliding_window(20, 4, 0)
    )
    assert causal(9) == causal_sliding_window(9, 9) == prefix_lm(9, 0) == sinks(9, 0, 9)


def test_large_builds_use_the_rectangular_path():
    # Big enough that the bulk goes through the broadcast fill and the edges through the ragged one.
    n, w = 3000, 300
    p = causal_sliding_window(n, w)
    csr = p.to_csr()
    assert p.nnz == sum(min(i + 1, w) for i in range(n))
    np.testing.assert_array_equal(csr.indices[csr.indptr[2999] :], np.arange(2700, 3000))
    np.testing.assert_array_equal(csr.indices[csr.indptr[5] : csr.indptr[6]], np.arange(6))
    expect(p, np.tri(n, k=0, dtype=bool) & ~np.tri(n, k=-w, dtype=bool))
    g = global_local(3000, 200, 100, [0, 1, 2, 1500, 2999])
    i, j = grid(3000)
    is_g = np.isin(np.arange(3000), [0, 1, 2, 1500, 2999])
    expect(g, ((i - 200 <= j) & (j <= i + 100)) | is_g[:, None] | is_g[None, :])
    d = document(lengths=[700, 1, 1200, 99])
    ids = np.repeat(np.arange(4), [700, 1, 1200, 99])
    expect(d, ids[:, None] == ids[None, :])


@pytest.mark.parametrize(("min_keys", "chunk"), [(1, 1 << 22), (1 << 60, 5), (1 << 60, 1 << 22)])
def test_fill_paths_agree(monkeypatch, min_keys, chunk):
    # The rectangular fill, the ragged fill and its chunking must give the same arrays.
    cases = [
        lambda: causal_sliding_window(300, 40),
        lambda: sinks(200, 3, 17),
        lambda: dilated(250, 9, 3),
        lambda: strided(90, 4, causal=True),
        lambda: global_local(150, 5, 9, [0, 1, 70, 149]),
        lambda: document(lengths=[50, 1, 80, 0, 20]),
        lambda: dense(40, 30),
    ]
    want = [make() for make in cases]
    monkeypatch.setattr(_ranges, "_MIN_KEYS_PER_CALL", min_keys)
    monkeypatch.setattr(_ranges, "_RAGGED_CHUNK", chunk)
    for make, p in zip(cases, want, strict=True):
        got = make()
        assert got == p, got.family
        np.testing.assert_array_equal(got.to_csr().indices, p.to_csr().indices)


# --------------------------------------------------------------------------- block form
def structured_params(family, n, a, b, tokens):
    """Parameters of a structured family (one with ``block=``) from a few drawn integers."""
    return {
        "dense": {"n_q": n, "n_k": a},
        "causal": {"n_q": n, "n_k": a, "align": "bottom_right" if b % 2 else "top_left"},
        "sliding_window": {"n": n, "left": a, "right": b},
        "causal_sliding_window": {"n": n, "window": a},
        "sinks": {"n": n, "num_sinks": a, "window": b},
        "prefix_lm": {"n": n, "prefix": a},
        "global_local": {"n": n, "left": a, "right": b, "global_tokens": [t % n for t in tokens]},
    }[family]


STRUCTURED = ["causal", "causal_sliding_window", "dense", "global_local", "prefix_lm", "sinks"]
STRUCTURED += ["sliding_window"]
blocks = st.one_of(st.integers(1, 9), st.tuples(st.integers(1, 9), st.integers(1, 9)))


@FAST
@given(st.sampled_from(STRUCTURED), st.integers(1, 40), small, small, st.lists(small), blocks)
def test_block_form_equals_token_csr(family, n, a, b, tokens, block):
    params = structured_params(family, n, a, b, tokens)
    token = patterns.build(family, **params)
    blocked = patterns.build(family, **params, block=block)
    bq, bk = (block, block) if isinstance(block, int) else block
    assert blocked.block == (bq, bk) and token.block is None
    assert blocked.family == family and blocked.params == {
        **token.params,
        "block": blocked.params["block"],
    }
    np.testing.assert_array_equal(blocked.to_dense(), token.to_dense())
    assert blocked == token and token == blocked
    assert blocked.fingerprint() == token.fingerprint() and hash(blocked) == hash(token)
    rebuilt = patterns.build(family, **json.loads(json.dumps(blocked.params)))
    assert rebuilt.block == (bq, bk) and rebuilt == token


def test_block_form_skips_token_csr_at_scale():
    n, w = 1 << 20, 4096  # 4.3e9 token nonzeros: token CSR would need ~17 GB
    p = causal_sliding_window(n, w, block=128)
    assert p.block == (128, 128) and p.nnz == n * w - w * (w - 1) // 2
    assert patterns.build(p.family, **p.params).nnz == p.nnz
    with pytest.raises(ValueError, match="CSR_LIMIT"):
        p.to_csr()


def test_block_validation_names_block():
    with pytest.raises((ValueError, TypeError), match="block"):
        causal(8, block=0)
    with pytest.raises((ValueError, TypeError), match="block"):
        sliding_window(8, 1, 1, block=(2, 2, 2))


# --------------------------------------------------------------------------- random
def admissible(n_q, n_k, is_causal):
    i, j = grid(n_q, n_k)
    return np.broadcast_to((j <= i) | (not is_causal), (n_q, n_k))


@FAST
@given(
    sizes,
    st.one_of(st.none(), sizes),
    st.integers(0, 45),
    st.integers(0, 2**32),
    st.booleans(),
    st.booleans(),
)
def test_random_rows(n_q, n_k, per_row, seed, is_causal, include_self):
    p = random(n_q, n_k, per_row, seed=seed, causal=is_causal, include_self=include_self)
    nk = n_q if n_k is None else n_k
    mask = p.to_dense()
    assert p.shape == (n_q, nk)
    assert_canonical(p)  # sorted and distinct keys
    allowed = admissible(n_q, nk, is_causal)
    assert not (mask & ~allowed).any(), "only admissible keys"
    diag = np.eye(n_q, nk, dtype=bool)
    if include_self:
        assert (mask[diag]).all(), "self is always present when i < n_k"
    drawn = mask & ~(diag & include_self)
    pool = allowed & ~(diag & include_self)
    np.testing.assert_array_equal(drawn.sum(axis=1), np.minimum(per_row, pool.sum(axis=1)))
    assert random(n_q, n_k, per_row, seed=seed, causal=is_causal, include_self=include_self) == p
    assert patterns.build("random", **p.params) == p


def test_random_seeds():
    a = random(64, per_row=8, seed=1)
    assert a == random(64, per_row=8, seed=1)
    assert a != random(64, per_row=8, seed=2)
    assert a.params["seed"] == 1


@pytest.mark.parametrize(
    ("n_k", "per_row"),
    [(5, 2), (5, 3), (6, 3), (12, 3)],  # rejection path (size > 2k) and permutation path
)
def test_random_subsets_are_uniform(n_k, per_row):
    rows = 6000
    p = random(rows, n_k, per_row, seed=7, include_self=False)
    csr = p.to_csr()
    counts = Counter(tuple(csr.indices[csr.indptr[r] : csr.indptr[r + 1]]) for r in range(rows))
    subsets = list(itertools.combinations(range(n_k), per_row))
    assert set(counts) <= set(subsets)
    expected = rows / len(subsets)
    chi2 = sum((counts.get(s, 0) - expected) ** 2 / expected for s in subsets)
    dof = len(subsets) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)  # ~6 sigma: fails only if biased


def test_random_excludes_self_from_the_draws():
    # include_self adds the diagonal on top of per_row draws from the other keys.
    p = random(50, 50, 49, include_self=True)
    assert p == dense(50)
    q = random(50, 50, 1, seed=3, include_self=True).to_dense()
    assert (q.sum(axis=1) == 2).all() and q.diagonal().all()


def test_random_causal_admissibility():
    p = random(300, 200, 5, seed=4, causal=True)
    mask = p.to_dense()
    assert not np.triu(mask, k=1).any()
    assert (mask.sum(axis=1) == np.minimum(np.arange(300), 5) + (np.arange(300) < 200)).all()


def test_random_per_row_is_required():
    with pytest.raises(TypeError, match="per_row"):
        random(4)


# --------------------------------------------------------------------------- registry
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


# --------------------------------------------------------------------------- validation
BAD = [
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
    (document, (), {}, ValueError, "seq_ids and lengths"),
    (document, ([0, 1],), {"lengths": [2]}, ValueError, "seq_ids and lengths"),
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
    ("fn", "args", "kwargs", "exc", "name"), BAD, ids=[f"{b[0].__name__}-{b[4]}" for b in BAD]
)
def test_validation_names_the_parameter(fn, args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        fn(*args, **kwargs)


def test_numpy_ints_are_accepted_and_params_stay_plain():
    p = sliding_window(np.int64(6), np.int32(1), np.uint8(2))
    assert p == sliding_window(6, 1, 2)
    assert all(type(v) is int for v in p.params.values())
    assert global_local(np.int64(5), 0, 0, np.array([4, 0])).params["global_tokens"] == [0, 4]
