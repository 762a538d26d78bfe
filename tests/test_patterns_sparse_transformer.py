"""``patterns.sparse_transformer`` (Child et al. 2019) against brute-force predicates."""

from __future__ import annotations

import numpy as np
from helpers import FEW, expect_pattern, grid
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.patterns import (
    sparse_transformer_fixed,
    sparse_transformer_strided,
)


@FEW
@given(st.integers(0, 40), st.integers(1, 12))
def test_sparse_transformer_strided(n, stride):
    i, j = grid(n)
    local = (j <= i) & (i - stride < j)
    strided = (j <= i) & ((i - j) % stride == 0)
    expect_pattern(sparse_transformer_strided(n, stride), local | strided)
    split = sparse_transformer_strided(n, stride, split_heads=True)
    assert split.num_heads == 2
    expect_pattern(split, np.stack([local, strided]))


@FEW
@given(st.integers(0, 40), st.integers(1, 10), st.data())
def test_sparse_transformer_fixed(n, stride, data):
    c = data.draw(st.integers(0, stride))
    i, j = grid(n)
    expect_pattern(
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
