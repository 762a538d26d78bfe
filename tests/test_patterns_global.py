"""``patterns.global_`` (global_local, Longformer) against a brute-force mask."""

from __future__ import annotations

import numpy as np
from helpers import FAST, expect_pattern, grid, small
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.patterns import (
    global_local,
)


@FAST
@given(st.integers(1, 40), small, small, st.data())
def test_global_local(n, left, right, data):
    tokens = data.draw(st.lists(st.integers(-n, n - 1), max_size=8))
    g = np.zeros(n, dtype=bool)
    for t in tokens:
        g[t] = True  # Python indexing: negatives count from the end
    i, j = grid(n)
    expect_pattern(
        global_local(n, left, right, tokens),
        ((i - left <= j) & (j <= i + right)) | g[:, None] | g[None, :],
    )
