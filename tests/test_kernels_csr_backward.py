"""The token-CSR backward kernels (:mod:`sparse_ref.kernels.csr_backward`) through
``attention_backward(..., form="csr")``: against the oracle (DESIGN §9 rule, factor 3) on the
gather, run and prefix paths, edge cases, non-finite inputs, determinism across thread counts and
head chunks, and the scratch kept between calls. (The oracle's own gradients: test_oracle.py.)"""

from functools import partial

import numba
import numpy as np
import pytest
from helpers import random_inputs, random_mask
from hypothesis import given
from hypothesis import strategies as st

import sparse_ref
from sparse_ref import Pattern, testing

#: the backward on token CSR whatever the pattern's blocks (form="auto" could pick the block form)
attention_backward = partial(sparse_ref.attention_backward, form="csr")


def structured_mask(kind, n_q, n_k):
    """Patterns whose rows are runs of consecutive keys (the kernels' run path)."""
    i = np.arange(n_q)[:, None]
    j = np.arange(n_k)[None, :]
    shift = n_k - n_q  # bottom-right aligned: with n_q > n_k the first rows are empty
    return {
        "window": (j <= i + shift) & (j > i + shift - 6),
        "band": abs(i - j) <= 3,
        "causal": j <= i + shift,
        "blocks": (i // 4) == (j // 4),
    }[kind]


def mask_family(rng, family, n_q, n_k, heads):
    """``random`` (gather path), ``window`` (run path), or ``mixed``: one family per head."""
    if family == "random":
        return random_mask(rng, n_q, n_k)
    if family == "window":
        return structured_mask("window", n_q, n_k)
    kinds = ["window", "band", "random", "causal", "blocks"][:heads]
    return np.stack(
        [
            random_mask(rng, n_q, n_k) if kd == "random" else structured_mask(kd, n_q, n_k)
            for kd in kinds
        ]
    )


# ------------------------------------------------------------------ the kernels against the oracle
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("h_kv", [1, 2, 4])
@pytest.mark.parametrize("family", ["random", "window", "mixed"])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_numba_matches_oracle(rng, dtype, h_kv, family, softcap):
    """GQA (H = 4); shared random and window patterns, per-head mixed ones (window, band, random,
    causal); n_q != n_k (the first rows of the windows are empty), d != d_v, d % 4 != 0."""
    q, k, v, dout = random_inputs(rng, (2, 4, 21, 6), (2, h_kv, 19, 6), 5, dtype)
    p = Pattern.from_dense(mask_family(rng, family, 21, 19, heads=4))
    grads = attention_backward(q, k, v, p, dout, softcap=softcap)
    assert [g.dtype for g in grads] == [dtype] * 3
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=softcap)


@pytest.mark.parametrize("kind", ["window", "band", "causal", "blocks"])
def test_run_path_on_longer_rows(rng, kind):
    """Runs spanning several key tiles (64), d = 64, a ragged last group of rows."""
    q, k, v, dout = random_inputs(rng, (2, 150, 64), (1, 141, 64), 32, np.float32)
    mask = structured_mask(kind, 150, 141) | structured_mask("band", 150, 141)
    if kind != "blocks":
        mask |= (np.arange(141)[None, :] > np.arange(150)[:, None] - 90) & structured_mask(
            "causal", 150, 141
        )
    p = Pattern.from_dense(mask)
    grads = attention_backward(q, k, v, p, dout, softcap=5.0)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=5.0)


