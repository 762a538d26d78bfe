"""Shared by the analysis tests: random square masks (hypothesis) and the patterns they make."""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from sparse_ref.pattern import Pattern

FAST = settings(max_examples=40, deadline=None)


@st.composite
def square_masks(draw, max_n=24, max_heads=2):
    """A bool ``(heads, n, n)`` mask of random density."""
    n = draw(st.integers(1, max_n))
    h = draw(st.integers(1, max_heads))
    p = draw(st.sampled_from([0.05, 0.15, 0.4]))
    seed = draw(st.integers(0, 2**31 - 1))
    return np.random.default_rng(seed).random((h, n, n)) < p


def pattern_of(mask: np.ndarray) -> Pattern:
    """The Pattern of a ``(heads, n, n)`` mask (one head: a shared pattern)."""
    return Pattern.from_dense(mask if mask.shape[0] > 1 else mask[0])


def union(mask: np.ndarray) -> np.ndarray:
    """The union of the heads, ``(n, n)``."""
    return mask.any(axis=0)
