"""``patterns.document`` (same document only) against brute-force masks."""

from __future__ import annotations

import numpy as np
from helpers import FAST, expect_pattern
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.patterns import (
    document,
)


@FAST
@given(st.lists(st.integers(-3, 3), max_size=40))
def test_document_seq_ids(ids):
    arr = np.asarray(ids, dtype=np.int64)
    expect_pattern(document(ids), arr[:, None] == arr[None, :])


@FAST
@given(st.lists(st.integers(0, 7), max_size=8))
def test_document_lengths(lengths):
    ids = np.concatenate([[d] * size for d, size in enumerate(lengths)] + [[]]).astype(np.int64)
    p = document(lengths=lengths)
    expect_pattern(p, ids[:, None] == ids[None, :])
    assert p == document(ids.tolist())