@pytest.mark.parametrize("family", ["global_local", "sinks", "global_rows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_run_path_with_a_shared_prefix(rng, family, dtype):
    """Narrow windows after a few keys every row shares (global keys, sinks): the run path with a
    prefix, in the row pass and (global rows) in the column pass."""
    from sparse_ref import patterns
    from sparse_ref.kernels import csr_backward

    n = 150
    p = {
        "global_local": lambda: patterns.global_local(n, 6, 3, [0, 1, 2, 70]),
        "sinks": lambda: patterns.sinks(n, 4, 10),
        "global_rows": lambda: Pattern.from_dense(
            structured_mask("window", n, n) | (np.arange(n)[:, None] < 3)
        ),
    }[family]()
    csr = p.stacked_csr()
    rows = csr.indptr[0], csr.indices
    t = p.transpose().stacked_csr()
    cols = t.indptr[0], t.indices
    for ptr, idx in [rows] if family != "global_rows" else [cols]:
        prefix = csr_backward._common_prefix(ptr, idx, 100, csr_backward.GROUP)
        assert prefix > 0 and csr_backward._runs(ptr, idx, 100, csr_backward.GROUP, prefix)[0]
    q, k, v, dout = random_inputs(rng, (2, 2, n, 8), (2, 1, n, 8), 8, dtype)
    grads = attention_backward(q, k, v, p, dout, softcap=3.0)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=3.0)


@pytest.mark.parametrize("backend", ["numba", "oracle"])
def test_out_and_lse_are_optional(rng, backend):
    """Both backends re-derive the softmax statistics: passing the forward's results changes nothing."""
    q, k, v, dout = random_inputs(rng, (3, 11, 4), (3, 11, 4), 4, np.float32)
    p = Pattern.from_dense(random_mask(rng, 11, 11))
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True, backend=backend, form="csr")
    with_fwd = attention_backward(q, k, v, p, dout, out=out, lse=lse, backend=backend)
    without = attention_backward(q, k, v, p, dout, backend=backend)
    for a, b in zip(with_fwd, without):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("backend", ["numba", "oracle"])
