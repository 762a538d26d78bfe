"""sparse_ref.interop.jax.attention: jax.custom_vjp over jax.pure_callback.

The function must give exactly what the NumPy API gives on the same data (it only moves arrays),
its gradients must match :func:`sparse_ref.attention_backward` and a dense JAX reference (also
through ``lse``), and it must work under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax (the jax extra) is not installed")
jnp = pytest.importorskip("jax.numpy")

import sparse_ref  # noqa: E402
from sparse_ref import patterns  # noqa: E402
from sparse_ref.interop.jax import attention  # noqa: E402
from sparse_ref.pattern import Pattern  # noqa: E402

N = 24


@pytest.fixture(autouse=True, scope="module")
def x64():
    """float64 needs JAX's 64-bit mode; restored afterwards."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def _with_empty_rows(n: int) -> Pattern:
    mask = np.random.default_rng(3).random((n, n)) < 0.3
    mask[::5] = False
    return Pattern.from_dense(mask)


PATTERN = patterns.causal_sliding_window(N, 5)


def _qkv(dtype="float64", B=2, H=4, H_kv=2, n=N, d=8, dv=6, seed=0):
    rng = np.random.default_rng(seed)
    shapes = ((B, H, n, d), (B, H_kv, n, d), (B, H_kv, n, dv))
    return [jnp.asarray(rng.standard_normal(s)).astype(dtype) for s in shapes]


def _dense_reference(q, k, v, mask, scale):
    """Plain JAX masked softmax (float64), differentiated by JAX itself."""
    group = q.shape[1] // k.shape[1]
    k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
    s = jnp.einsum("bhid,bhjd->bhij", q, k) * scale
    s = jnp.where(mask, s, -jnp.inf)
    lse = jax.nn.logsumexp(s, axis=-1)
    p = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isfinite(lse), lse, 0)[..., None]), 0)
    return jnp.einsum("bhij,bhjd->bhid", p, v), lse


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_forward_equals_the_numpy_api(dtype) -> None:
    q, k, v = _qkv(dtype)
    out, lse = jax.jit(lambda q, k, v: attention(q, k, v, PATTERN, return_lse=True))(q, k, v)
    assert out.dtype == q.dtype and out.shape == (2, 4, N, 6)
    ct = np.float64 if dtype == "float64" else np.float32
    ref_out, ref_lse = sparse_ref.attention(
        *(np.asarray(x).astype(ct) for x in (q, k, v)), PATTERN, return_lse=True
    )
    np.testing.assert_array_equal(np.asarray(out), ref_out.astype(q.dtype))
    np.testing.assert_array_equal(np.asarray(lse), ref_lse)


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_grad_equals_attention_backward(dtype) -> None:
    q, k, v = _qkv(dtype)
    dout = _qkv(dtype, seed=1)[0][..., :6]

    def loss(q, k, v):
        return (attention(q, k, v, PATTERN) * dout).astype(jnp.float32).sum()  # dout exact

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    ct = np.float64 if dtype == "float64" else np.float32
    ref = sparse_ref.attention_backward(
        *(np.asarray(x).astype(ct) for x in (q, k, v)), PATTERN, np.asarray(dout).astype(ct)
    )
    for got, want, x in zip(grads, ref, (q, k, v)):
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(got), want.astype(x.dtype))


@pytest.mark.parametrize("pattern", [PATTERN, _with_empty_rows(N)], ids=["window", "empty_rows"])
def test_grad_through_out_and_lse_matches_dense_jax(pattern) -> None:
    q, k, v = _qkv()
    mask = jnp.asarray(pattern.to_dense())
    w = _qkv(seed=2)[0][..., 0]
    scale = 0.6

    def ours(q, k, v):
        out, lse = attention(q, k, v, pattern, scale=scale, return_lse=True)
        return (out**2).sum() + (w * jnp.where(jnp.isfinite(lse), lse, 0)).sum()

    def theirs(q, k, v):
        out, lse = _dense_reference(q, k, v, mask, scale)
        return (out**2).sum() + (w * jnp.where(jnp.isfinite(lse), lse, 0)).sum()

    got = jax.grad(ours, argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(theirs, argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11)
    # a different pattern gives a different gradient: the comparison can fail
    other = jax.grad(lambda q: attention(q, k, v, patterns.causal(N)).sum())(q)
    assert not np.allclose(np.asarray(other), np.asarray(got[0]))


def test_vmap_over_the_batch_equals_the_batched_call() -> None:
    q, k, v = _qkv()
    batched = attention(q, k, v, PATTERN)
    mapped = jax.jit(jax.vmap(lambda q, k, v: attention(q, k, v, PATTERN)))(q, k, v)
    np.testing.assert_array_equal(np.asarray(mapped), np.asarray(batched))
    # an unbatched k/v (in_axes None) is broadcast to every element
    one_kv = jax.vmap(lambda q: attention(q, k[0], v[0], PATTERN))(q)
    np.testing.assert_array_equal(
        np.asarray(one_kv[0]), np.asarray(attention(q[:1], k[:1], v[:1], PATTERN))[0]
    )
    # vmap of grad, and vmap over an extra axis of 4-D inputs
    g = jax.vmap(jax.grad(lambda q, k, v: attention(q, k, v, PATTERN).sum()))(q, k, v)
    g_ref = jax.grad(lambda q: attention(q, k, v, PATTERN).sum())(q)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref))
    stacked = jax.vmap(lambda q, k, v: attention(q, k, v, PATTERN))(*(x[None] for x in (q, k, v)))
    np.testing.assert_array_equal(np.asarray(stacked[0]), np.asarray(batched))


def test_per_batch_patterns_and_errors() -> None:
    q, k, v = _qkv()
    pats = [PATTERN, _with_empty_rows(N)]
    out = jax.jit(lambda q, k, v: attention(q, k, v, pats))(q, k, v)
    for b, p in enumerate(pats):
        one = attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], p)
        np.testing.assert_array_equal(np.asarray(out[b : b + 1]), np.asarray(one))
    with pytest.raises(ValueError, match="batch size B = 3"):
        attention(q, k, v, [*pats, PATTERN])
    with pytest.raises(ValueError, match="pattern has shape"):
        attention(q, k, v, patterns.causal(N + 1))
    with pytest.raises(TypeError, match="mixed dtypes"):
        attention(q, k.astype(jnp.float32), v, PATTERN)
    with pytest.raises(TypeError, match="q must be float64"):
        attention(q.astype(jnp.int32), k, v, PATTERN)
    with pytest.raises(TypeError, match="sparse_ref.Pattern"):
        attention(q, k, v, "causal")
