"""The Numba BSR forward kernel against the float64 oracle (DESIGN §9 tolerance rule)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from block_cases import BLOCKS, STRUCTURES, layout_pattern
from helpers import pattern_inputs as _inputs

import sparse_ref
from sparse_ref import Pattern, blocks, patterns
from sparse_ref.backends import numba as numba_backend
from sparse_ref.kernels import bsr_forward as kernel_module
from sparse_ref.testing import assert_close_to_oracle


def _bigbird_like(nb: int) -> np.ndarray:
    i = np.arange(nb)
    layout = np.abs(i[:, None] - i[None, :]) <= 1
    layout[[0, -1]] = True
    layout[:, [0, -1]] = True
    rng = np.random.default_rng(0)
    for r in range(1, nb - 1):
        layout[r, rng.choice(nb, 2, replace=False)] = True
    return layout


def _check(pattern, q, k, v, **kw):
    out, lse = sparse_ref.attention(q, k, v, pattern, return_lse=True, **kw)
    assert_close_to_oracle(
        out, q, k, v, pattern, lse=lse, scale=kw.get("scale"), softcap=kw.get("softcap")
    )
    return out, lse


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_structures_match_the_oracle(name, block, dtype):
    pattern = STRUCTURES[name](block)
    assert pattern.block == (block, block)
    q, k, v = _inputs(pattern, dtype)
    _check(pattern, q, k, v)


@pytest.mark.parametrize("block", [(16, 64), (64, 16), (128, 32), (3, 5)], ids=str)
def test_rectangular_and_odd_blocks(block):
    pattern = Pattern.from_bsr(patterns.sinks(203, 5, 33, block=block).block_form)
    q, k, v = _inputs(pattern, np.float32, d=32, d_v=48)
    _check(pattern, q, k, v)


def test_loop_path_for_small_tiles(monkeypatch):
    monkeypatch.setattr(kernel_module, "BLAS_MIN_TILE", 1 << 60)  # force the plain-loop tile code
    for name in ("causal_sliding_window", "all_partial", "layout_empty_rows"):
        for dtype in (np.float32, np.float64):
            pattern = STRUCTURES[name](32)
            _check(pattern, *_inputs(pattern, dtype, d=24))


@pytest.mark.parametrize("tile_keys", [1, 64, 100, 4096])
def test_key_tiles_of_any_width(monkeypatch, tile_keys):
    monkeypatch.setattr(kernel_module, "TILE_KEYS", tile_keys)
    pattern = STRUCTURES["global_local"](32)
    _check(pattern, *_inputs(pattern, np.float32))


def test_empty_rows_give_zero_and_minus_inf():
    pattern = layout_pattern(290, 250, 32)
    q, k, v = _inputs(pattern, np.float32)
    out, lse = _check(pattern, q, k, v)
    empty = pattern.to_bsr().row_counts() == 0
    assert empty.sum() >= 32 + 2  # block row 1 and the ragged last block row (2 rows)
    assert (out[0, 0, empty] == 0).all() and np.isneginf(lse[0, 0, empty]).all()
    nothing = Pattern.from_bsr(patterns.causal_sliding_window(40, 0, block=16).block_form)
    out, lse = sparse_ref.attention(
        q[..., :40, :], k[..., :40, :], v[..., :40, :], nothing, return_lse=True
    )
    assert (out == 0).all() and np.isneginf(lse).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("per_head", [False, True])
def test_gqa_batches_and_per_head_patterns(per_head, kv_heads, dtype):
    heads = 4
    parts = [
        patterns.causal_sliding_window(130, 20, block=32).block_form,
        patterns.sinks(130, 3, 9, block=32).block_form,
        patterns.global_local(130, 5, 5, [7], block=32).block_form,
        patterns.causal(130, block=32).block_form,
    ]
    pattern = Pattern.from_bsr(blocks.stack(parts) if per_head else parts[0])
    q, k, v = _inputs(pattern, dtype, heads=heads, kv_heads=kv_heads, batch=2)
    _check(pattern, q, k, v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_softcap_and_scale(dtype):
    pattern = STRUCTURES["sinks"](64)
    q, k, v = _inputs(pattern, dtype)
    _check(pattern, 3 * q, k, v, scale=0.7, softcap=5.0)


def test_two_and_three_dimensional_inputs():
    pattern = STRUCTURES["causal_sliding_window"](64)
    q, k, v = _inputs(pattern, np.float32)
    out2 = sparse_ref.attention(q[0, 0], k[0, 0], v[0, 0], pattern)
    out3 = sparse_ref.attention(q[0], k[0], v[0], pattern)
    out4 = sparse_ref.attention(q, k, v, pattern)
    assert out2.shape == (300, 64) and out3.shape == (1, 300, 64)
    np.testing.assert_array_equal(out2, out4[0, 0])
    np.testing.assert_array_equal(out3, out4[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_non_finite_inputs_follow_the_oracle(dtype):
    pattern = Pattern.from_bsr(patterns.causal_sliding_window(100, 30, block=16).block_form)
    q, k, v = _inputs(pattern, dtype, d=16)
    q, k, v = (np.abs(x) + 0.1 for x in (q, k, v))
    v[0, 0, 50, 3] = np.inf  # key 50 is masked for rows 48, 49 of its own (diagonal) block
    v[0, 0, 5, 5] = np.nan  # NaN in V: NaN for the rows that see key 5
    q[0, 0, 90, :] = np.nan  # a NaN query row
    k[0, 0, 0, :] = -np.inf  # row 0 sees only key 0: all scores -inf -> out 0, lse -inf
    k[0, 0, 70, 0] = np.inf  # +inf score for rows that see key 70 -> NaN
    out, lse = _check(pattern, q, k, v, check_finite=False)
    assert out[0, 0, 0].tolist() == [0] * 16 and np.isneginf(lse[0, 0, 0])
    assert np.isfinite(out[0, 0, 49]).all()  # row 49 shares a block with key 50 but not its inf
    assert np.isinf(out[0, 0, 50, 3]) and np.isnan(out[0, 0, 30, 5])
    assert np.isnan(out[0, 0, 90]).all() and np.isnan(lse[0, 0, 90])


def test_deterministic_for_any_thread_count():
    pattern = Pattern.from_bsr(patterns.global_local(1500, 100, 60, [0, 700], block=64).block_form)
    q, k, v = _inputs(pattern, np.float32, heads=2, batch=2)
    available = numba.config.NUMBA_NUM_THREADS
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, available), min(2, available), 1):
            numba.set_num_threads(threads)
            results.append(sparse_ref.attention(q, k, v, pattern, return_lse=True))
    finally:
        numba.set_num_threads(before)
    for out, lse in results[1:]:
        assert np.array_equal(out, results[0][0]) and np.array_equal(lse, results[0][1])


def test_backend_picks_bsr_for_block_forms_and_csr_otherwise(monkeypatch):
    calls = []
    real_bsr, real_csr = numba_backend.bsr_forward, numba_backend.csr_forward
    monkeypatch.setattr(
        numba_backend, "bsr_forward", lambda *a: calls.append("bsr") or real_bsr(*a)
    )
    monkeypatch.setattr(
        numba_backend, "csr_forward", lambda *a: calls.append("csr") or real_csr(*a)
    )
    csr_pattern = patterns.causal_sliding_window(96, 9)
    q, k, v = _inputs(csr_pattern, np.float32, d=16)
    a = sparse_ref.attention(q, k, v, csr_pattern)
    b = sparse_ref.attention(q, k, v, csr_pattern.with_block_form(32))
    c = sparse_ref.attention(
        q, k, v, Pattern.from_bsr(patterns.causal_sliding_window(96, 9, block=32).block_form)
    )
    assert calls == ["csr", "bsr", "bsr"]
    np.testing.assert_array_equal(b, c)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bigbird_like_layout_matches_the_oracle():
    pattern = Pattern.from_block_layout(_bigbird_like(12), 16)
    _check(pattern, *_inputs(pattern, np.float32))


def test_bench_scale_small_run_meets_memory_and_accuracy():
    from sparse_ref.bench.scale import report, run

    result = run(8192, 512, d=32, block=64, rows=24)
    assert result.ok, report(result)
    assert result.nnz == 8192 * 512 - 512 * 511 // 2
    assert result.rows_checked >= 20


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_fast_exp_is_within_two_ulp_and_ieee_at_the_edges(dtype):
    from sparse_ref.kernels._exp import fast_exp

    @numba.njit
    def vexp(x, out):
        for i in range(x.shape[0]):
            out[i] = fast_exp(x[i])

    lo, hi = (-110.0, 90.0) if dtype == np.float32 else (-750.0, 710.0)
    x = np.concatenate([np.linspace(lo, hi, 400_001), np.linspace(-1, 1, 10_001)]).astype(dtype)
    out = np.empty_like(x)
    vexp(x, out)
    with np.errstate(over="ignore", under="ignore"):
        ref = np.exp(x.astype(np.longdouble))
    info = np.finfo(dtype)
    normal = (ref > info.tiny) & (ref < info.max)
    rel = np.abs(out[normal] - ref[normal]) / ref[normal]
    assert rel.max() <= 2 * info.eps
    sub = ref <= info.tiny  # subnormal range: absolute error within one subnormal step
    assert np.abs(out[sub] - ref[sub]).max() <= info.smallest_subnormal
    special = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0], dtype=dtype)
    got = np.empty_like(special)
    vexp(special, got)
    assert got[0] == 0 and np.isposinf(got[1]) and np.isnan(got[2]) and got[3] == got[4] == 1
    assert np.isposinf(out[ref >= info.max]).all()
