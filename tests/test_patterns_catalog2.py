"""Catalog part 2 (BigBird, Sparse Transformer, NATTEN, MInference, hierarchical, data-dependent)
against brute-force predicates written independently of the builders.

Structured families are restated as elementwise predicates over broadcast index grids ``i`` (query,
column vector) and ``j`` (key, row vector), or as per-element Python loops. Data-dependent families
are recomputed with plain Python float arithmetic in the order their docstrings define (sequential
sums over ``d``), so scores agree bit for bit and ties are tested exactly.
"""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse_ref
from sparse_ref import patterns, testing
from sparse_ref.pattern import Pattern
from sparse_ref.patterns import (
    bigbird,
    block_topk,
    hierarchical,
    lsh,
    neighborhood_2d,
    routing,
    sparse_transformer_fixed,
    sparse_transformer_strided,
    topk,
    vertical_slash,
)
from sparse_ref.patterns.bigbird import bigbird_layout
from sparse_ref.patterns.data_dependent import input_fingerprint
from sparse_ref.patterns.hierarchical import hierarchical_keys

FAST = settings(max_examples=40, deadline=None)


def grid(n_q: int, n_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    n_k = n_q if n_k is None else n_k
    return np.arange(n_q)[:, None], np.arange(n_k)[None, :]


def keys(p: Pattern, i: int, h: int = 0) -> list[int]:
    csr = p.to_csr(h)
    return csr.indices[csr.indptr[i] : csr.indptr[i + 1]].tolist()


def assert_canonical(p: Pattern) -> None:
    for h in range(p.num_heads):
        csr = p.to_csr(h)
        assert csr.data.dtype == bool and csr.data.all()
        assert csr.indptr[0] == 0 and csr.indptr[-1] == len(csr.indices)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        same = rows[1:] == rows[:-1]
        assert (np.diff(csr.indices.astype(np.int64))[same] > 0).all(), "sorted, no duplicates"
        if len(csr.indices):
            assert 0 <= csr.indices.min() and csr.indices.max() < csr.shape[1]
    json.dumps(p.params)


def expect(p: Pattern, mask: np.ndarray, **inputs: Any) -> None:
    """``p`` equals the brute-force mask, is canonical and rebuilds from its params."""
    mask = np.broadcast_to(mask, (p.num_heads, *p.shape) if p.num_heads > 1 else p.shape)
    np.testing.assert_array_equal(p.to_dense(), mask)
    assert_canonical(p)
    assert patterns.build(p.family, **inputs, **p.params) == p


# ============================================================================ sparse transformer
@FAST
@given(st.integers(0, 40), st.integers(1, 12))
def test_sparse_transformer_strided(n, stride):
    i, j = grid(n)
    local = (j <= i) & (i - stride < j)
    strided = (j <= i) & ((i - j) % stride == 0)
    expect(sparse_transformer_strided(n, stride), local | strided)
    split = sparse_transformer_strided(n, stride, split_heads=True)
    assert split.num_heads == 2
    expect(split, np.stack([local, strided]))


@FAST
@given(st.integers(0, 40), st.integers(1, 10), st.data())
def test_sparse_transformer_fixed(n, stride, data):
    c = data.draw(st.integers(0, stride))
    i, j = grid(n)
    expect(
        sparse_transformer_fixed(n, stride, c),
        (j <= i) & ((j // stride == i // stride) | (j % stride >= stride - c)),
    )


def test_sparse_transformer_named_cases():
    # c = stride is causal; c = 0 is block-diagonal causal
    i, j = grid(12)
    np.testing.assert_array_equal(sparse_transformer_fixed(12, 4, 4).to_dense(), j <= i)
    np.testing.assert_array_equal(
        sparse_transformer_fixed(12, 4, 0).to_dense(), (j <= i) & (i // 4 == j // 4)
    )
    # stride 1: local part is the diagonal, strided part everything causal
    i, j = grid(7)
    np.testing.assert_array_equal(sparse_transformer_strided(7, 1).to_dense(), j <= i)


# ====================================================================================== bigbird
def bigbird_checks(p: Pattern, n, block, nw, glob, r) -> None:
    """Structure of every head against the BigBird rule, brute force per block."""
    nb = -(-n // block)
    g = {x % nb for x in glob}
    dense = p.to_dense()
    dense = dense[None] if p.num_heads == 1 else dense
    i, j = grid(n)
    for h in range(p.num_heads):
        # constant on blocks: the mask is the expansion of its block corners
        lay = dense[h][::block, ::block]
        np.testing.assert_array_equal(dense[h], lay[i // block, j // block])
        for bi in range(nb):
            window = {bj for bj in range(nb) if abs(bi - bj) <= nw // 2}
            allowed = {bj for bj in range(nb) if lay[bi, bj]}
            if bi in g:
                assert allowed == set(range(nb))
                continue
            assert window | g <= allowed
            extra = allowed - window - g
            candidates = set(range(nb)) - window - g
            assert extra <= candidates
            assert len(extra) == min(r, len(candidates)), "distinct random blocks, as many as asked"


@FAST
@given(
    st.integers(1, 60),
    st.integers(1, 7),
    st.integers(0, 5),
    st.lists(st.integers(-3, 2), max_size=3),
    st.integers(0, 4),
    st.integers(0, 2**32),
    st.integers(1, 3),
)
def test_bigbird_rule(n, block, nw, glob, r, seed, heads):
    nb = -(-n // block)
    glob = [g for g in glob if -nb <= g < nb]
    p = bigbird(n, block, nw, glob, r, seed, heads)
    assert p.shape == (n, n) and p.num_heads == heads
    bigbird_checks(p, n, block, nw, glob, r)
    assert_canonical(p)
    assert patterns.build("bigbird", **p.params) == p
    np.testing.assert_array_equal(
        bigbird_layout(n, block, nw, glob, r, seed, heads),
        p.to_dense().reshape(heads, n, n)[:, ::block, ::block],
    )


def test_block_level_families_hold_a_block_form(rng):
    # BigBird and block_topk are built as blocks (BSR kernels), never as token CSR first
    p = bigbird(100, 8, num_random_blocks=2, num_heads=2)
    assert p.block == (8, 8) and p.block_form is not None
    q, k = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    assert block_topk(q, k, 4, 2, causal=True).block == (4, 4)


def test_bigbird_partial_last_block():
    p = bigbird(10, 4, num_window_blocks=1, global_blocks=[], num_random_blocks=0)
    i, j = grid(10)
    np.testing.assert_array_equal(p.to_dense(), i // 4 == j // 4)  # blocks 0-3, 4-7, 8-9
    assert keys(p, 9) == [8, 9]
    # the default global blocks (0, -1): -1 is the partial block 2
    q = bigbird(10, 4, num_window_blocks=1, num_random_blocks=0)
    assert q.to_dense()[8:, :].all() and q.to_dense()[:, 8:].all()


def test_bigbird_seeded_per_head():
    p = bigbird(512, 16, num_random_blocks=3, seed=5, num_heads=4)
    heads = [p.head(h) for h in range(4)]
    assert len({h.fingerprint() for h in heads}) == 4, "each head its own random blocks"
    assert bigbird(512, 16, num_random_blocks=3, seed=5, num_heads=4) == p, "deterministic"
    assert bigbird(512, 16, num_random_blocks=3, seed=6, num_heads=4) != p
    # head h draws from SeedSequence(seed, spawn_key=(h,)): independent of num_heads
    assert bigbird(512, 16, num_random_blocks=3, seed=5, num_heads=2).head(1) == heads[1]
    # random blocks never duplicate window/global blocks: window 3 + global 2 + random 3
    lay = bigbird_layout(512, 16, num_random_blocks=3, seed=5)[0]
    assert (lay[2:-2].sum(axis=1) == 3 + 2 + 3).all()
    assert lay[1].sum() == lay[-2].sum() == 3 + 1 + 3  # the window holds a global block


def test_bigbird_random_blocks_uniform():
    # row 0 with no global blocks: candidates are blocks 2..11 (10 of them), 3 drawn per seed
    counts = np.zeros(12)
    for seed in range(600):
        counts += bigbird_layout(12, 1, 3, [], 3, seed)[0, 0]
    drawn = counts[2:]
    assert counts[:2].tolist() == [600, 600]
    expected = 600 * 3 / 10
    assert np.abs(drawn - expected).max() < 5 * math.sqrt(expected), drawn


# ================================================================================ neighborhood
def natten_axis(length: int, kernel: int, dilation: int, causal: bool, i: int) -> set[int]:
    """Neighbours of position ``i`` along one axis, by walking its dilation group."""
    if causal:
        return {i - t * dilation for t in range(kernel) if i - t * dilation >= 0}
    group = [p for p in range(length) if p % dilation == i % dilation]
    m = group.index(i)
    lo = m - kernel // 2
    lo = max(lo, 0)
    lo = min(lo, len(group) - kernel)
    return set(group[lo : lo + kernel])


def natten_mask(h, w, kh, kw, dh, dw, ch, cw) -> np.ndarray:
    mask = np.zeros((h * w, h * w), dtype=bool)
    for r in range(h):
        rows = natten_axis(h, kh, dh, ch, r)
        for c in range(w):
            cols = natten_axis(w, kw, dw, cw, c)
            for rr in rows:
                for cc in cols:
                    mask[r * w + c, rr * w + cc] = True
    return mask


@st.composite
def natten_params(draw):
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dh, dw = draw(st.integers(1, h)), draw(st.integers(1, w))
    kh, kw = draw(st.integers(1, h // dh)), draw(st.integers(1, w // dw))
    return h, w, kh, kw, dh, dw, draw(st.booleans()), draw(st.booleans())


@FAST
@given(natten_params())
def test_neighborhood_2d(params):
    h, w, kh, kw, dh, dw, ch, cw = params
    p = neighborhood_2d(h, w, (kh, kw), (dh, dw), (ch, cw))
    expect(p, natten_mask(h, w, kh, kw, dh, dw, ch, cw))
    if kh == kw and dh == dw and ch == cw:
        assert neighborhood_2d(h, w, kh, dh, ch) == p


def test_neighborhood_named_cases():
    # 1-D rows (height 1): L = 7, k = 3, d = 2 -> groups {0,2,4,6} and {1,3,5}
    p = neighborhood_2d(1, 7, (1, 3), (1, 2))
    rows = [keys(p, i) for i in range(7)]
    assert rows == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5], [2, 4, 6]]
    # the window shifts inward and always holds k keys; causal windows are cut, not shifted
    full = neighborhood_2d(5, 5, 3)
    assert (np.diff(full.to_csr().indptr) == 9).all()
    cut = neighborhood_2d(5, 5, 3, causal=True)
    assert np.diff(cut.to_csr().indptr).tolist()[:6] == [1, 2, 3, 3, 3, 2]


# ================================================================================ vertical slash
@st.composite
def vs_params(draw):
    n = draw(st.integers(0, 30))
    causal = draw(st.booleans())
    vertical = draw(st.lists(st.integers(-n, n - 1), max_size=6)) if n else []
    lo = 0 if causal else -n + 1
    slash = draw(st.lists(st.integers(lo, n - 1), max_size=6)) if n else []
    return n, vertical, slash, causal


@FAST
@given(vs_params())
def test_vertical_slash(params):
    n, vertical, slash, causal = params
    i, j = grid(n)
    cols = np.array([v % n for v in vertical], dtype=int)
    mask = np.isin(j, cols) | np.isin(i - j, np.array(slash, dtype=int))
    if causal:
        mask &= j <= i
    expect(vertical_slash(n, vertical, slash, causal), mask)


# ================================================================================= hierarchical
@FAST
@given(st.integers(0, 30), st.integers(1, 8), st.integers(0, 6), st.integers(0, 6))
def test_hierarchical(n, block, left, right):
    nb = -(-n // block)
    i, j = grid(n, n + nb)
    mask = ((j < n) & (i - left <= j) & (j <= i + right)) | (j >= n)
    p = hierarchical(n, block, left, right)
    assert p.shape == (n, n + nb)
    expect(p, mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hierarchical_keys(rng, dtype):
    k = rng.standard_normal((2, 10, 3)).astype(dtype)
    v = rng.standard_normal((2, 10, 5)).astype(dtype)
    k2, v2 = hierarchical_keys(k, v, 4)
    assert k2.shape == (2, 13, 3) and v2.shape == (2, 13, 5) and k2.dtype == dtype
    np.testing.assert_array_equal(k2[:, :10], k)
    for b, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 10)]):
        np.testing.assert_allclose(k2[:, 10 + b], k[:, lo:hi].astype(np.float64).mean(axis=1),
                                   rtol=1e-6)  # fmt: skip
        np.testing.assert_allclose(v2[:, 10 + b], v[:, lo:hi].astype(np.float64).mean(axis=1),
                                   rtol=1e-6)  # fmt: skip


# =============================================================================== data-dependent
def int_array(draw, n, d, lo=-3, hi=3) -> np.ndarray:
    """Small-integer float64 arrays: dot products are exact, ties are frequent."""
    values = draw(st.lists(st.integers(lo, hi), min_size=n * d, max_size=n * d))
    return np.array(values, dtype=np.float64).reshape(n, d)


def pdot(a, b) -> float:
    s = 0.0
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        s += x * y
    return s


@FAST
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
    expect(p, mask, x=x)
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


@FAST
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
    expect(p, mask, q=q, k=k)


def top_rows(scores: list[list[float]], adm, per_row) -> np.ndarray:
    mask = np.zeros((len(scores), len(scores[0]) if scores else 0), dtype=bool)
    for a, row in enumerate(scores):
        cand = [b for b in range(len(row)) if adm(a, b)]
        cand.sort(key=lambda b: (-row[b], b))  # larger score first, ties to the lower index
        mask[a, cand[:per_row]] = True
    return mask


@FAST
@given(st.data(), st.integers(1, 10), st.integers(1, 10), st.integers(1, 3),
       st.integers(0, 11), st.booleans(), st.sampled_from([None, 0.5, 2.0]))  # fmt: skip
def test_topk(data, n_q, n_k, d, per_row, causal, scale):
    q, k = int_array(data.draw, n_q, d), int_array(data.draw, n_k, d)
    value = 1 / math.sqrt(d) if scale is None else scale
    scores = [[value * pdot(q[a], k[b]) for b in range(n_k)] for a in range(n_q)]
    mask = top_rows(scores, lambda a, b: not causal or b <= a, per_row)
    expect(topk(q, k, per_row, scale, causal), mask, q=q, k=k)


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
    assert keys(topk(q, k, 2), 0) == [1, 2]
    assert keys(topk(q, k, 1), 0) == [1]
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


@FAST
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
    expect(block_topk(q, k, block, per_row, causal, local), mask, q=q, k=k)


# ------------------------------------------------------------------ determinism and fingerprints
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


# ==================================================================================== validation
X = np.zeros((4, 2))
BAD = [
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
    (lambda: hierarchical_keys(X, np.zeros((3, 2)), 2), ValueError, "k and v"),
    (lambda: hierarchical_keys(X, X.astype(int), 2), TypeError, "v"),
    (lambda: hierarchical_keys(X, X, 0), ValueError, "block"),
    (lambda: lsh(np.zeros(4), 2), ValueError, "x must be 2-D"),
    (lambda: lsh(X.astype(int), 2), TypeError, "x must have dtype"),
    (lambda: lsh(X + np.nan, 2), ValueError, "x must be finite"),
    (lambda: lsh(X, 3), ValueError, "num_buckets must be even"),
    (lambda: lsh(X, 2, num_hashes=0), ValueError, "num_hashes"),
    (lambda: lsh(X, 2, seed=True), TypeError, "seed"),
    (lambda: lsh(X, 2, x_fingerprint="abc"), ValueError, "x_fingerprint"),
    (lambda: lsh(np.zeros((4, 0)), 2), ValueError, "x must have d >= 1"),
    (lambda: routing(X, np.zeros((4, 3)), 2), ValueError, "same d"),
    (lambda: routing(X, X, 9), ValueError, "num_clusters"),
    (lambda: routing(X, X, 2, iters=-1), ValueError, "iters"),
    (lambda: routing(X, X[None], 2), ValueError, "k must be 2-D"),
    (lambda: topk(X, X, -1), ValueError, "per_row"),
    (lambda: topk(X, X, 1, scale=0.0), ValueError, "scale"),
    (lambda: topk(X, X, 1, scale="1"), TypeError, "scale"),
    (lambda: topk(X, X, 1, causal=None), TypeError, "causal"),
    (lambda: topk(X, X, 1, q_fingerprint=3), TypeError, "q_fingerprint"),
    (lambda: topk(X + 1e200, X + 1e200, 1), ValueError, "overflow"),
    (lambda: block_topk(X, X, 0, 1), ValueError, "block"),
    (lambda: block_topk(X, X, 2, -1), ValueError, "blocks_per_row"),
    (lambda: block_topk(X, X, 2, 1, include_local=0), TypeError, "include_local"),
    (lambda: block_topk(X.astype(np.complex128), X, 2, 1), TypeError, "q must have dtype"),
]


@pytest.mark.parametrize("make, exc, match", BAD)
def test_validation_names_parameter(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ============================================================================ kernels vs oracle
HAVE_KERNEL = importlib.util.find_spec("sparse_ref.kernels.csr_forward") is not None
needs_kernel = pytest.mark.skipif(
    not HAVE_KERNEL, reason="the Numba kernel sparse_ref/kernels/csr_forward.py is not there yet"
)

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


@needs_kernel
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
