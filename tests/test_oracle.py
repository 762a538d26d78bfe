"""The oracle against an independent per-element float64 definition written here with math.*."""

import math

import numpy as np
import pytest
from helpers import random_inputs, random_mask
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import Pattern, oracle


def brute_force(q, k, v, mask, scale, softcap=None):
    """(n_q, d), (n_k, d), (n_k, d_v), bool (n_q, n_k) -> out, lse; plain Python loops."""
    n_q, n_k = mask.shape
    out = np.zeros((n_q, v.shape[1]))
    lse = np.full(n_q, -np.inf)
    for i in range(n_q):
        keys = [j for j in range(n_k) if mask[i, j]]
        scores = []
        for j in keys:
            s = scale * sum(float(a) * float(b) for a, b in zip(q[i], k[j]))
            if softcap is not None:
                s = softcap * math.tanh(s / softcap)
            scores.append(s)
        if not keys:
            continue
        m = max(scores)
        weights = [math.exp(s - m) for s in scores]
        total = sum(weights)
        for w, j in zip(weights, keys):
            out[i] += w * v[j] / total
        lse[i] = m + math.log(total)
    return out, lse


@given(
    n_q=st.integers(1, 9),
    n_k=st.integers(1, 9),
    d=st.integers(1, 5),
    density=st.floats(0, 1),
    softcap=st.sampled_from([None, 0.7, 5.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_oracle_matches_brute_force(n_q, n_k, d, density, softcap, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_q, n_k)) < density
    q, k = rng.standard_normal((n_q, d)), rng.standard_normal((n_k, d))
    v = rng.standard_normal((n_k, 3))
    out, lse = oracle.attention(q, k, v, Pattern.from_dense(mask), softcap=softcap, return_lse=True)
    want_out, want_lse = brute_force(q, k, v, mask, 1 / math.sqrt(d), softcap)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-13)
    assert np.array_equal(np.isneginf(lse), ~mask.any(axis=1))


def test_empty_rows_give_zero_and_neg_inf(rng):
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 2] = True
    q, k, v = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    out, lse = oracle.attention(q, k, v, Pattern.from_dense(mask), return_lse=True)
    assert np.array_equal(out[[0, 2, 3]], np.zeros((3, 2)))
    assert np.all(np.isneginf(lse[[0, 2, 3]]))
    np.testing.assert_array_equal(out[1], v[2])
    assert not np.isnan(out).any()


def test_nan_only_in_rows_that_see_it(rng):
    mask = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    q, k, v = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    k[1, 0] = np.nan
    out, lse = oracle.attention(
        q, k, v, Pattern.from_dense(mask), return_lse=True, check_finite=False
    )
    assert np.isnan(out[1]).all() and np.isnan(lse[1])
    assert np.isfinite(out[[0, 2]]).all() and np.isfinite(lse[[0, 2]]).all()


def test_infinite_value_of_an_excluded_key_does_not_leak(rng):
    mask = np.array([[1, 0], [1, 1]], dtype=bool)
    q, k, v = rng.standard_normal((2, 2)), rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    v[1] = np.inf
    out = oracle.attention(q, k, v, Pattern.from_dense(mask), check_finite=False)
    np.testing.assert_array_equal(out[0], v[0])
    assert np.isinf(out[1]).all()


