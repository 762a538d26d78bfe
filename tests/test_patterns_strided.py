"""``patterns.strided`` (dilated, strided) against brute-force masks."""

from __future__ import annotations

import itertools

import numpy as np
from helpers import FAST, expect_pattern, grid, sizes, small
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.patterns import (
    dilated,
    strided,
)


@FAST
@given(sizes, small, st.integers(1, 12), st.booleans())
def test_dilated(n, window, dilation, is_causal):
    mask = np.zeros((n, n), dtype=bool)
    for i, j in itertools.product(range(n), range(n)):  # j = i + t * dilation for some admissible t
        ts = range(-(window // 2), (0 if is_causal else window // 2) + 1)
        mask[i, j] = any(j == i + t * dilation for t in ts)
    expect_pattern(dilated(n, window, dilation, causal=is_causal), mask)


@FAST
@given(sizes, st.integers(1, 45), st.booleans())
def test_strided(n, stride, is_causal):
    i, j = grid(n)
    expect_pattern(
        strided(n, stride, causal=is_causal), ((i - j) % stride == 0) & ((j <= i) | (not is_causal))
    )
