"""The Numba BSR backward kernel against the float64 oracle (DESIGN §9 rule, factor 3), edge cases,
non-finite inputs, determinism across thread counts, and a long window without token CSR."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from block_cases import BLOCKS, STRUCTURES
from helpers import pattern_inputs
from hypothesis import given
from hypothesis import strategies as st

import sparse_ref
from sparse_ref import Pattern, blocks, oracle, patterns, testing
from sparse_ref.backends import numba as numba_backend
from sparse_ref.kernels import bsr_backward as kernel_module
from sparse_ref.validation import prepare


def _inputs(pattern: Pattern, dtype, **kw):
    return pattern_inputs(pattern, dtype, with_dout=True, **kw)


def _check(pattern, q, k, v, dout, **kw):
    grads = sparse_ref.attention_backward(q, k, v, pattern, dout, **kw)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    assert [g.dtype for g in grads] == [q.dtype] * 3
    testing.assert_grads_close_to_oracle(
        grads, q, k, v, pattern, dout, scale=kw.get("scale"), softcap=kw.get("softcap")
    )
    return grads


def _with_threads(threads: int, fn):
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        return fn()
    finally:
        numba.set_num_threads(before)


def _refuse_token_csr(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the BSR backward must not build token CSR")

    monkeypatch.setattr(Pattern, "stacked_csr", refuse)
    monkeypatch.setattr(Pattern, "to_csr", refuse)


# ----------------------------------------------------------------------- against the oracle
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_structures_match_the_oracle(name, block, dtype):
    pattern = STRUCTURES[name](block)
    assert pattern.block == (block, block)
    _check(pattern, *_inputs(pattern, dtype))


@pytest.mark.parametrize("block", [(16, 64), (64, 16), (128, 32), (3, 5)], ids=str)
def test_rectangular_and_odd_blocks(block):
    pattern = Pattern.from_bsr(patterns.sinks(203, 5, 33, block=block).block_form)
    _check(pattern, *_inputs(pattern, np.float32, d=32, d_v=48))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_loop_path_for_small_tiles(monkeypatch, dtype):
    monkeypatch.setattr(kernel_module, "BLAS_MIN_TILE", 1 << 60)  # plain loops instead of GEMMs
    for name in ("causal_sliding_window", "all_partial", "layout_empty_rows"):
        pattern = STRUCTURES[name](32)
        _check(pattern, *_inputs(pattern, dtype, d=24, d_v=12), softcap=3.0)


@pytest.mark.parametrize("tile_keys", [1, 64, 100, 4096])
def test_key_tiles_of_any_width(monkeypatch, tile_keys):
    monkeypatch.setattr(kernel_module, "TILE_KEYS", tile_keys)
    pattern = STRUCTURES["global_local"](32)
    _check(pattern, *_inputs(pattern, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("per_head", [False, True])
def test_gqa_batches_and_per_head_patterns(per_head, kv_heads, dtype):
    parts = [
        patterns.causal_sliding_window(130, 20, block=32).block_form,
        patterns.sinks(130, 3, 9, block=32).block_form,
        patterns.global_local(130, 5, 5, [7], block=32).block_form,
        patterns.causal(130, block=32).block_form,
    ]
    pattern = Pattern.from_bsr(blocks.stack(parts) if per_head else parts[0])
    _check(pattern, *_inputs(pattern, dtype, heads=4, kv_heads=kv_heads, batch=2, d_v=40))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["sinks", "all_partial", "dense_all_full"])
def test_softcap_and_scale(name, dtype):
    pattern = STRUCTURES[name](64)
    q, k, v, dout = _inputs(pattern, dtype)
    _check(pattern, 3 * q, k, v, dout, scale=0.7, softcap=5.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bigbird_and_block_sparse_catalog(dtype):
    bigbird = patterns.bigbird(300, 32, num_heads=2, seed=3)
    assert bigbird.block == (32, 32) and bigbird.num_heads == 2
    _check(bigbird, *_inputs(bigbird, dtype, heads=2, d=32))
    layout = np.random.default_rng(4).random((2, 5, 4)) < 0.5
    layout[0, 2] = False  # an empty block row
    sparse = patterns.block_sparse(layout, (64, 48), n_q=300, n_k=190)
    assert sparse.block == (64, 48)
    _check(sparse, *_inputs(sparse, dtype, heads=2, kv_heads=1, batch=2, d=16))


@pytest.mark.parametrize("block", [16, 128])
def test_catalog_window_with_block_form(block):
    pattern = patterns.causal_sliding_window(700, 300, block=block)
    assert pattern.block == (block, block)
    _check(pattern, *_inputs(pattern, np.float32, heads=2, kv_heads=1), softcap=20.0)


def test_ranks_and_float16():
    pattern = STRUCTURES["sinks"](32)
    q, k, v, dout = _inputs(pattern, np.float32, d=16)
    two = sparse_ref.attention_backward(q[0, 0], k[0, 0], v[0, 0], pattern, dout[0, 0])
    four = sparse_ref.attention_backward(q, k, v, pattern, dout)
    assert [g.shape for g in two] == [(300, 16)] * 3
    for a, b in zip(two, four):
        assert a.tobytes() == b[0, 0].tobytes()
    qh, kh, vh, gh = (x.astype(np.float16) for x in (q, k, v, dout))
    grads = sparse_ref.attention_backward(qh, kh, vh, pattern, gh)
    assert all(g.dtype == np.float16 for g in grads)
    testing.assert_grads_close_to_oracle(grads, qh, kh, vh, pattern, gh, dtype=np.float16)


# ---------------------------------------------------------------------------------- edge cases
def test_empty_block_rows_and_unattended_keys_get_zero_gradients():
    layout = np.random.default_rng(5).random((10, 8)) < 0.5
    layout[[1, -1]] = False  # empty block rows, the last one ragged
    layout[:, [2, -1]] = False  # key block columns nobody attends, the last one ragged
    pattern = Pattern.from_block_layout(layout, 32, n_q=290, n_k=250)
    q, k, v, dout = _inputs(pattern, np.float32, heads=2, kv_heads=1)
    dq, dk, dv = _check(pattern, q, k, v, dout)
    dense = pattern.to_dense()
    empty_rows = ~dense.any(axis=1)
    unattended = ~dense.any(axis=0)
    assert empty_rows.sum() == 32 + 2 and unattended.sum() == 32 + 26
    assert (dq[:, :, empty_rows] == 0).all()
    assert (dk[:, :, unattended] == 0).all() and (dv[:, :, unattended] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_pattern_without_entries(dtype):
    nothing = Pattern.from_bsr(patterns.causal_sliding_window(40, 0, block=16).block_form)
    q, k, v, dout = _inputs(nothing, dtype, d=8)
    for g, x in zip(sparse_ref.attention_backward(q, k, v, nothing, dout), (q, k, v)):
        assert np.array_equal(g, np.zeros_like(x))


# causal window 30 in blocks of 16: (array, token, component, value), and the gradient rows that
# must stay finite because the value sits only on entries they exclude (their diagonal block holds
# it, so a plain product over the block would meet it with a zero weight)
NON_FINITE = {
    "k_inf_masked_for_rows_48_49": ("k", 50, 2, np.inf, "dq", [48, 49]),
    "v_inf_masked_for_rows_48_50": ("v", 51, 3, -np.inf, "dq", [48, 49, 50]),
    "q_inf_masked_for_keys_21_31": ("q", 20, 1, np.inf, "dk", list(range(21, 32))),
    "dout_inf_masked_for_keys_37_47": ("dout", 36, 0, np.inf, "dv", list(range(37, 48))),
    "v_nan": ("v", 5, 5, np.nan, "dq", [0, 1, 2, 3, 4]),
}


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the oracle's NaN
@pytest.mark.parametrize("d", [16, 64], ids=["loops", "blas"])  # 16 * 16 * d vs BLAS_MIN_TILE
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(NON_FINITE))
def test_non_finite_inputs_follow_the_oracle(case, dtype, d):
    """NaN and infinite values of allowed entries give NaN exactly where the oracle does; values
    that only excluded entries would meet do not leak (0 * inf)."""
    name, token, comp, value, grad, finite_rows = NON_FINITE[case]
    pattern = Pattern.from_bsr(patterns.causal_sliding_window(100, 30, block=16).block_form)
    arrays = dict(zip(("q", "k", "v", "dout"), _inputs(pattern, dtype, d=d)))
    arrays = {key: np.abs(x) + 0.1 for key, x in arrays.items()}
    arrays[name][0, 0, token, comp] = value
    grads = _check(pattern, *arrays.values(), check_finite=False)
    got = dict(zip(("dq", "dk", "dv"), grads))[grad][0, 0]
    assert np.isfinite(got[finite_rows]).all()
    assert not all(np.isfinite(g).all() for g in grads)  # the value did reach other gradients


@pytest.mark.parametrize("d", [8, 64], ids=["loops", "blas"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_rows_without_keys_do_not_leak_their_values(dtype, d):
    """A query whose scores are all -inf has no gradient, and its infinite q and dout do not
    reach dk/dv through zero weights: the oracle skips the row, and so does the kernel (the CSR
    kernel gives NaN there)."""
    pattern = Pattern.from_block_layout(np.ones((2, 2), dtype=bool), 16)  # full blocks only
    q, k, v, dout = _inputs(pattern, dtype, d=d)
    k[..., 0] = -np.abs(k[..., 0]) - 0.1
    q[0, 0, 3] = 0.0
    q[0, 0, 3, 0] = np.inf  # row 3: every score is -inf
    dout[0, 0, 3] = np.inf
    grads = _check(pattern, q, k, v, dout, check_finite=False)
    assert all(np.isfinite(g).all() for g in grads)
    assert (grads[0][0, 0, 3] == 0).all()


# ---------------------------------------------------------------------------------- determinism
def test_bitwise_identical_for_any_thread_count_and_across_runs(monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has a single thread here: cannot compare thread counts")
    parts = [
        patterns.global_local(600, 40, 30, [0, 300], block=64).block_form,
        patterns.causal_sliding_window(600, 130, block=64).block_form,
        patterns.sinks(600, 3, 200, block=64).block_form,
        patterns.dense(600, 600, block=64).block_form,
    ]
    pattern = Pattern.from_bsr(blocks.stack(parts)).causal()  # partial blocks on the diagonal
    q, k, v, dout = _inputs(pattern, np.float32, heads=4, kv_heads=2, batch=2, d=32)
    monkeypatch.setattr(kernel_module, "SCRATCH_BYTES", 400_000)  # several chunks and bands

    def run():
        return sparse_ref.attention_backward(q, k, v, pattern, dout, softcap=4.0)

    one = _with_threads(1, run)
    two = _with_threads(2, run)
    again = _with_threads(2, run)
    for a, b, c in zip(one, two, again):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    testing.assert_grads_close_to_oracle(one, q, k, v, pattern, dout, softcap=4.0)


@pytest.mark.parametrize("per_head", [False, True])
def test_bands_and_head_chunks_keep_the_order_of_the_sums(monkeypatch, per_head):
    """With one head per chunk and one block row per band the partials reach dk/dv in the same
    order (head, then block row) as in a single band: the same bits."""
    parts = [
        patterns.sinks(300, 4, 40, block=32).block_form,
        patterns.causal(300, block=32).block_form,
    ]
    pattern = Pattern.from_bsr(blocks.stack(parts) if per_head else parts[0])
    q, k, v, dout = _inputs(pattern, np.float64, heads=2, kv_heads=1, batch=2, d=16)
    whole = sparse_ref.attention_backward(q, k, v, pattern, dout)
    assert len(kernel_module.bands(np.full((1, 10), 100), 2, 2, 1)) == 2 * 2 * 10
    monkeypatch.setattr(kernel_module, "SCRATCH_BYTES", 1)
    split = sparse_ref.attention_backward(q, k, v, pattern, dout)
    for a, b in zip(whole, split):
        assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------- dispatch
def test_backend_picks_bsr_for_block_forms_and_never_builds_token_csr(monkeypatch):
    calls = []
    real_bsr, real_csr = numba_backend.bsr_backward, numba_backend.csr_backward
    monkeypatch.setattr(
        numba_backend, "bsr_backward", lambda *a: calls.append("bsr") or real_bsr(*a)
    )
    monkeypatch.setattr(
        numba_backend, "csr_backward", lambda *a: calls.append("csr") or real_csr(*a)
    )
    csr_pattern = patterns.causal_sliding_window(96, 9)
    q, k, v, dout = _inputs(csr_pattern, np.float64, d=16)
    a = sparse_ref.attention_backward(q, k, v, csr_pattern, dout)
    b = sparse_ref.attention_backward(q, k, v, csr_pattern.with_block_form(32), dout)
    block_only = patterns.causal_sliding_window(96, 9, block=32)
    _refuse_token_csr(monkeypatch)
    c = sparse_ref.attention_backward(q, k, v, block_only, dout)
    assert calls == ["csr", "bsr", "bsr"]
    for x, y, z in zip(a, b, c):
        assert y.tobytes() == z.tobytes()
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------- properties
@given(
    block=st.sampled_from([(1, 1), (2, 3), (5, 4), (16, 16), (32, 16)]),
    nbq=st.integers(1, 5),
    nbk=st.integers(1, 5),
    ragged=st.tuples(st.integers(0, 31), st.integers(0, 31)),
    density=st.floats(0.1, 1.0),
    full_share=st.floats(0.0, 1.0),
    heads=st.sampled_from([(1, 1, 1), (2, 1, 2), (4, 2, 1), (4, 4, 4)]),
    d=st.sampled_from([3, 8, 64]),
    dtype=st.sampled_from([np.float32, np.float64]),
    softcap=st.sampled_from([None, 0.9, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_block_layouts_match_the_oracle(
    block, nbq, nbk, ragged, density, full_share, heads, d, dtype, softcap, seed
):
    """Random layouts, each stored block full or a random partial mask, ragged last blocks, empty
    block rows and columns. The batch gives every layout several input draws: on a handful of
    entries the max error is too noisy a statistic for a factor of 3 (tests/test_backward.py)."""
    H, H_kv, P = heads
    bq, bk = block
    rng = np.random.default_rng(seed)
    n_q = nbq * bq - ragged[0] % bq
    n_k = nbk * bk - ragged[1] % bk
    layout = rng.random((P, nbq, nbk)) < density
    full = rng.random((P, nbq, nbk)) < full_share

    def expand(a):
        return a.repeat(bq, axis=1).repeat(bk, axis=2)[:, :n_q, :n_k]

    mask = expand(layout) & (expand(full) | (rng.random((P, n_q, n_k)) < 0.5))
    pattern = Pattern.from_dense(mask if P > 1 else mask[0]).with_block_form(block)
    B = 32 // H
    q = rng.standard_normal((B, H, n_q, d)).astype(dtype)
    k = rng.standard_normal((B, H_kv, n_k, d)).astype(dtype)
    v = rng.standard_normal((B, H_kv, n_k, 5)).astype(dtype)
    dout = rng.standard_normal((B, H, n_q, 5)).astype(dtype)
    grads = sparse_ref.attention_backward(q, k, v, pattern, dout, softcap=softcap)
    testing.assert_grads_close_to_oracle(grads, q, k, v, pattern, dout, softcap=softcap)


# ---------------------------------------------------------------------------------- scale
def check_window_slice(grads, q, k, v, dout, window: int, centre: int, margin: int):
    """Check dq of the rows and dk/dv of the keys within ``margin`` of ``centre``, for the causal
    window pattern over ``(n, d)`` arrays, against the oracle run on the tokens ``[lo, hi)`` that
    their computation involves: the rule ``i - window < j <= i`` is shift-invariant, so there the
    slice's gradients are the full problem's. DESIGN §9 tolerances over the checked entries.
    Returns the max errors ``(dq, dk, dv)``."""
    n = q.shape[0]
    lo, hi = max(0, centre - margin - window + 1), min(n, centre + margin + window)
    sub = patterns.causal_sliding_window(hi - lo, window, block=128)
    prep = prepare(
        q[lo:hi],
        k[lo:hi],
        v[lo:hi],
        sub,
        scale=None,
        softcap=None,
        check_finite=False,
        extra={"dout": dout[lo:hi]},
    )
    args = (prep.q, prep.k, prep.v, sub, prep.extra["dout"], prep.scale, None)
    exact = oracle.backward(*args, compute_dtype=testing.reference_dtype(q.dtype))
    naive = oracle.backward(*args, compute_dtype=q.dtype)
    sel = slice(max(lo, centre - margin) - lo, min(hi, centre + margin + 1) - lo)
    errors = []
    for name, got, want, rough in zip(("dq", "dk", "dv"), grads, exact, naive):
        want, rough = want[0, 0, sel], rough[0, 0, sel]
        tol = testing.rule_tolerance(want, rough, q.dtype, testing.GRADIENT_FACTOR)
        errors.append(testing.assert_matches(got[lo:hi][sel], want, tol, name))
    return tuple(errors)


@pytest.mark.slow
def test_long_causal_window_without_token_csr(monkeypatch):
    """n = 2**17, causal window 4096, blocks of 128 (1/8 of the million-token run): no token CSR,
    extra memory of the call bounded by the outputs plus the scratch, sampled rows and keys
    against the oracle on the slices they depend on."""
    from sparse_ref.bench.scale import _reset_peak, _status_kib

    n, window, d = 1 << 17, 4096, 64
    pattern = patterns.causal_sliding_window(n, window, block=128)
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((n, d), dtype=np.float32) for _ in range(4))
    small = patterns.causal_sliding_window(512, window, block=128)
    sparse_ref.attention_backward(q[:512], k[:512], v[:512], small, dout[:512])  # warm up
    _refuse_token_csr(monkeypatch)
    exact = _reset_peak() and _status_kib("VmHWM") is not None
    before = (_status_kib("VmRSS") or 0) * 1024
    grads = sparse_ref.attention_backward(q, k, v, pattern, dout)
    if exact:
        extra = (_status_kib("VmHWM") or 0) * 1024 - before
        row_buffers = numba.config.NUMBA_NUM_THREADS * 2 * 4224 * 128 * 4
        bound = 3 * q.nbytes + kernel_module.SCRATCH_BYTES + row_buffers + (64 << 20)
        assert extra < bound, (extra, bound)
    monkeypatch.undo()
    for centre in (0, 200, n // 2 + 77, n - 1):
        check_window_slice(grads, q, k, v, dout, window, centre, margin=128)