def test_gqa_uses_kv_head_h_over_group(rng):
    q = rng.standard_normal((1, 4, 6, 3))
    k, v = rng.standard_normal((1, 2, 6, 3)), rng.standard_normal((1, 2, 6, 3))
    p = Pattern.from_dense(np.tril(np.ones((6, 6), dtype=bool)))
    out = oracle.attention(q, k, v, p)
    for h in range(4):
        np.testing.assert_array_equal(
            out[0, h], oracle.attention(q[0, h], k[0, h // 2], v[0, h // 2], p)
        )


def test_per_head_patterns(rng):
    masks = rng.random((3, 5, 5)) < 0.5
    q, k, v = (rng.standard_normal((3, 5, 2)) for _ in range(3))
    out = oracle.attention(q, k, v, Pattern.from_dense(masks))
    for h in range(3):
        np.testing.assert_array_equal(
            out[h], oracle.attention(q[h], k[h], v[h], Pattern.from_dense(masks[h]))
        )


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunking_does_not_change_the_result(rng, chunk):
    mask = rng.random((17, 11)) < 0.4
    q, k, v = (
        rng.standard_normal((17, 4)),
        rng.standard_normal((11, 4)),
        rng.standard_normal((11, 4)),
    )
    p = Pattern.from_dense(mask)
    np.testing.assert_allclose(
        oracle.attention(q, k, v, p, chunk=chunk),
        oracle.attention(q, k, v, p),
        rtol=1e-14,
        atol=1e-15,
    )


def test_attention_rows_equals_selected_rows(rng):
    mask = rng.random((20, 20)) < 0.3
    q, k, v = (rng.standard_normal((20, 4)) for _ in range(3))
    p = Pattern.from_dense(mask)
    rows = np.array([0, 7, 19, 3])
    full, full_lse = oracle.attention(q, k, v, p, return_lse=True)
    part, part_lse = oracle.attention_rows(q, k, v, p, rows, return_lse=True)
    np.testing.assert_allclose(part, full[rows], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(part_lse, full_lse[rows], rtol=1e-14, atol=1e-15)


def test_compute_dtype_float32_is_float32(rng):
    q, k, v = (rng.standard_normal((6, 4)).astype(np.float32) for _ in range(3))
    p = Pattern.from_dense(np.ones((6, 6), dtype=bool))
    out, lse = oracle.attention(q, k, v, p, compute_dtype=np.float32, return_lse=True)
    assert out.dtype == np.float32 and lse.dtype == np.float32


@pytest.mark.parametrize("rows", [np.array([20]), np.array([-1]), np.array([[1]])])
def test_attention_rows_rejects_bad_rows(rng, rows):
    q = rng.standard_normal((20, 4))
    p = Pattern.from_dense(np.ones((20, 20), dtype=bool))
    with pytest.raises((ValueError, TypeError), match="rows"):
        oracle.attention_rows(q, q, q, p, rows)


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("softcap", [None, 1.3])
def test_oracle_matches_central_finite_differences(rng, softcap):
    """Every entry of dq, dk, dv against (L(x + eps) - L(x - eps)) / 2 eps, L = sum(out * dout)."""
    q, k, v, dout = random_inputs(rng, (1, 2, 4, 3), (1, 1, 5, 3), 2)
    mask = random_mask(rng, 4, 5, heads=2, density=0.6)
    p = Pattern.from_dense(mask)
    grads = oracle.attention_backward(q, k, v, p, dout, softcap=softcap)

    def loss(q, k, v):
        return float((oracle.attention(q, k, v, p, softcap=softcap) * dout).sum())

    eps = 1e-6
    for which, (x, grad) in enumerate(zip((q, k, v), grads)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args_hi, args_lo = [q.copy(), k.copy(), v.copy()], [q.copy(), k.copy(), v.copy()]
            args_hi[which][idx] += eps
            args_lo[which][idx] -= eps
            numeric[idx] = (loss(*args_hi) - loss(*args_lo)) / (2 * eps)
        np.testing.assert_allclose(
            grad, numeric, rtol=1e-7, atol=1e-8, err_msg=("dq", "dk", "dv")[which]
        )
    assert np.array_equal(grads[0][0, :, 1], np.zeros((2, 3)))  # the empty row


def torch_masked_attention(torch, q, k, v, mask, scale, softcap):
    """float64 dense masked softmax in torch; rows with no keys give 0 (and zero gradients)."""
    group = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(group, dim=1)
    vv = v.repeat_interleave(group, dim=1)
    s = scale * q @ kk.transpose(-1, -2)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    has_key = mask.any(dim=-1, keepdim=True)
    s = s.masked_fill(~mask, -math.inf).masked_fill(~has_key, 0.0)
    return (torch.softmax(s, dim=-1) * has_key) @ vv


@pytest.mark.parametrize("softcap", [None, 0.8])
def test_oracle_matches_torch_autograd(rng, softcap):
    torch = pytest.importorskip("torch", reason="torch not installed: autograd cross-check skipped")
    q, k, v, dout = random_inputs(rng, (2, 4, 7, 5), (2, 2, 6, 5), 3)
    mask = random_mask(rng, 7, 6, heads=4)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    out = torch_masked_attention(torch, tq, tk, tv, torch.tensor(mask), 0.37, softcap)
    out.backward(torch.tensor(dout))
    grads = oracle.attention_backward(
        q, k, v, Pattern.from_dense(mask), dout, scale=0.37, softcap=softcap
    )
    for got, want in zip(grads, (tq.grad, tk.grad, tv.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("chunk", [1, 4])
def test_oracle_chunking_does_not_change_the_gradients(rng, chunk):
    q, k, v, dout = random_inputs(rng, (2, 9, 4), (1, 7, 4), 3)
    p = Pattern.from_dense(random_mask(rng, 9, 7))
    full = oracle.attention_backward(q, k, v, p, dout)
    for a, b in zip(oracle.attention_backward(q, k, v, p, dout, chunk=chunk), full):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
