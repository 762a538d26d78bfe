"""The band path of the token-CSR backward (``sparse_ref/kernels/_csr_band.py``): which rows it
takes, and its gradients against the float64 oracle (DESIGN §9 rule, factor 3).

Patterns are held as token CSR only (no block form) and run with ``form="csr"``, so the CSR
kernels run. Each oracle test
first asserts that the band path is really taken on its pattern (``band_rows_taken``), so a change
that silently routes everything to the other paths fails here. ``band_min = 1`` (monkeypatched
``BAND_MIN_CORE``) sends every band-shaped set of rows through BLAS, even tiny ones.
"""

from functools import partial

import numba
import numpy as np
import pytest
from helpers import random_inputs
from hypothesis import given
from hypothesis import strategies as st

import sparse_ref
from sparse_ref import Pattern, patterns, testing
from sparse_ref.kernels import csr_backward
from sparse_ref.kernels._csr_band import BAND, band_core

#: the backward on token CSR (form="auto" would move block-dense patterns to the block kernels)
attention_backward = partial(sparse_ref.attention_backward, form="csr")


def token_csr(p: Pattern) -> Pattern:
    """``p`` held as token CSR only (one pattern per head kept), so the CSR kernels run."""
    csr = p.stacked_csr()
    if csr.indptr.shape[0] == 1:
        return Pattern.from_csr((csr.indptr[0], csr.indices, p.shape))
    return Pattern.from_dense(p.to_dense())


def causal_window(n_q, n_k, w):
    i = np.arange(n_q)[:, None] + (n_k - n_q)
    j = np.arange(n_k)[None, :]
    return (j <= i) & (j > i - w)


def band_rows_taken(p: Pattern, band_min: int, transposed: bool = False) -> int:
    """Rows (or key columns) of head 0 that the kernels' schedule sends to the band path."""
    csr = (p.transpose() if transposed else p).stacked_csr()
    ptr, idx = csr.indptr[0], csr.indices
    n = len(ptr) - 1
    buf = np.empty((2, max(np.diff(ptr).max(initial=0), 2)), np.int64)  # band_core's work space
    taken = 0
    for r0 in range(0, n, BAND):
        rn = min(BAND, n - r0)
        step = rn if band_core(ptr, idx, r0, rn, band_min, buf)[0] else BAND // 2
        for s0 in range(r0, r0 + rn, step):
            sn = min(step, r0 + rn - s0)
            taken += sn if band_core(ptr, idx, s0, sn, band_min, buf)[0] else 0
    return taken


@pytest.fixture
def band_min(request, monkeypatch):
    """The ``BAND_MIN_CORE`` the kernels run with (parametrized indirectly)."""
    monkeypatch.setattr(csr_backward, "BAND_MIN_CORE", request.param)
    return request.param


# ------------------------------------------------------------------------------- band_core
def csr_of(rows):
    ptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    idx = np.concatenate([np.asarray(r, np.int32) for r in rows])
    return ptr, idx


def core_of(rows, r0, rn, min_core):
    """``band_core`` on a CSR made of ``rows``; kind 2 also returns its core list."""
    ptr, idx = csr_of(rows)
    buf = np.full((2, max(map(len, rows)) + 2), -1, np.int64)  # L >= the longest row, >= 2
    kind, lo, hi = band_core(ptr, idx, r0, rn, min_core, buf)
    return (kind, lo, hi, buf[0, :hi].tolist()) if kind == 2 else (kind, lo, hi)


def test_band_core_one_run_rows_give_their_common_range():
    rows = [range(0, 10), range(1, 11), range(2, 12)]
    assert core_of(rows, 0, 3, 8) == (1, 2, 10)
    assert core_of(rows, 0, 3, 9)[0] == 0  # core of 8 < 9
    assert core_of(rows, 1, 2, 9) == (1, 2, 11)


def test_band_core_refuses_large_edges_and_empty_rows():
    assert core_of([range(0, 10), range(5, 15)], 0, 2, 1)[0] == 0  # core 5, edges 10 > 2 * 5 / 4
    assert core_of([range(0, 10), [], range(0, 10)], 0, 3, 1)[0] == 0


def test_band_core_identical_multi_run_rows():
    row = [0, 1, 2, 7, 8, 20]
    assert core_of([row, row, row], 0, 3, 6) == (2, 0, 6, row)
    assert core_of([row, row, row], 0, 3, 7)[0] == 0  # shorter than the minimum core


