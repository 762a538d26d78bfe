"""Tests of the Numba CSR forward kernel (``sparse_ref.kernels.csr_forward``).

The kernel is called directly on raw stacked CSR arrays and compared with the oracle under the
DESIGN §9 rule (``sparse_ref.testing.assert_close_to_oracle``): NaN and infinite entries must sit
exactly where the oracle has them.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref import Pattern, testing
from sparse_ref.kernels.csr_forward import BLOCK, GROUP, TILE, csr_forward

# ----------------------------------------------------------------------------- helpers


def _window_csr(n_q: int, n_k: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal sliding window: row ``i`` attends ``max(0, i - window + 1) .. min(i, n_k - 1)``."""
    i = np.arange(n_q)
    lo = np.maximum(i - window + 1, 0)
    hi = np.minimum(i + 1, n_k)
    cnt = np.maximum(hi - lo, 0)
    indptr = np.zeros((1, n_q + 1), np.int64)
    np.cumsum(cnt, out=indptr[0, 1:])
    indices = np.arange(int(indptr[0, -1])) - np.repeat(indptr[0, :-1] - lo, cnt)
    return indptr, indices.astype(np.int32)


def _stack(masks: list[np.ndarray], index_dtype: type = np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Stacked CSR of boolean ``(n_q, n_k)`` masks: one ``indptr`` row per mask, shared indices."""
    indptr = np.zeros((len(masks), masks[0].shape[0] + 1), np.int64)
    parts = []
    offset = 0
    for p, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        indptr[p, 1:] = offset + np.cumsum(np.bincount(rows, minlength=mask.shape[0]))
        indptr[p, 0] = offset
        parts.append(cols)
        offset += cols.size
    return indptr, np.concatenate(parts).astype(index_dtype)


def _masks(indptr: np.ndarray, indices: np.ndarray, n_k: int) -> list[np.ndarray]:
    masks = []
    for p in range(indptr.shape[0]):
        n_q = indptr.shape[1] - 1
        mask = np.zeros((n_q, n_k), bool)
        rows = np.repeat(np.arange(n_q), np.diff(indptr[p]))
        mask[rows, indices[indptr[p, 0] : indptr[p, -1]]] = True
        masks.append(mask)
    return masks


def _pattern(indptr: np.ndarray, indices: np.ndarray, n_k: int) -> Pattern:
    """The kernel's stacked CSR as a Pattern (one head per row of ``indptr``)."""
    n_q = indptr.shape[1] - 1
    heads = [
        Pattern.from_csr((row - row[0], indices[row[0] : row[-1]], (n_q, n_k))) for row in indptr
    ]
    return heads[0] if len(heads) == 1 else Pattern.stack(heads)


def _run(q, k, v, indptr, indices, scale, softcap):  # type: ignore[no-untyped-def]
    dt = q.dtype.type
    out = np.full(q.shape[:3] + (v.shape[3],), 7.0, q.dtype)  # garbage: must be overwritten
    lse = np.full(q.shape[:3], 7.0, q.dtype)
    csr_forward(q, k, v, indptr, indices, dt(scale), dt(softcap), out, lse)
    return out, lse


def _check(q, k, v, indptr, indices, scale=0.5, softcap=0.0):  # type: ignore[no-untyped-def]
    """Run the kernel and compare with the oracle under the DESIGN §9 rule; return (out, lse)."""
    out, lse = _run(q, k, v, indptr, indices, scale, softcap)
    testing.assert_close_to_oracle(
        out, q, k, v, _pattern(indptr, indices, k.shape[2]), lse=lse, scale=scale,
        softcap=softcap or None,
    )
    return out, lse


def _qkv(rng, B, H, H_kv, n_q, n_k, d, dv, dtype):  # type: ignore[no-untyped-def]
    q = rng.standard_normal((B, H, n_q, d)).astype(dtype)
    k = rng.standard_normal((B, H_kv, n_k, d)).astype(dtype)
    v = rng.standard_normal((B, H_kv, n_k, dv)).astype(dtype)
    return q, k, v


# ----------------------------------------------------------------------------- property tests


@st.composite
def _cases(draw):  # type: ignore[no-untyped-def]
    H_kv = draw(st.sampled_from([1, 2]))
    H = H_kv * draw(st.sampled_from([1, 2]))
    n_q = draw(st.integers(1, 48))
    n_k = draw(st.sampled_from([1, 5, 40, 70, 150]))
    kind = draw(st.sampled_from(["random", "runs", "window"]))
    return dict(
        B=draw(st.sampled_from([1, 2])),
        H=H,
        H_kv=H_kv,
        n_q=n_q,
        n_k=n_k,
        d=draw(st.sampled_from([1, 3, 8, 16])),
        dv=draw(st.sampled_from([1, 5, 8])),
        per_head=draw(st.booleans()),
        kind=kind,
        density=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        index_dtype=draw(st.sampled_from([np.int32, np.int64])),
        softcap=draw(st.sampled_from([0.0, 3.0])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _random_mask(rng, kind, n_q, n_k, density):  # type: ignore[no-untyped-def]
    if kind == "random":
        return rng.random((n_q, n_k)) < density
    if kind == "runs":  # one run of consecutive keys per row (some empty), random ends
        lo = rng.integers(0, n_k + 1, n_q)
        hi = np.minimum(lo + rng.integers(0, n_k + 1, n_q), n_k)
        j = np.arange(n_k)
        return (j >= lo[:, None]) & (j < hi[:, None])
    window = int(rng.integers(1, 2 * TILE))  # causal window, aligned to the diagonal's end
    i = np.arange(n_q)[:, None] + (n_k - n_q)
    j = np.arange(n_k)[None, :]
    return (j <= i) & (j > i - window)


@given(_cases())
def test_matches_dense_reference(case):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(case["seed"])
    P = case["H"] if case["per_head"] else 1
    masks = [
        _random_mask(rng, case["kind"], case["n_q"], case["n_k"], case["density"]) for _ in range(P)
    ]
    indptr, indices = _stack(masks, case["index_dtype"])
    q, k, v = _qkv(
        rng,
        case["B"],
        case["H"],
        case["H_kv"],
        case["n_q"],
        case["n_k"],
        case["d"],
        case["dv"],
        case["dtype"],
    )
    _check(q, k, v, indptr, indices, scale=0.7, softcap=case["softcap"])


# ----------------------------------------------------------------------------- named cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_sliding_window(dtype, index_dtype, rng):  # type: ignore[no-untyped-def]
    """Window patterns take the joint path; n and window are not multiples of the tile sizes."""
    n, d = 3 * TILE + 37, 16
    indptr, indices = _window_csr(n, n, 45)
    q, k, v = _qkv(rng, 1, 2, 1, n, n, d, 12, dtype)
    _check(q, k, v, indptr, indices.astype(index_dtype), scale=0.25)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mixed_window_random_global(dtype, rng):  # type: ignore[no-untyped-def]
    """BigBird-like rows (a window, two random keys, a global key): the tiled schedule with both
    the joint path (window runs) and the single path (tiles where chunks are not runs)."""
    n = 2 * TILE + 50
    mask = _masks(*_window_csr(n, n, 40), n)[0]
    mask[np.arange(n)[:, None], rng.integers(0, n, (n, 2))] = True
    mask[:, 3] = True
    indptr, indices = _stack([mask])
    q, k, v = _qkv(rng, 1, 2, 1, n, n, 16, 16, dtype)
    _check(q, k, v, indptr, indices)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H_kv", [1, 2, 4])
def test_gqa_and_per_head_patterns(dtype, H_kv, rng):  # type: ignore[no-untyped-def]
    """H = 4 query heads over H_kv kv heads, one pattern per head (P = H) and one shared (P = 1)."""
    n_q, n_k, d = 50, 90, 8
    masks = [
        rng.random((n_q, n_k)) < 0.3,
        np.tri(n_q, n_k, 40, bool),
        np.ones((n_q, n_k), bool),
        np.tri(n_q, n_k, 40, bool) & ~np.tri(n_q, n_k, 20, bool),
    ]
    q, k, v = _qkv(rng, 2, 4, H_kv, n_q, n_k, d, d, dtype)
    for ms in (masks, masks[1:2]):
        indptr, indices = _stack(ms)
        _check(q, k, v, indptr, indices)


@pytest.mark.parametrize(
    "n_q, n_k, d, dv",
    [(1, 1, 1, 1), (1, 200, 1, 3), (7, 300, 4, 1), (130, 9, 5, 2), (66, 66, 1, 1)],
)
def test_shapes(n_q, n_k, d, dv, rng):  # type: ignore[no-untyped-def]
    """d = 1, n_q = 1, n_q != n_k, and dense rows spanning several key tiles."""
    mask = rng.random((n_q, n_k)) < 0.7
    mask[:, :3] = True
    indptr, indices = _stack([mask])
    for dtype in (np.float32, np.float64):
        q, k, v = _qkv(rng, 1, 1, 1, n_q, n_k, d, dv, dtype)
        _check(q, k, v, indptr, indices)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_rows(dtype, rng):  # type: ignore[no-untyped-def]
    """Rows without keys give exactly out = 0 and lse = -inf, next to rows that have keys."""
    n = 2 * BLOCK + 3
    mask = np.tri(n, n, 0, bool)
    mask[::3] = False
    mask[BLOCK : 2 * BLOCK] = False  # a whole task without keys
    indptr, indices = _stack([mask])
    q, k, v = _qkv(rng, 1, 1, 1, n, n, 8, 8, dtype)
    out, lse = _check(q, k, v, indptr, indices)
    empty = ~mask.any(axis=1)
    assert np.all(out[0, 0, empty] == 0) and np.all(lse[0, 0, empty] == -np.inf)
    assert np.all(np.isfinite(lse[0, 0, ~empty]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softcap(dtype, rng):  # type: ignore[no-untyped-def]
    n = 100
    indptr, indices = _window_csr(n, n, 30)
    q, k, v = _qkv(rng, 1, 2, 2, n, n, 8, 8, dtype)
    out, _ = _check(q, k, v, indptr, indices, scale=3.0, softcap=2.0)
    plain, _ = _run(q, k, v, indptr, indices, 3.0, 0.0)
    assert not np.allclose(out, plain)  # the softcap is applied


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pattern", ["window", "random"])
def test_nan_propagates_only_to_rows_that_see_it(dtype, pattern, rng):  # type: ignore[no-untyped-def]
    n = 150
    if pattern == "window":
        indptr, indices = _window_csr(n, n, 40)
    else:
        indptr, indices = _stack([rng.random((n, n)) < 0.2])
    mask = _masks(indptr, indices, n)[0]
    q, k, v = _qkv(rng, 1, 1, 1, n, n, 8, 8, dtype)
    q[0, 0, 70, 3] = np.nan  # one query row
    k[0, 0, 20, 0] = np.nan  # one key: every row attending key 20
    out, lse = _check(q, k, v, indptr, indices)
    nan_rows = mask[:, 20].copy()
    nan_rows[70] = mask[70].any()
    assert np.array_equal(np.isnan(lse[0, 0]), nan_rows)
    assert np.array_equal(np.isnan(out[0, 0]).all(axis=1), nan_rows)
    assert not np.isnan(out[0, 0, ~nan_rows]).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_v_of_masked_key_does_not_leak(dtype, bad, rng):  # type: ignore[no-untyped-def]
    """A non-finite V row reaches exactly the rows that attend its key.

    In the window pattern, key ``i + 1`` belongs to the next rows of row ``i``'s group of
    ``GROUP`` rows (the joint path's union of keys) but is masked for row ``i``.
    """
    n = 2 * TILE + 10
    indptr, indices = _window_csr(n, n, 24)
    win = _masks(indptr, indices, n)[0]
    rand = rng.random((n, n)) < 0.3
    for mask in (win, rand):
        indptr, indices = _stack([mask])
        q, k, v = _qkv(rng, 1, 1, 1, n, n, 8, 8, dtype)
        j = GROUP * 10 + 1
        v[0, 0, j, :] = bad
        out, lse = _check(q, k, v, indptr, indices)
        clean = ~mask[:, j]
        assert np.all(np.isfinite(out[0, 0, clean]))
        assert np.all(np.isfinite(lse[0, 0, clean & mask.any(1)]))
        assert np.all(~np.isfinite(out[0, 0, mask[:, j]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_scores(dtype, rng):  # type: ignore[no-untyped-def]
    """-inf scores everywhere: out 0, lse -inf; one +inf score: NaN row; -inf next to finite."""
    n, d = 80, 4
    indptr, indices = _window_csr(n, n, 20)
    q, k, v = _qkv(rng, 1, 1, 1, n, n, d, d, dtype)
    k[0, 0, :, 0] = -np.abs(k[0, 0, :, 0]) - 0.5
    q[0, 0, 10] = [np.inf, 0, 0, 0]  # every score of row 10 is -inf
    q[0, 0, 30] = [-np.inf, 0, 0, 0]  # every score of row 30 is +inf: NaN
    k[0, 0, 50] = [np.inf, 0, 0, 0]  # key 50 scores -inf for rows with q[:, 0] < 0
    out, lse = _check(q, k, v, indptr, indices)
    assert np.all(out[0, 0, 10] == 0) and lse[0, 0, 10] == -np.inf
    assert np.all(np.isnan(out[0, 0, 30])) and np.isnan(lse[0, 0, 30])


@pytest.mark.parametrize("pattern", ["window", "random"])
def test_bitwise_deterministic_across_threads(pattern, rng):  # type: ignore[no-untyped-def]
    n = 4 * BLOCK + 5
    if pattern == "window":
        indptr, indices = _window_csr(n, n, 2 * TILE + 3)
    else:
        indptr, indices = _stack([rng.random((n, n)) < 0.3, rng.random((n, n)) < 0.1])
    q, k, v = _qkv(rng, 2, 2, 1, n, n, 16, 16, np.float32)
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            runs.append(_run(q, k, v, indptr, indices, 0.3, 0.0))
    finally:
        numba.set_num_threads(before)
    for out, lse in runs[1:]:
        assert out.tobytes() == runs[0][0].tobytes() and lse.tobytes() == runs[0][1].tobytes()


def test_index_dtype_does_not_change_results(rng):  # type: ignore[no-untyped-def]
    n = 150
    indptr, indices = _stack([(rng.random((n, n)) < 0.3) | np.tri(n, n, 0, bool)])
    q, k, v = _qkv(rng, 1, 2, 1, n, n, 8, 8, np.float32)
    a = _run(q, k, v, indptr, indices.astype(np.int32), 0.5, 0.0)
    b = _run(q, k, v, indptr, indices.astype(np.int64), 0.5, 0.0)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
