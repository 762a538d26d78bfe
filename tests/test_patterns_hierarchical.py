"""``patterns.hierarchical`` and ``hierarchical_keys`` against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FEW, expect_pattern, grid
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.patterns import (
    hierarchical,
)
from sparse_ref.patterns.hierarchical import hierarchical_keys


@FEW
@given(st.integers(0, 30), st.integers(1, 8), st.integers(0, 6), st.integers(0, 6))
def test_hierarchical(n, block, left, right):
    nb = -(-n // block)
    i, j = grid(n, n + nb)
    mask = ((j < n) & (i - left <= j) & (j <= i + right)) | (j >= n)
    p = hierarchical(n, block, left, right)
    assert p.shape == (n, n + nb)
    expect_pattern(p, mask)


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
