"""``patterns.data_dependent`` (lsh, routing, topk, block_topk) recomputed in plain Python float
arithmetic in the order their docstrings define (sequential sums over ``d``), so scores agree bit
for bit and ties are tested exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import FEW, expect_pattern, grid, row_keys
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import patterns
from sparse_ref.patterns import (
    block_topk,
    lsh,
    routing,
    topk,
)
from sparse_ref.patterns.data_dependent import input_fingerprint


def int_array(draw, n, d, lo=-3, hi=3) -> np.ndarray:
    """Small-integer float64 arrays: dot products are exact, ties are frequent."""
    values = draw(st.lists(st.integers(lo, hi), min_size=n * d, max_size=n * d))
    return np.array(values, dtype=np.float64).reshape(n, d)


def pdot(a, b) -> float:
    s = 0.0
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        s += x * y
    return s


@FEW
@given(st.data(), st.integers(1, 12), st.integers(1, 4), st.sampled_from([2, 4, 6]),
       st.integers(1, 3), st.integers(0, 2**32), st.booleans())  # fmt: skip
def test_lsh(data, n, d, num_buckets, num_hashes, seed, causal):
    if data.draw(st.booleans()):
        x = int_array(data.draw, n, d)  # zero rows and exact ties
    else:
        x = np.random.default_rng(seed % 97).standard_normal((n, d))
    R = np.random.Generator(np.random.PCG64(seed)).standard_normal(
        (num_hashes, d, num_buckets // 2)
    )
    buckets = []
    for r in range(num_hashes):
        row = []
        for t in range(n):
            proj = [pdot(x[t], R[r][:, b]) for b in range(num_buckets // 2)]
            vals = proj + [-v for v in proj]
            row.append(vals.index(max(vals)))  # first maximum
        buckets.append(row)
    mask = np.zeros((n, n), dtype=bool)
    for a in range(n):
        for b in range(n):
            mask[a, b] = any(buckets[r][a] == buckets[r][b] for r in range(num_hashes))
            mask[a, b] &= not causal or b <= a
    p = lsh(x, num_buckets, num_hashes, seed, causal)
    expect_pattern(p, mask, x=x)
    assert p.params["seed"] == seed and p.params["x_fingerprint"] == input_fingerprint(x)


def spherical_kmeans(q, k, c, iters, seed):
    """The routing rule, restated with per-point Python loops."""
    pts = []
    for row in list(q) + list(k):
        nrm = math.sqrt(pdot(row, row))
        pts.append(row / nrm if nrm > 0 else np.zeros_like(row))
    rng = np.random.Generator(np.random.PCG64(seed))
    cent = [pts[t].copy() for t in rng.choice(len(pts), c, replace=False)]

    def assign():
        out = []
        for p in pts:
            sims = [pdot(p, m) for m in cent]
            out.append(sims.index(max(sims)))
        return out

    lab = assign()
    for _ in range(iters):
        for m in range(c):
            total = np.zeros_like(pts[0])
            for p, a in zip(pts, lab, strict=True):
                if a == m:
                    total = total + p
            nrm = math.sqrt(pdot(total, total))
            if nrm > 0:
                cent[m] = total / nrm
        lab = assign()
    return lab[: len(q)], lab[len(q) :]


@FEW
@given(st.data(), st.integers(1, 8), st.integers(1, 8), st.integers(1, 3),
       st.integers(0, 4), st.integers(0, 2**32), st.booleans())  # fmt: skip
def test_routing(data, n_q, n_k, d, iters, seed, causal):
    rng = np.random.default_rng(seed % 101)
    q, k = rng.standard_normal((n_q, d)), rng.standard_normal((n_k, d))
    c = data.draw(st.integers(1, n_q + n_k))
    cq, ck = spherical_kmeans(q, k, c, iters, seed)
    i, j = grid(n_q, n_k)
    mask = np.array(cq)[:, None] == np.array(ck)[None, :]
    if causal:
        mask &= j <= i
    p = routing(q, k, c, iters, seed, causal)
    expect_pattern(p, mask, q=q, k=k)


def top_rows(scores: list[list[float]], adm, per_row) -> np.ndarray:
    mask = np.zeros((len(scores), len(scores[0]) if scores else 0), dtype=bool)
    for a, row in enumerate(scores):
        cand = [b for b in range(len(row)) if adm(a, b)]
        cand.sort(key=lambda b: (-row[b], b))  # larger score first, ties to the lower index
        mask[a, cand[:per_row]] = True
    return mask


@FEW
@given(st.data(), st.integers(1, 10), st.integers(1, 10), st.integers(1, 3),
       st.integers(0, 11), st.booleans(), st.sampled_from([None, 0.5, 2.0]))  # fmt: skip
def test_topk(data, n_q, n_k, d, per_row, causal, scale):
    q, k = int_array(data.draw, n_q, d), int_array(data.draw, n_k, d)
    value = 1 / math.sqrt(d) if scale is None else scale
    scores = [[value * pdot(q[a], k[b]) for b in range(n_k)] for a in range(n_q)]
    mask = top_rows(scores, lambda a, b: not causal or b <= a, per_row)
    expect_pattern(topk(q, k, per_row, scale, causal), mask, q=q, k=k)


@pytest.mark.parametrize("n_q, n_k, d, per_row, causal", [(300, 500, 64, 7, False),
                                                          (257, 257, 3, 1, True)])  # fmt: skip
def test_topk_equals_sequential_scores(rng, n_q, n_k, d, per_row, causal):
    # topk prunes with BLAS scores and an error bound; the answer is the one of exact scores
    from sparse_ref.patterns.data_dependent import _dots, _top_mask

    q, k = rng.standard_normal((n_q, d)), rng.standard_normal((n_k, d))
    q[5] = q[4]  # duplicate rows and keys make exact ties
    k[10:20] = k[9]
    i, j = grid(n_q, n_k)
    admissible = np.broadcast_to((j <= i) if causal else True, (n_q, n_k))
    mask = _top_mask((1 / math.sqrt(d)) * _dots(q, k), admissible, per_row)
    np.testing.assert_array_equal(topk(q, k, per_row, causal=causal).to_dense(), mask)


def test_topk_ties_to_lower_index():
    q = np.ones((2, 1))
    k = np.array([[1.0], [2.0], [2.0], [0.0], [2.0]])
    assert row_keys(topk(q, k, 2), 0) == [1, 2]
    assert row_keys(topk(q, k, 1), 0) == [1]
    assert topk(np.ones((1, 1)), np.zeros((4, 1)), 2).to_csr().indices.tolist() == [0, 1]
    # causal: row 1 has 2 admissible keys, row 0 only one
    assert topk(q, k, 3, causal=True).to_csr().indptr.tolist() == [0, 1, 3]


def block_means(x, block):
    out = []
    for s in range(0, len(x), block):
        rows = x[s : s + block]
        total = np.zeros(x.shape[1])
        for r in rows:
            total = total + r
        out.append(total / len(rows))
    return out


@FEW
@given(st.data(), st.integers(1, 14), st.integers(1, 14), st.integers(1, 2), st.integers(1, 5),
       st.integers(0, 4), st.booleans(), st.booleans())  # fmt: skip
def test_block_topk(data, n_q, n_k, d, block, per_row, causal, local):
    q, k = int_array(data.draw, n_q, d), int_array(data.draw, n_k, d)
    qm, km = block_means(q, block), block_means(k, block)
    scores = [[pdot(a, b) for b in km] for a in qm]

    def adm(a, b):
        return (not causal or b <= a) and (not local or a != b)

    lay = top_rows(scores, adm, per_row)
    if local:
        for a in range(min(len(qm), len(km))):
            lay[a, a] = True
    i, j = grid(n_q, n_k)
    mask = lay[i // block, j // block]
    if causal:
        mask &= j <= i
    expect_pattern(block_topk(q, k, block, per_row, causal, local), mask, q=q, k=k)


def test_scores_are_summed_sequentially(rng):
    # the documented order: each dot product summed over d in index order, no BLAS
    from sparse_ref.patterns.data_dependent import _dots

    a, b = rng.standard_normal((70, 64)), rng.standard_normal((600, 64))
    expected = np.zeros((70, 600))
    for t in range(64):
        expected += a[:, t, None] * b[None, :, t]
    np.testing.assert_array_equal(_dots(a, b), expected)


def test_data_dependent_determinism_and_seeds(rng):
    x = rng.standard_normal((64, 8))
    assert lsh(x, 8, 2, seed=1) == lsh(x, 8, 2, seed=1)
    assert lsh(x, 8, 2, seed=1) != lsh(x, 8, 2, seed=2)
    assert routing(x, x, 4, seed=1) == routing(x, x, 4, seed=1)
    assert routing(x, x, 4, seed=1) != routing(x, x, 4, seed=3)
    # float32 input: same pattern family, its own fingerprint
    p32 = lsh(x.astype(np.float32), 8, seed=1)
    assert p32.params["x_fingerprint"] != lsh(x, 8, seed=1).params["x_fingerprint"]


@pytest.mark.parametrize(
    "family, make, inputs",
    [
        ("lsh", lambda a, b: lsh(a, 4, seed=2), lambda a, b: {"x": a}),
        ("routing", lambda a, b: routing(a, b, 3), lambda a, b: {"q": a, "k": b}),
        ("topk", lambda a, b: topk(a, b, 2), lambda a, b: {"q": a, "k": b}),
        ("block_topk", lambda a, b: block_topk(a, b, 2, 1), lambda a, b: {"q": a, "k": b}),
    ],
)
def test_rebuild_needs_matching_inputs(rng, family, make, inputs):
    a, b = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    p = make(a, b)
    assert p.family == family
    assert patterns.build(family, **inputs(a, b), **p.params) == p
    other = a.copy()
    other[0, 0] += 1.0
    with pytest.raises(ValueError, match="fingerprint does not match"):
        patterns.build(family, **inputs(other, b), **p.params)
    with pytest.raises(TypeError):
        patterns.build(family, **p.params)  # the arrays are not in the params
