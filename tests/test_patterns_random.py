"""``patterns.random_`` (random keys per row): admissibility, seeds, uniformity."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from helpers import FAST, assert_canonical_csr, grid, sizes
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import patterns
from sparse_ref.patterns import (
    dense,
    random,
)


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
    assert_canonical_csr(p)  # sorted and distinct keys
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