def test_empty_rows_and_unattended_keys_get_zero_gradients(rng, backend):
    mask = np.zeros((6, 5), dtype=bool)
    mask[0, [0, 2]] = True
    mask[3, [2, 4]] = True
    mask[5, 0] = True  # rows 1, 2, 4 have no keys; key 1 and 3 have no queries
    q, k, v, dout = random_inputs(rng, (2, 6, 3), (2, 5, 3), 2, np.float32)
    dq, dk, dv = attention_backward(q, k, v, Pattern.from_dense(mask), dout, backend=backend)
    assert np.array_equal(dq[:, [1, 2, 4]], np.zeros((2, 3, 3)))
    assert np.array_equal(dk[:, [1, 3]], np.zeros((2, 2, 3)))
    assert np.array_equal(dv[:, [1, 3]], np.zeros((2, 2, 2)))
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    # row 5's only key is 0: weight 1, so dq_5 = 0; key 4 is seen by row 3 alone
    np.testing.assert_allclose(dq[:, 5], 0, atol=1e-6)
    testing.assert_grads_close_to_oracle((dq, dk, dv), q, k, v, Pattern.from_dense(mask), dout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_empty_pattern(rng, dtype):
    q, k, v, dout = random_inputs(rng, (4, 2), (3, 2), 2, dtype)
    grads = attention_backward(q, k, v, Pattern.from_dense(np.zeros((4, 3), bool)), dout)
    for g, x in zip(grads, (q, k, v)):
        assert np.array_equal(g, np.zeros_like(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_dimension_one(rng, dtype):
    q, k, v, dout = random_inputs(rng, (2, 10, 1), (2, 7, 1), 1, dtype)
    p = Pattern.from_dense(random_mask(rng, 10, 7, density=0.6))
    testing.assert_grads_close_to_oracle(attention_backward(q, k, v, p, dout), q, k, v, p, dout)


@pytest.mark.parametrize("rank", [2, 3])
def test_ranks_and_float16(rng, rank):
    lead = () if rank == 2 else (2,)
    q, k, v, dout = random_inputs(rng, (*lead, 8, 4), (*lead, 6, 4), 3, np.float16)
    p = Pattern.from_dense(random_mask(rng, 8, 6))
    dq, dk, dv = attention_backward(q, k, v, p, dout)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert dq.dtype == dk.dtype == dv.dtype == np.float16
    testing.assert_grads_close_to_oracle((dq, dk, dv), q, k, v, p, dout, dtype=np.float16)


@given(
    n_q=st.integers(1, 12),
    n_k=st.integers(1, 12),
    d=st.integers(1, 6),
    d_v=st.integers(1, 5),
    heads=st.sampled_from([(1, 1, 1), (2, 1, 2), (4, 2, 1), (4, 4, 4)]),
    density=st.floats(0, 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    softcap=st.sampled_from([None, 0.9, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_numba_matches_oracle_on_random_masks(
    n_q, n_k, d, d_v, heads, density, dtype, softcap, seed
):
    """The rule on random masks. Each mask gets 64 // H independent input draws (the batch): on a
    handful of entries the max error is too noisy a statistic for a factor of 3 (one draw breaks it
    about 1% of the time, for a NumPy transcription of the kernel just as for the kernel)."""
    H, H_kv, P = heads
    rng = np.random.default_rng(seed)
    B = 64 // H
    q, k, v, dout = random_inputs(rng, (B, H, n_q, d), (B, H_kv, n_k, d), d_v, dtype)
    mask = rng.random((P, n_q, n_k)) < density
    p = Pattern.from_dense(mask if P > 1 else mask[0])
    grads = attention_backward(q, k, v, p, dout, softcap=softcap)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=softcap)


# ------------------------------------------------------------------------------- non-finite input
def test_nan_in_a_query_reaches_exactly_its_keys(rng):
    q, k, v, dout = random_inputs(rng, (7, 3), (6, 3), 2)
    q[2, 1] = np.nan
    p = Pattern.from_dense(random_mask(rng, 7, 6, density=0.5))
    grads = attention_backward(q, k, v, p, dout, check_finite=False)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)  # NaN positions must agree
    keys = p.to_dense()[2]
    assert np.isnan(grads[0][2]).all() == keys.any()
    assert np.array_equal(np.isnan(grads[1]).any(axis=1), keys)


def test_infinite_value_of_a_key_nobody_attends_does_not_leak(rng):
    q, k, v, dout = random_inputs(rng, (5, 3), (4, 3), 2)
    mask = np.ones((5, 4), dtype=bool)
    mask[:, 2] = False
    k[2] = np.inf
    v[2] = -np.inf
    for backend in ("numba", "oracle"):
        grads = attention_backward(
            q, k, v, Pattern.from_dense(mask), dout, check_finite=False, backend=backend
        )
        assert all(np.isfinite(g).all() for g in grads), backend
        assert np.array_equal(grads[1][2], np.zeros(3)) and np.array_equal(grads[2][2], np.zeros(2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", ["random", "window"])
def test_non_finite_values_of_a_row_without_gradient_do_not_leak(rng, dtype, family):
    """A row whose scores are all -inf gets no gradient; the oracle skips it, so the inf in its q
    and the NaN in its dout must not reach its keys' dk/dv (a weight 0 times inf is NaN). Rows
    without keys holding inf/NaN, for good measure."""
    q, k, v, dout = random_inputs(rng, (1, 2, 40, 4), (1, 2, 40, 4), 3, dtype)
    mask = np.stack([mask_family(rng, family, 40, 40, heads=1)] * 2)
    mask[:, :, 0] = True  # every row has keys ...
    mask[:, 5] = False  # ... but row 5
    k[..., 0] = np.abs(k[..., 0]) + 0.5
    q[0, 1, 9] = [-np.inf, 0, 0, 0]  # scores -inf * k0 = -inf for all keys: no gradient
    dout[0, 1, 9, 1] = np.nan
    q[0, 0, 5] = np.inf
    dout[0, 0, 5] = -np.inf
    p = Pattern.from_dense(mask)
    grads = attention_backward(q, k, v, p, dout, check_finite=False)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)
    assert all(np.isfinite(g).all() for g in grads)
    assert not grads[0][0, 1, 9].any()


# ---------------------------------------------------------------------------------- determinism
def test_bitwise_identical_for_any_thread_count(rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has a single thread here: cannot compare thread counts")
    q, k, v, dout = random_inputs(rng, (2, 4, 300, 32), (2, 2, 300, 32), 32, np.float32)
    p = Pattern.from_dense(mask_family(rng, "mixed", 300, 300, heads=4))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = attention_backward(q, k, v, p, dout, softcap=3.0)
        numba.set_num_threads(2)
        two = attention_backward(q, k, v, p, dout, softcap=3.0)
        again = attention_backward(q, k, v, p, dout, softcap=3.0)
    finally:
        numba.set_num_threads(before)
    for a, b, c in zip(one, two, again):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_head_chunks_do_not_change_the_result(rng, monkeypatch):
    """The scratch budget splits the heads over several calls of the two passes: same bits."""
    from sparse_ref.kernels import csr_backward

    q, k, v, dout = random_inputs(rng, (3, 4, 40, 8), (3, 2, 40, 8), 8, np.float32)
    p = Pattern.from_dense(mask_family(rng, "mixed", 40, 40, heads=4))
    whole = attention_backward(q, k, v, p, dout)
    monkeypatch.setattr(csr_backward, "SCRATCH_BYTES", 1)  # one head per call
    split = attention_backward(q, k, v, p, dout)
    for a, b in zip(whole, split):
        assert a.tobytes() == b.tobytes()


def test_reused_scratch_is_never_read_before_written(rng):
    """The scratch kept between calls is poisoned with NaN bits: the next call gives the same bits."""
    from sparse_ref.kernels import _workspace

    q, k, v, dout = random_inputs(rng, (1, 2, 70, 8), (1, 2, 70, 8), 8, np.float32)
    p = Pattern.from_dense(mask_family(rng, "mixed", 70, 70, heads=2))
    first = attention_backward(q, k, v, p, dout)
    kept = _workspace.kept_bytes()
    assert kept > 0
    buffer = _workspace.borrow(kept)
    assert _workspace.kept_bytes() == 0  # taken out while borrowed
    buffer[:] = 0xFF  # NaN in every float lane
    _workspace.give_back(buffer)
    second = attention_backward(q, k, v, p, dout)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


def test_workspace_keeps_the_largest_buffer_under_its_cap(monkeypatch):
    from sparse_ref.kernels import _workspace

    _workspace.release()
    assert _workspace.kept_bytes() == 0
    small, large = _workspace.borrow(100), _workspace.borrow(1000)
    _workspace.give_back(large)
    _workspace.give_back(small)  # smaller than the kept one: dropped
    assert _workspace.kept_bytes() == 1000
    assert _workspace.borrow(500) is large  # large enough: reused
    monkeypatch.setattr(_workspace, "KEEP_BYTES", 999)
    _workspace.give_back(large)  # over the cap: freed
    assert _workspace.kept_bytes() == 0
    a, b = _workspace.carve(
        _workspace.borrow(_workspace.nbytes_for([(3,), (2, 5)], np.dtype(np.float64))),
        [(3,), (2, 5)],
        np.dtype(np.float64),
    )
    assert (
        a.shape == (3,)
        and b.shape == (2, 5)
        and a.ctypes.data % 64 == 0
        and b.ctypes.data % 64 == 0
    )
    assert b.ctypes.data >= a.ctypes.data + a.nbytes  # no overlap


# Bad inputs of attention_backward: rows "bw-*" of the matrix in tests/test_bad_inputs.py.


def test_lse_may_hold_minus_inf_for_rows_without_keys(rng):
    q, k, v, dout = random_inputs(rng, (4, 2), (4, 2), 2)
    mask = np.tril(np.ones((4, 4), dtype=bool))
    mask[2] = False
    p = Pattern.from_dense(mask)
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True, form="csr")
    assert np.isneginf(lse[2])
    grads = attention_backward(q, k, v, p, dout, out=out, lse=lse)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)
