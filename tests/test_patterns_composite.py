"""``patterns.composite`` (vertical_slash, MInference) against a brute-force mask."""

from __future__ import annotations

import numpy as np
from helpers import FEW, expect_pattern, grid
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.patterns import (
    vertical_slash,
)


@st.composite
def vs_params(draw):
    n = draw(st.integers(0, 30))
    causal = draw(st.booleans())
    vertical = draw(st.lists(st.integers(-n, n - 1), max_size=6)) if n else []
    lo = 0 if causal else -n + 1
    slash = draw(st.lists(st.integers(lo, n - 1), max_size=6)) if n else []
    return n, vertical, slash, causal


@FEW
@given(vs_params())
def test_vertical_slash(params):
    n, vertical, slash, causal = params
    i, j = grid(n)
    cols = np.array([v % n for v in vertical], dtype=int)
    mask = np.isin(j, cols) | np.isin(i - j, np.array(slash, dtype=int))
    if causal:
        mask &= j <= i
    expect_pattern(vertical_slash(n, vertical, slash, causal), mask)
