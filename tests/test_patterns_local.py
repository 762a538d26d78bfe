"""``patterns.local`` (dense, causal, windows, sinks, prefix LM) against brute-force masks, and the
block form of every family described by terms (``block=``) against its token CSR.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import FAST, expect_pattern, grid, sizes, small
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import patterns
from sparse_ref.patterns import (
    causal,
    causal_sliding_window,
    dense,
    prefix_lm,
    sinks,
    sliding_window,
)


@FAST
@given(sizes, st.one_of(st.none(), sizes))
def test_dense(n_q, n_k):
    p = dense(n_q, n_k)
    expect_pattern(p, np.ones(p.shape, dtype=bool))


@FAST
@given(sizes, st.one_of(st.none(), sizes), st.sampled_from(["top_left", "bottom_right"]))
def test_causal(n_q, n_k, align):
    p = causal(n_q, n_k, align=align)
    nk = n_q if n_k is None else n_k
    i, j = grid(n_q, nk)
    expect_pattern(p, j <= i + (nk - n_q if align == "bottom_right" else 0))


@FAST
@given(sizes, small, small)
def test_sliding_window(n, left, right):
    i, j = grid(n)
    expect_pattern(sliding_window(n, left, right), (i - left <= j) & (j <= i + right))


@FAST
@given(sizes, small)
def test_causal_sliding_window(n, window):
    i, j = grid(n)
    expect_pattern(causal_sliding_window(n, window), (i - window < j) & (j <= i))


@FAST
@given(sizes, small, small)
def test_sinks(n, num_sinks, window):
    i, j = grid(n)
    expect_pattern(sinks(n, num_sinks, window), (j <= i) & ((j < num_sinks) | (j > i - window)))


@FAST
@given(sizes, small)
def test_prefix_lm(n, prefix):
    i, j = grid(n)
    expect_pattern(prefix_lm(n, prefix), (j < prefix) | (j <= i))


def test_window_rule_conventions():
    # DESIGN §4: "half = (w-1)//2" tutorials map to sliding_window(n, (w-1)//2, (w-1)//2); Mistral's
    # window counts the token itself.
    assert (
        causal_sliding_window(20, 5)
        == sliding_window(20, 4, 0).causal()
        == sliding_window(20, 4, 0)
    )
    assert causal(9) == causal_sliding_window(9, 9) == prefix_lm(9, 0) == sinks(9, 0, 9)


def structured_params(family, n, a, b, tokens):
    """Parameters of a structured family (one with ``block=``) from a few drawn integers."""
    return {
        "dense": {"n_q": n, "n_k": a},
        "causal": {"n_q": n, "n_k": a, "align": "bottom_right" if b % 2 else "top_left"},
        "sliding_window": {"n": n, "left": a, "right": b},
        "causal_sliding_window": {"n": n, "window": a},
        "sinks": {"n": n, "num_sinks": a, "window": b},
        "prefix_lm": {"n": n, "prefix": a},
        "global_local": {"n": n, "left": a, "right": b, "global_tokens": [t % n for t in tokens]},
    }[family]


STRUCTURED = ["causal", "causal_sliding_window", "dense", "global_local", "prefix_lm", "sinks"]


STRUCTURED += ["sliding_window"]


blocks = st.one_of(st.integers(1, 9), st.tuples(st.integers(1, 9), st.integers(1, 9)))


@FAST
@given(st.sampled_from(STRUCTURED), st.integers(1, 40), small, small, st.lists(small), blocks)
def test_block_form_equals_token_csr(family, n, a, b, tokens, block):
    params = structured_params(family, n, a, b, tokens)
    token = patterns.build(family, **params)
    blocked = patterns.build(family, **params, block=block)
    bq, bk = (block, block) if isinstance(block, int) else block
    assert blocked.block == (bq, bk) and token.block is None
    assert blocked.family == family and blocked.params == {
        **token.params,
        "block": blocked.params["block"],
    }
    np.testing.assert_array_equal(blocked.to_dense(), token.to_dense())
    assert blocked == token and token == blocked
    assert blocked.fingerprint() == token.fingerprint() and hash(blocked) == hash(token)
    rebuilt = patterns.build(family, **json.loads(json.dumps(blocked.params)))
    assert rebuilt.block == (bq, bk) and rebuilt == token


def test_block_form_skips_token_csr_at_scale():
    n, w = 1 << 20, 4096  # 4.3e9 token nonzeros: token CSR would need ~17 GB
    p = causal_sliding_window(n, w, block=128)
    assert p.block == (128, 128) and p.nnz == n * w - w * (w - 1) // 2
    assert patterns.build(p.family, **p.params).nnz == p.nnz
    with pytest.raises(ValueError, match="CSR_LIMIT"):
        p.to_csr()


def test_block_validation_names_block():
    with pytest.raises((ValueError, TypeError), match="block"):
        causal(8, block=0)
    with pytest.raises((ValueError, TypeError), match="block"):
        sliding_window(8, 1, 1, block=(2, 2, 2))
