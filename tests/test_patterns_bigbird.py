"""``patterns.bigbird`` against its block-level rule, with seeded per-head random blocks."""

from __future__ import annotations

import math

import numpy as np
from helpers import FEW, assert_canonical_csr, grid, row_keys
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import patterns
from sparse_ref.pattern import Pattern
from sparse_ref.patterns import (
    bigbird,
    block_topk,
)
from sparse_ref.patterns.bigbird import bigbird_layout


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


@FEW
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
    assert_canonical_csr(p)
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
    assert row_keys(p, 9) == [8, 9]
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