def test_band_core_common_keys_of_multi_run_rows():
    """Global keys and a shifting window (kind 2 with edges): the core is their intersection."""
    rows = [[0, 1] + list(range(10 + r, 30 + r)) for r in range(4)]
    common = [0, 1] + list(range(13, 30))
    assert core_of(rows, 0, 4, 19) == (2, 0, 19, common)  # 12 edge entries: 4 * 12 <= 4 * 19
    assert core_of(rows, 0, 4, 20)[0] == 0
    rows[2] = [0, 1, 5] + list(range(12, 20)) + list(range(24, 32))  # a hole in one row
    assert core_of(rows, 0, 4, 1)[0] == 0  # core [0, 1, 13..19, 24..29]: edges too many


def test_band_core_splits_core_runs_where_a_row_has_holes():
    """One run of the first row meets several runs of the next: every piece is kept."""
    rows = [
        list(range(0, 40)) + list(range(50, 90)),
        [*range(0, 10), *range(12, 40), *range(50, 90)],
    ]
    expected = [*range(0, 10), *range(12, 40), *range(50, 90)]
    assert core_of(rows, 0, 2, 1) == (2, 0, 78, expected)


@given(
    base=st.lists(st.integers(0, 80), min_size=1, max_size=60, unique=True),
    extras=st.lists(st.lists(st.integers(0, 80), max_size=8), min_size=1, max_size=5),
    drops=st.lists(st.integers(0, 59), max_size=3),
    min_core=st.integers(1, 40),
)
def test_band_core_equals_the_intersection_and_the_edge_rule(base, extras, drops, min_core):
    """Rows = a common base plus extras, minus a few base entries in the first row: kind 2 comes
    back exactly when the rows are not all one run and the numpy intersection passes the rules."""
    rows = [sorted(set(base) | set(e)) for e in extras]
    rows[0] = [x for i, x in enumerate(rows[0]) if i not in drops] or rows[0]
    ptr, idx = csr_of(rows)
    buf = np.full((2, 128), -1, np.int64)
    kind, lo, hi = band_core(ptr, idx, 0, len(rows), min_core, buf)
    common = rows[0]
    for r in rows[1:]:
        common = np.intersect1d(common, r)
    total, core = sum(map(len, rows)), len(common)
    one_run = all(r[-1] - r[0] + 1 == len(r) for r in rows)
    ok = core >= min_core and 4 * (total - len(rows) * core) <= len(rows) * core
    if one_run:
        assert kind == (1 if ok else 0)
        if ok:
            assert (lo, hi) == (common[0], common[-1] + 1)
    else:
        assert kind == (2 if ok else 0)
        if ok:
            assert buf[0, :hi].tolist() == list(common)


# ------------------------------------------------------------------------ against the oracle
def window_case(rng, dtype):
    """Causal window 200 over n_q = 300 queries and n_k = 330 keys (bottom-right aligned), GQA."""
    p = token_csr(Pattern.from_dense(causal_window(300, 330, 200)))
    return p, random_inputs(rng, (2, 4, 300, 24), (2, 2, 330, 24), 20, dtype)


def bigbird_case(rng, dtype):
    """BigBird of 32-blocks as token CSR: identical multi-run rows, global rows of all keys."""
    p = token_csr(patterns.bigbird(320, 32, seed=3))
    return p, random_inputs(rng, (1, 2, 320, 16), (1, 1, 320, 16), 16, dtype)


def per_head_case(rng, dtype):
    """One pattern per head: a wide window, block diagonal (64), a random mask (no band)."""
    n = 256
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    masks = np.stack([causal_window(n, n, 200), i // 64 == j // 64, rng.random((n, n)) < 0.3])
    return Pattern.from_dense(masks), random_inputs(rng, (1, 3, n, 8), (1, 3, n, 8), 8, dtype)


def globals_case(rng, dtype):
    """Windows beside global keys and rows, sinks and slashes: the rows' common keys are the
    core and the rest interleaves with it (kind 2 with edges), per head."""
    n = 300
    masks = np.stack(
        [
            patterns.global_local(n, 150, 30, [0, 1, 2, 150]).to_dense(),
            patterns.sinks(n, 4, 200).to_dense(),
            patterns.vertical_slash(n, [0, 7, 100], list(range(150)) + [180, 240]).to_dense(),
        ]
    )
    return Pattern.from_dense(masks), random_inputs(rng, (1, 3, n, 8), (1, 3, n, 8), 8, dtype)


CASES = {
    "window": window_case,
    "bigbird": bigbird_case,
    "per_head": per_head_case,
    "globals": globals_case,
}


@pytest.mark.parametrize("band_min", [1, 128], indirect=True)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_band_path_matches_oracle(rng, band_min, case, dtype, softcap):
    p, (q, k, v, dout) = CASES[case](rng, dtype)
    assert band_rows_taken(p, band_min) > 0
    assert band_rows_taken(p, band_min, transposed=True) > 0
    grads = attention_backward(q, k, v, p, dout, softcap=softcap)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=softcap)


@pytest.mark.parametrize("band_min", [1], indirect=True)
@pytest.mark.parametrize("n", [1, 5, 33, 70])
@pytest.mark.parametrize("d", [1, 3])
def test_small_and_ragged_bands(rng, band_min, n, d):
    """n = 1, d = 1, a last band shorter than BAND // 2, rows of one key, full rows."""
    for mask in (causal_window(n, n, 3), np.ones((n, n), bool), np.eye(n, dtype=bool)):
        p = token_csr(Pattern.from_dense(mask))
        q, k, v, dout = random_inputs(rng, (2, n, d), (2, n, d), d, np.float64)
        grads = attention_backward(q, k, v, p, dout)
        testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)


