"""``patterns.global_`` (global_local, Longformer) against a brute-force mask, and its token CSR
against a row-by-row reference for many global runs (adjacent, overlapping, touching 0 and n - 1)
through every fill path of ``patterns._ranges``."""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
from helpers import FAST, FEW, expect_pattern, grid, small
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.pattern import index_dtype
from sparse_ref.patterns import _ranges, global_local

# The fill paths of progressions_csr: default thresholds, everything a rectangle (broadcast and
# gathered slices of global columns), everything ragged in tiny chunks.
FILL_PATHS = {
    "default": {"_MIN_KEYS_PER_CALL": _ranges._MIN_KEYS_PER_CALL},
    "rectangles": {"_MIN_KEYS_PER_CALL": 1},
    "ragged": {"_MIN_KEYS_PER_CALL": 1 << 40, "_RAGGED_CHUNK": 7},
}


@contextmanager
def fill_path(name):
    with mock.patch.multiple(_ranges, **FILL_PATHS[name]):
        yield


def reference_csr(n, left, right, tokens):
    """Row by row: all keys for a global row, else the window's keys and the global keys."""
    g = sorted({t % n for t in tokens}) if n else []
    rows = []
    for i in range(n):
        window = set(range(max(i - left, 0), min(i + right, n - 1) + 1))
        rows.append(list(range(n)) if i in g else sorted(window.union(g)))
    indptr = np.cumsum([0] + [len(r) for r in rows], dtype=np.int64)
    nnz = int(indptr[-1])
    return indptr, np.array([k for r in rows for k in r], dtype=index_dtype(nnz, n))


def expect_reference(n, left, right, tokens):
    csr = global_local(n, left, right, tokens).to_csr()
    indptr, indices = reference_csr(n, left, right, tokens)
    assert csr.indices.dtype == indices.dtype
    np.testing.assert_array_equal(csr.indptr, indptr)
    np.testing.assert_array_equal(csr.indices, indices)


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


@st.composite
def many_runs(draw):
    """``(n, tokens)``: up to 60 runs of global tokens, with duplicates, negatives, runs next to
    each other and runs at both ends."""
    n = draw(st.integers(1, 300))
    tokens = []
    for _ in range(draw(st.integers(0, 60))):
        start, length = draw(st.integers(0, n - 1)), draw(st.integers(1, 6))
        tokens += range(start, min(start + length, n))
    if draw(st.booleans()):
        tokens += [0, n - 1]
    return n, [t - n if t % 3 == 0 else t for t in tokens]  # a third counted from the end


@FEW
@pytest.mark.parametrize("path", FILL_PATHS)
@given(many_runs(), small, small)
def test_many_global_runs_against_reference(path, case, left, right):
    n, tokens = case
    with fill_path(path):
        expect_reference(n, left, right, tokens)


@pytest.mark.parametrize("path", FILL_PATHS)
@pytest.mark.parametrize(
    ("n", "left", "right", "tokens"),
    [
        (1, 0, 0, [0]),
        (1, 3, 2, []),
        (2, 0, 0, [1]),
        (50, 2, 1, [0, 1, 2, 4, 5, 7, 49]),  # adjacent runs one token apart, both ends
        (50, 0, 3, [*range(0, 50, 2)]),  # every other token: 25 runs
        (64, 100, 100, [10, 11, 40]),  # the window covers every row
        (97, 5, 0, [0, 96, -1, -97, 3, 3, 4]),  # duplicates, negatives
        (3001, 40, 17, [*range(0, 3001, 11), 3000]),  # 274 runs, ragged n
    ],
)
def test_global_runs_edge_cases(path, n, left, right, tokens):
    with fill_path(path):
        expect_reference(n, left, right, tokens)


def test_many_runs_large_against_mask():
    # n = 6000 with 300 scattered runs: rectangles of broadcast global columns and ragged rows.
    n, left, right = 6000, 64, 100
    tokens = np.unique(np.random.default_rng(0).integers(0, n, 300)).tolist() + [0, 1, n - 1]
    g = np.zeros(n, dtype=bool)
    g[tokens] = True
    i, j = grid(n)
    mask = ((i - left <= j) & (j <= i + right)) | g[:, None] | g[None, :]
    csr = global_local(n, left, right, tokens).to_csr()
    np.testing.assert_array_equal(np.diff(csr.indptr), mask.sum(axis=1))
    np.testing.assert_array_equal(csr.indices, np.nonzero(mask)[1])
