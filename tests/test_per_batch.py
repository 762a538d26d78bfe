"""A sequence of patterns, one per batch element: attention, attention_backward and the oracle.

Each batch element computed with its own pattern must equal the single-pattern call on that
element alone (the Numba kernels bitwise, since the same kernel runs on the same data), and the
float64 oracle must agree with the kernels by the tolerance rule.
"""

from __future__ import annotations

import numpy as np
import pytest

import sparse_ref
from sparse_ref import oracle, patterns, testing
from sparse_ref.pattern import Pattern

N = 48


def _patterns() -> list[Pattern]:
    return [
        patterns.causal_sliding_window(N, 7),
        patterns.document(lengths=[20, 28]) & patterns.causal(N),
        patterns.sliding_window(N, 3, 5).with_block_form(16),
    ]


def _inputs(rng: np.random.Generator, B: int, dtype: type = np.float64) -> tuple[np.ndarray, ...]:
    q = rng.standard_normal((B, 4, N, 16)).astype(dtype)
    k = rng.standard_normal((B, 2, N, 16)).astype(dtype)
    v = rng.standard_normal((B, 2, N, 8)).astype(dtype)
    dout = rng.standard_normal((B, 4, N, 8)).astype(dtype)
    return q, k, v, dout


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_and_backward_use_each_elements_pattern(rng, dtype) -> None:
    pats = _patterns()
    q, k, v, dout = _inputs(rng, len(pats), dtype)
    out, lse = sparse_ref.attention(q, k, v, pats, return_lse=True)
    grads = sparse_ref.attention_backward(q, k, v, pats, dout, out=out, lse=lse)
    for b, p in enumerate(pats):
        one = slice(b, b + 1)
        o1, l1 = sparse_ref.attention(q[one], k[one], v[one], p, return_lse=True)
        np.testing.assert_array_equal(out[one], o1)
        np.testing.assert_array_equal(lse[one], l1)
        g1 = sparse_ref.attention_backward(q[one], k[one], v[one], p, dout[one])
        for g, ref in zip(grads, g1):
            np.testing.assert_array_equal(g[one], ref)
    # and the kernels agree with the per-batch oracle by the tolerance rule
    testing.assert_close_to_oracle(out[:1], q[:1], k[:1], v[:1], pats[0], lse=lse[:1])


def test_oracle_per_batch_matches_its_single_pattern_calls(rng) -> None:
    pats = _patterns()
    q, k, v, dout = _inputs(rng, len(pats))
    out, lse = oracle.attention(q, k, v, pats, return_lse=True)
    dq, dk, dv = oracle.attention_backward(q, k, v, pats, dout)
    rows = np.array([0, 5, N - 1])
    sampled = oracle.attention_rows(q, k, v, pats, rows)
    for b, p in enumerate(pats):
        one = slice(b, b + 1)
        np.testing.assert_array_equal(out[one], oracle.attention(q[one], k[one], v[one], p))
        ref = oracle.attention_backward(q[one], k[one], v[one], p, dout[one])
        for got, want in zip((dq, dk, dv), ref):
            np.testing.assert_array_equal(got[one], want)
        np.testing.assert_array_equal(sampled[one], out[one][:, :, rows])
    # the patterns really differ per element: element 1 under element 0's pattern is different
    other = oracle.attention(q[1:2], k[1:2], v[1:2], pats[0])
    assert not np.allclose(other, out[1:2])
    np.testing.assert_allclose(
        sparse_ref.attention(q, k, v, pats, backend="oracle"), out, rtol=0, atol=0
    )


def test_per_batch_errors(rng) -> None:
    pats = _patterns()
    q, k, v, dout = _inputs(rng, len(pats))
    with pytest.raises(ValueError, match=r"batch size B = 3"):
        sparse_ref.attention(q[:2], k[:2], v[:2], pats)
    with pytest.raises(ValueError, match=r"needs 4-D q"):
        sparse_ref.attention(q[0], k[0], v[0], pats)
    with pytest.raises(ValueError, match=r"pattern\[1\] is \(40, 40\)"):
        sparse_ref.attention(q[:2], k[:2], v[:2], [pats[0], patterns.causal(40)])
    with pytest.raises(TypeError, match=r"pattern\[1\] must be a sparse_ref.Pattern"):
        sparse_ref.attention(q[:2], k[:2], v[:2], [pats[0], "causal"])
    with pytest.raises(ValueError, match="empty sequence"):
        oracle.attention(q, k, v, [])
    with pytest.raises(TypeError, match="sparse_ref.Pattern, got str .or a sequence"):
        sparse_ref.attention(q, k, v, "causal")
    with pytest.raises(ValueError, match="B = 3"):
        sparse_ref.attention_backward(q, k, v, pats, dout[:2])
    # a per-element pattern with H heads is checked against that element's heads
    with pytest.raises(ValueError, match="heads"):
        sparse_ref.attention(q, k, v, [*pats[:2], Pattern.stack([pats[0]] * 3)])