@pytest.mark.parametrize("band_min", [1, 128], indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_of_a_dead_row_in_a_band_do_not_leak(rng, band_min, dtype):
    """A row of a band whose scores are all -inf gets no gradient: its inf q and NaN dout must not
    reach its keys through the band's GEMMs; a NaN in a live row's q reaches exactly its keys.

    A batch of 4 draws: over a single one (2 heads, d = 4) the max error is a noisy statistic,
    and the factor 3 failed on 1 of 400 seeds for the band path and 6 of 400 for the group path
    (which this stop's band path replaced on these rows)."""
    n = 260
    q, k, v, dout = random_inputs(rng, (4, 2, n, 4), (4, 2, n, 4), 3, dtype)
    p = token_csr(Pattern.from_dense(causal_window(n, n, n)))  # causal: long one-run rows
    assert band_rows_taken(p, band_min) > 0
    k[..., 0] = np.abs(k[..., 0]) + 0.5
    q[0, 1, 200] = [-np.inf, 0, 0, 0]  # scores -inf * k0 = -inf for all keys: no gradient
    dout[0, 1, 200, 1] = np.nan
    grads = attention_backward(q, k, v, p, dout, check_finite=False)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)
    assert all(np.isfinite(g).all() for g in grads)
    assert not grads[0][0, 1, 200].any()

    q[0, 0, 150, 2] = np.nan
    grads = attention_backward(q, k, v, p, dout, check_finite=False)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)  # NaN positions must agree
    assert np.isnan(grads[0][0, 0, 150]).all()
    assert np.isnan(grads[1][0, 0, :151]).any(axis=1).all()
    assert not np.isnan(grads[1][0, 0, 151:]).any()


# ---------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("case", ["window", "bigbird"])
def test_band_path_bitwise_identical_for_any_thread_count(rng, case, monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has a single thread here: cannot compare thread counts")
    p, (q, k, v, dout) = CASES[case](rng, np.float32)
    assert band_rows_taken(p, csr_backward.BAND_MIN_CORE) > 0
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = attention_backward(q, k, v, p, dout)
        numba.set_num_threads(2)
        two = attention_backward(q, k, v, p, dout)
    finally:
        numba.set_num_threads(before)
    monkeypatch.setattr(csr_backward, "SCRATCH_BYTES", 1)  # one head per call of the passes
    split = attention_backward(q, k, v, p, dout)
    for a, b, c in zip(one, two, split):
        assert a.tobytes() == b.tobytes() == c.tobytes()


# ---------------------------------------------------------------------------------- hypothesis
@given(
    n_q=st.integers(1, 90),
    extra_keys=st.integers(0, 20),
    width=st.integers(1, 100),
    block=st.sampled_from([0, 8, 16, 32]),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
    dtype=st.sampled_from([np.float32, np.float64]),
    softcap=st.sampled_from([None, 1.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_band_path_matches_oracle_on_random_shapes(
    n_q, extra_keys, width, block, heads, dtype, softcap, seed
):
    """Windows (``block = 0``) or block-diagonal plus two global key blocks and one global query
    block (identical multi-run rows), every band through BLAS (``BAND_MIN_CORE = 1``)."""
    n_k = n_q + extra_keys
    rng = np.random.default_rng(seed)
    if block:
        i, j = np.arange(n_q)[:, None], np.arange(n_k)[None, :]
        mask = (i // block == j // block) | (j < block) | (j >= n_k - block) | (i < block)
    else:
        mask = causal_window(n_q, n_k, width)
    p = token_csr(Pattern.from_dense(mask))
    H, H_kv = heads
    q, k, v, dout = random_inputs(rng, (16 // H, H, n_q, 5), (16 // H, H_kv, n_k, 5), 3, dtype)
    saved = csr_backward.BAND_MIN_CORE
    csr_backward.BAND_MIN_CORE = 1
    try:
        grads = attention_backward(q, k, v, p, dout, softcap=softcap)
    finally:
        csr_backward.BAND_MIN_CORE = saved
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=softcap)
