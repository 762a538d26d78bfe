"""sparse_ref.attention: layouts, dtypes, GQA, backends (bad inputs: tests/test_bad_inputs.py)."""

import numpy as np
import pytest
import scipy.sparse as sp

import sparse_ref
from sparse_ref import Pattern, testing

BACKENDS = ["numba", "oracle"]


def random_pattern(rng, n_q, n_k, heads=1, density=0.4):
    mask = rng.random((heads, n_q, n_k)) < density
    mask[:, 0, :] = False  # always one empty row
    return Pattern.from_dense(mask if heads > 1 else mask[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_ranks_and_dtypes(rng, backend, dtype, rank):
    shape = {2: (), 3: (3,), 4: (2, 3)}[rank]
    q = rng.standard_normal((*shape, 10, 4)).astype(dtype)
    k = rng.standard_normal((*shape, 7, 4)).astype(dtype)
    v = rng.standard_normal((*shape, 7, 5)).astype(dtype)
    p = random_pattern(rng, 10, 7)
    out, lse = sparse_ref.attention(q, k, v, p, backend=backend, return_lse=True)
    assert out.shape == (*shape, 10, 5) and out.dtype == dtype
    assert lse.shape == (*shape, 10) and lse.dtype == dtype
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h_kv", [1, 2, 4])
def test_gqa_and_per_head_patterns(rng, backend, h_kv):
    q = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    k = rng.standard_normal((2, h_kv, 9, 8)).astype(np.float32)
    v = rng.standard_normal((2, h_kv, 9, 8)).astype(np.float32)
    p = random_pattern(rng, 9, 9, heads=4)
    out, lse = sparse_ref.attention(q, k, v, p, backend=backend, return_lse=True, softcap=2.0)
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse, softcap=2.0)


def test_float16_is_computed_in_float32_and_returned_as_float16(rng):
    q, k, v = (rng.standard_normal((6, 4)).astype(np.float16) for _ in range(3))
    p = random_pattern(rng, 6, 6)
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    testing.assert_close_to_oracle(out, q, k, v, p)


def test_non_contiguous_non_writeable_and_big_endian_inputs(rng):
    base = rng.standard_normal((12, 8, 2)).astype(np.float32)
    q = base[:, :, 0]  # strided view
    k = np.array(base[:, :, 1])
    k.flags.writeable = False
    v = base[:, :, 1].astype(">f4")
    p = random_pattern(rng, 12, 12)
    out = sparse_ref.attention(q, k, v, p)
    testing.assert_close_to_oracle(out, q, k, v.astype(np.float32), p)


def test_dlpack_and_array_protocol_inputs(rng):
    class ArrayLike:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    q = rng.standard_normal((5, 3))
    p = random_pattern(rng, 5, 5)
    want = sparse_ref.attention(q, q, q, p)
    np.testing.assert_array_equal(sparse_ref.attention(ArrayLike(q), q, q, p), want)
    torch = pytest.importorskip("torch", reason="torch not installed: DLPack input not tested")
    t = torch.from_numpy(q)
    np.testing.assert_array_equal(sparse_ref.attention(t, t, t, p), want)


def test_explicit_scale_is_used(rng):
    q, k, v = (rng.standard_normal((5, 3)) for _ in range(3))
    p = random_pattern(rng, 5, 5)
    a = sparse_ref.attention(q, k, v, p, scale=0.25)
    b = sparse_ref.attention(q * 0.25 * np.sqrt(3), k, v, p)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_check_finite_false_propagates_nan_like_the_oracle(rng):
    q, k, v = (rng.standard_normal((6, 3)) for _ in range(3))
    q[2, 1] = np.nan
    p = random_pattern(rng, 6, 6)
    out, lse = sparse_ref.attention(q, k, v, p, check_finite=False, return_lse=True)
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse)


# Bad inputs (wrong ranks, shapes, dtypes, values, options) are rows of the one table in
# tests/test_bad_inputs.py.


def test_zero_length_sequences(rng):
    q = rng.standard_normal((0, 4))
    k = rng.standard_normal((3, 4))
    out, lse = sparse_ref.attention(q, k, k, Pattern.from_csr(sp.csr_array((0, 3))), return_lse=True)
    assert out.shape == (0, 4) and lse.shape == (0,)
    q = rng.standard_normal((3, 4))
    k = rng.standard_normal((0, 4))
    out, lse = sparse_ref.attention(q, k, k, Pattern.from_csr(sp.csr_array((3, 0))), return_lse=True)
    assert np.array_equal(out, np.zeros((3, 4))) and np.isneginf(lse).all()
