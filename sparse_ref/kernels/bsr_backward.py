"""Numba backward kernel over the block form: dq per block row, dk/dv per key block column.

Same formulas as :mod:`.csr_backward` (query row ``i``, allowed key ``j``):

    s_ij    = scale * q_i . k_j           (softcap: t_ij = tanh(s_ij / softcap), s_ij = softcap t_ij)
    p_ij    = exp(s_ij - m_i) / l_i       (m_i = max_j s_ij, l_i = sum_j exp(s_ij - m_i))
    dp_ij   = dout_i . v_j
    delta_i = sum_j p_ij dp_ij
    ds_ij   = p_ij (dp_ij - delta_i)      (times 1 - t_ij**2 with softcap)
    dq_i    = scale * sum_j ds_ij k_j,   dk_j = scale * sum_i ds_ij q_i,   dv_j = sum_i p_ij dout_i

``m``, ``l`` and ``delta`` are re-derived from the row's own scores, never taken from the forward's
``out``/``lse`` (why: :mod:`.csr_backward`). The pattern is never expanded to tokens, so the kernel
runs where token CSR cannot exist (n = 2**20, causal window 4096: 4.3e9 entries, 270k blocks).

**Row tasks** (one per head and block row) do all the products. The scores of the block row's
stored blocks go into a per-thread buffer, key-major (each block a ``(w, nr)`` matrix, blocks one
after the other), so a run of adjacent key blocks (cut at :data:`TILE_KEYS` keys) is one matrix
and ``S^T = scale K_run Q^T`` and ``dP^T = V_run dout^T`` are one BLAS GEMM each; the loops that
follow run across query rows (contiguous) with no horizontal reductions: softcap, masks of partial
blocks (a masked entry becomes ``s = -inf``, ``dp = 0`` by selection), row max; ``exp``, ``l`` and
``delta`` (four interleaved partial sums per chunk of 32 keys, see :func:`_exp_sums`); then run by run, while the run is still in cache, ``p`` and
``ds``, ``dq += scale dS_run K_run``, and the *partial* gradients of each block, ``P_blk^T
dout_rows`` and ``scale dS_blk^T q_rows`` (one GEMM per run for each), written to a band buffer.
**Column tasks** (one per kv head and key block column) add the partials of their column, query
heads in increasing order, block rows in increasing order: no atomics, and ``dk``/``dv`` never
see another task's rows.

Schedule: the query heads ``f = b * H + h`` are cut into chunks and the block rows into *bands*
(consecutive block rows) whose partials fit half of :data:`SCRATCH_BYTES`; chunks and bands
depend only on the pattern, the shapes and the dtype. One parallel region runs the row tasks of
band ``k + 1`` together with the column tasks of band ``k`` (two band buffers): the many small
column tasks fill the gaps between the large row tasks, a band's partials are summed while they
are still in cache, and there is one barrier per band. The tasks of a region are dealt to the
threads cyclically (task ``t`` to worker ``t mod T``, a ``prange`` over the workers): under the
OpenMP layer Numba's ``prange`` gives each thread one contiguous range of iterations, even with
``parallel_chunksize(1)``, so listing the row tasks before the column tasks would hand one
thread all the row tasks. Measured against storing ``p`` and ``ds`` per entry and running the
``dk``/``dv`` GEMMs in the column tasks (causal window 4096, n = 65536, blocks of 128, d = 64,
float32): the same time on one thread, 1.08 s against 1.20 s on two, with half the scratch.

Determinism: each output row (``dq_i``, ``dk_j``, ``dv_j``) is written by one task per region;
GEMM shapes, runs and sums inside a task, and the order in which partials reach ``dk``/``dv``
(chunk, band, head, block row), depend only on the pattern, the shapes and the dtype; BLAS runs
single-threaded (:mod:`._blas`). So results are bitwise identical for any thread count and across
runs.

Special values: a row with no allowed keys, or only ``-inf`` scores, gets ``dq = 0`` and adds
nothing to ``dk``/``dv``; a NaN or ``+inf`` score makes its row NaN, as in the oracle. Excluded
entries (masked entries of partial blocks, entries of rows without keys) are never multiplied:
``p`` and ``ds`` are 0 there by selection, and a product that would meet one with a non-finite
operand (``0 * inf``) is replaced by loops over the allowed entries alone, so with
``check_finite=False`` the gradients follow the oracle exactly (also where the CSR kernel turns an
infinite value in a row without keys into NaN). ``exp`` is :func:`._exp.fast_exp`; ``fastmath``
only ``reassoc``/``contract``/``arcp``.

Inputs are trusted (validated in ``api.py`` and by :class:`~sparse_ref.blocks.BlockSparse`): q
``(B, H, n_q, d)``, k ``(B, H_kv, n_k, d)``, v ``(B, H_kv, n_k, d_v)``, dout ``(B, H, n_q, d_v)``,
C-contiguous, one float dtype that is also the accumulation dtype; the block form as
:meth:`Pattern.stacked_bsr` gives it, with its row layout from
:func:`sparse_ref.metadata.block_row_layout` (built once per pattern, not per call).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from ._blas import gemm as _gemm
from ._blas import single_threaded_blas
from ._exp import fast_exp
from ._views import readonly as _readonly
from .bsr_forward import BLAS_MIN_TILE, _finite, _group_end, _pv_add_masked, _scores_loops

__all__ = [
    "bsr_backward",
    "bands",
    "BLAS_MIN_TILE",
    "SCRATCH_BYTES",
    "TILE_KEYS",
]

_FASTMATH = {"reassoc", "contract", "arcp"}
_SUM_CHUNK = 32

#: The two band buffers of partial ``dk``/``dv`` stay under this many bytes together, unless a
#: single block row of a single head needs more. Two threads, causal window 4096, n = 65536,
#: blocks of 128, d = 64, float32 (bands of 4 to 60 block rows): 32 MiB 1.18 s, 64 MiB 1.11 s,
#: 128 MiB 1.07 s, 256 MiB 1.22 s (best of 10 on a shared machine: differences below ~10% are
#: noise); larger bands fall out of cache.
SCRATCH_BYTES = 64 << 20

#: Runs of adjacent key blocks are cut into GEMM tiles of at most this many keys.
TILE_KEYS = 1024


# --------------------------------------------------------------------------------- small pieces
@numba.njit(fastmath=_FASTMATH, cache=True)
def _prepare(st, dt, fb, softcap, masks_t, mi, m):  # type: ignore[no-untyped-def]
    """One block ``(w, nr)`` of scaled scores: softcap (``fb = 1 - t**2``), masked entries
    ``st = -inf`` and ``dt = 0``; ``m[r]`` = running max over non-NaN scores."""
    nc, nr = st.shape
    neg_inf = st.dtype.type(-np.inf)
    zero = st.dtype.type(0)
    one = st.dtype.type(1)
    if softcap > 0:
        for c in range(nc):
            for r in range(nr):
                t = math.tanh(st[c, r] / softcap)
                st[c, r] = softcap * t
                fb[c, r] = one - t * t
    if mi >= 0:
        for c in range(nc):
            for r in range(nr):
                keep = masks_t[mi, c, r]
                s = st[c, r] if keep else neg_inf
                st[c, r] = s
                dt[c, r] = dt[c, r] if keep else zero
                if s > m[r]:
                    m[r] = s
    else:
        for c in range(nc):
            for r in range(nr):
                s = st[c, r]
                if s > m[r]:
                    m[r] = s


@numba.njit(fastmath=_FASTMATH, cache=True)
def _exp_sums(st, dt, m_use, l_run, dl_run, part, part_d):  # type: ignore[no-untyped-def]
    """``st = exp(st - m_use[r])`` in place, ``l_run[r] += sum st``, ``dl_run[r] += sum st * dt``
    over the keys (``part``/``part_d`` are ``(4, nr)`` work arrays).

    Each row's sums run in chunks of ``_SUM_CHUNK`` keys; within a chunk, key ``c`` goes to the
    partial sum ``c mod 4`` and the four are added pairwise, then the chunk to the running sum.
    ``delta`` is a sum of terms of both signs whose error reaches every ``ds`` of the row, hence
    ``dq``. Measured on 20,000 random float32 rows of 2 to 300 keys, in ulps of ``sum |p dp|``
    (99.9th percentile, max): one running sum per chunk 2.2, 4.1; NumPy's pairwise sum in the
    naive reference 1.8, 4.4; four partial sums 1.6, 2.9. With one running sum a random layout
    broke the factor-3 rule on ``dq`` by 1%; with four it is below the naive error there."""
    nc, nr = st.shape
    for c0 in range(0, nc, _SUM_CHUNK):
        part[:] = 0
        part_d[:] = 0
        for c in range(c0, min(c0 + _SUM_CHUNK, nc)):
            pl = part[(c - c0) % 4]
            pd = part_d[(c - c0) % 4]
            for r in range(nr):
                e = fast_exp(st[c, r] - m_use[r])
                st[c, r] = e
                pl[r] += e
                pd[r] += e * dt[c, r]
        for r in range(nr):
            l_run[r] += (part[0, r] + part[1, r]) + (part[2, r] + part[3, r])
            dl_run[r] += (part_d[0, r] + part_d[1, r]) + (part_d[2, r] + part_d[3, r])


@numba.njit(fastmath=_FASTMATH, cache=True)
def _finish(st, dt, fb, softcap, masks_t, mi, inv, delta, live):  # type: ignore[no-untyped-def]
    """One block: ``st = p = e * inv[r]``, ``dt = ds = p * (dp - delta[r])`` (times ``fb``), both
    0 by selection on masked entries and rows without keys."""
    nc, nr = st.shape
    zero = st.dtype.type(0)
    cap = softcap > 0
    for c in range(nc):
        for r in range(nr):
            p = st[c, r] * inv[r]
            ds = p * (dt[c, r] - delta[r])
            if cap:
                ds = ds * fb[c, r]
            keep = live[r] and (mi < 0 or masks_t[mi, c, r])
            st[c, r] = p if keep else zero
            dt[c, r] = ds if keep else zero


@numba.njit(fastmath=_FASTMATH, cache=True)
def _mm_add(a, x, alpha, out):  # type: ignore[no-untyped-def]
    """``out += alpha * a @ x`` with plain loops (``a (w, nr)``, ``x (nr, e)``)."""
    w, nr = a.shape
    for c in range(w):
        for r in range(nr):
            y = a[c, r] * alpha
            for e in range(x.shape[1]):
                out[c, e] += y * x[r, e]


@numba.njit(fastmath=_FASTMATH, cache=True)
def _mm_add_allowed(a, x, alpha, masks_t, mi, live, out):  # type: ignore[no-untyped-def]
    """``out[c] += alpha * sum of a[c, r] * x[r]`` over the allowed entries of live rows only: an
    excluded entry never meets ``x`` (which may hold inf or NaN there)."""
    w, nr = a.shape
    for c in range(w):
        for r in range(nr):
            if live[r] and (mi < 0 or masks_t[mi, c, r]):
                y = a[c, r] * alpha
                for e in range(x.shape[1]):
                    out[c, e] += y * x[r, e]


# ---------------------------------------------------------------------------------- the tasks
@numba.njit(fastmath=_FASTMATH, cache=True)
def _partial(  # type: ignore[no-untyped-def]
    w_t, x, alpha, allowed_only, mask_index, masks_t, j0, j1, widths, live, out
):
    """``out = alpha * w_t @ x`` with loops, block by block for the blocks ``j0:j1`` of a tile
    stacked along the keys (``w_t (nc, nr)``, ``out (nc, e)``); with ``allowed_only`` over the
    allowed entries of live rows alone, so that an excluded entry never meets ``x``."""
    zero = out.dtype.type(0)
    o = 0
    for j in range(j0, j1):
        w = widths[j]
        ob = out[o : o + w]
        ob[:] = zero
        if allowed_only:
            _mm_add_allowed(w_t[o : o + w], x, alpha, masks_t, mask_index[j], live, ob)
        else:
            _mm_add(w_t[o : o + w], x, alpha, ob)
        o += w


@numba.njit(fastmath=_FASTMATH, cache=True)
def _row_task(
    s,
    q,
    k,
    v,
    dout,
    indptr,
    indices,
    mask_index,
    masks_t,
    wcum,
    widths,
    bq,
    bk,
    scale,
    softcap,
    use_blas,
    tile_keys,
    band,
    slot_w,
    part_k,
    part_v,
    bufs,
    dq,
):  # type: ignore[no-untyped-def]
    """Row task ``s`` of a band (``band = (f0, f1, bi0, nb)``: query head ``f0 + s // nb``, block
    row ``bi0 + s % nb``): ``dq`` of the block row, and the partial ``dk``/``dv`` of each of its
    blocks into ``part_k``/``part_v`` (block ``j`` at ``(slot_w[s] + wcum[j]) * d``, a ``(w, d)``
    matrix; ``d_v`` for ``part_v``)."""
    B, H, n_q, d = q.shape
    H_kv = k.shape[1]
    d_v = v.shape[3]
    P = indptr.shape[0]
    group = H // H_kv
    dt_ = q.dtype.type
    neg_inf = dt_(-np.inf)
    zero = dt_(0)
    one = dt_(1)
    cap = softcap > 0
    f0, bi0, nb = band[0], band[2], band[3]
    f = f0 + s // nb
    bi = bi0 + s % nb
    b = f // H
    h = f % H
    hk = h // group
    p = h if P > 1 else 0
    r0 = bi * bq
    nr = min(bq, n_q - r0)
    qb = q[b, h, r0 : r0 + nr]
    gb = dout[b, h, r0 : r0 + nr]
    dqb = dq[b, h, r0 : r0 + nr]
    start, end = indptr[p, bi], indptr[p, bi + 1]
    width = wcum[end - 1] + widths[end - 1] if end > start else 0
    # the block row's scores / p and dp / ds, key-major: block j at nr * wcum[j], (w, nr), in
    # the calling thread's buffers (their content never outlives the task)
    own = bufs[numba.get_thread_id()]
    s_buf = own[0, : width * nr]
    d_buf = own[1, : width * nr]
    f_buf = own[2, : width * nr] if cap else own[0, :1]
    m = np.full(nr, neg_inf, dtype=q.dtype)
    m_use = np.empty(nr, dtype=q.dtype)
    l_run = np.zeros(nr, dtype=q.dtype)
    dl_run = np.zeros(nr, dtype=q.dtype)
    part = np.empty((4, nr), dtype=q.dtype)
    part_d = np.empty((4, nr), dtype=q.dtype)
    inv = np.empty(nr, dtype=q.dtype)
    delta = np.empty(nr, dtype=q.dtype)
    lv = np.empty(nr, dtype=np.bool_)
    tmp = np.empty((nr, d), dtype=q.dtype)
    dqb[:] = zero
    # 1. scores and dp per run of adjacent blocks, then softcap / masks / row max
    idx = start
    while idx < end:
        g = _group_end(indices, idx, end, bk, tile_keys)
        c0 = indices[idx] * bk
        nc = wcum[g - 1] + widths[g - 1] - wcum[idx]
        o0 = nr * wcum[idx]
        st = s_buf[o0 : o0 + nc * nr].reshape((nc, nr))
        dt = d_buf[o0 : o0 + nc * nr].reshape((nc, nr))
        if use_blas:
            _gemm(k[b, hk, c0 : c0 + nc], False, qb, True, st, scale, zero)
            _gemm(v[b, hk, c0 : c0 + nc], False, gb, True, dt, one, zero)
        else:
            _scores_loops(k[b, hk, c0 : c0 + nc], qb, scale, st)
            _scores_loops(v[b, hk, c0 : c0 + nc], gb, one, dt)
        o = 0
        for j in range(idx, g):
            w = widths[j]
            fo = o0 + o * nr
            fb = f_buf[fo : fo + w * nr].reshape((w, nr)) if cap else f_buf[:1].reshape((1, 1))
            _prepare(st[o : o + w], dt[o : o + w], fb, softcap, masks_t, mask_index[j], m)
            o += w
        idx = g
    # 2. exp, l and delta over the whole block row
    for r in range(nr):
        m_use[r] = zero if m[r] == neg_inf else m[r]  # only -inf (or NaN): exp gives 0 (NaN)
    if width > 0:
        _exp_sums(
            s_buf.reshape((width, nr)),
            d_buf.reshape((width, nr)),
            m_use,
            l_run,
            dl_run,
            part,
            part_d,
        )
    any_dead = False
    for r in range(nr):
        lv[r] = l_run[r] != zero  # NaN counts as live: the row's gradients are NaN
        if lv[r]:
            inv[r] = one / l_run[r]
            delta[r] = dl_run[r] * inv[r]
        else:
            inv[r] = zero
            delta[r] = zero
            any_dead = True
    q_finite = _finite(qb)
    g_finite = _finite(gb)
    # 3. per run: p and ds; dq += scale dS K; partial dv = P^T dout, dk = scale dS^T q
    base_k = slot_w[s] * d
    base_v = slot_w[s] * d_v
    idx = start
    while idx < end:
        g = _group_end(indices, idx, end, bk, tile_keys)
        c0 = indices[idx] * bk
        nc = wcum[g - 1] + widths[g - 1] - wcum[idx]
        o0 = nr * wcum[idx]
        st = s_buf[o0 : o0 + nc * nr].reshape((nc, nr))
        dt = d_buf[o0 : o0 + nc * nr].reshape((nc, nr))
        kg = k[b, hk, c0 : c0 + nc]
        o = 0
        k_finite = True
        full = True
        for j in range(idx, g):
            w = widths[j]
            fo = o0 + o * nr
            fb = f_buf[fo : fo + w * nr].reshape((w, nr)) if cap else f_buf[:1].reshape((1, 1))
            mi = mask_index[j]
            _finish(st[o : o + w], dt[o : o + w], fb, softcap, masks_t, mi, inv, delta, lv)
            if mi >= 0:
                full = False
                if k_finite:
                    k_finite = _finite(kg[o : o + w])
            o += w
        # a product may meet an excluded entry (weight 0) with a non-finite operand only where
        # some entry is excluded: then sum over the allowed entries alone (0 * inf is NaN)
        if not k_finite:
            tmp[:] = zero
            o = 0
            for j in range(idx, g):
                w = widths[j]
                _pv_add_masked(dt[o : o + w], kg[o : o + w], masks_t, mask_index[j], tmp)
                o += w
            for r in range(nr):
                for c in range(d):
                    dqb[r, c] += tmp[r, c] * scale
        elif use_blas:
            _gemm(dt, True, kg, False, dqb, scale, one)
        else:
            _mm_add(dt.T, kg, scale, dqb)  # dq += scale dS^T K with plain loops
        whole = full and not any_dead  # every entry of the tile allowed and live
        pk = part_k[base_k + wcum[idx] * d : base_k + (wcum[idx] + nc) * d].reshape((nc, d))
        pv = part_v[base_v + wcum[idx] * d_v : base_v + (wcum[idx] + nc) * d_v].reshape((nc, d_v))
        if use_blas and (g_finite or whole):
            _gemm(st, False, gb, False, pv, one, zero)
        else:
            _partial(
                st, gb, one, not (g_finite or whole), mask_index, masks_t, idx, g, widths, lv, pv
            )
        if use_blas and (q_finite or whole):
            _gemm(dt, False, qb, False, pk, scale, zero)
        else:
            _partial(
                dt, qb, scale, not (q_finite or whole), mask_index, masks_t, idx, g, widths, lv, pk
            )
        idx = g
    for r in range(nr):
        if not lv[r]:  # no keys: no gradient (the products above may have met zeros only)
            dqb[r, :] = zero


@numba.njit(fastmath=_FASTMATH, cache=True)
def _column_task(
    task, H, wcum, t_indptr, t_rows, t_pos, bk, band, cols, slot_w, part_k, part_v, dk, dv
):  # type: ignore[no-untyped-def]
    """Column task of a band: kv unit ``f0 // group + task // len(cols)`` (``b * H_kv + g``) and
    key block column ``cols[task % len(cols)]``: adds the band's partial ``dk``/``dv`` of that
    column, query heads of the chunk in increasing order, block rows in increasing order."""
    B, H_kv, n_k, d = dk.shape
    d_v = dv.shape[3]
    P = t_indptr.shape[0]
    group = H // H_kv
    f0, f1, bi0, nb = band[0], band[1], band[2], band[3]
    ncol = cols.shape[0]
    unit = f0 // group + task // ncol
    b = unit // H_kv
    g = unit % H_kv
    bj = cols[task % ncol]
    c0 = bj * bk
    w = min(bk, n_k - c0)
    dkb = dk[b, g, c0 : c0 + w]
    dvb = dv[b, g, c0 : c0 + w]
    for h in range(max(g * group, f0 - b * H), min((g + 1) * group, f1 - b * H)):
        f = b * H + h
        p = h if P > 1 else 0
        a, z = t_indptr[p, bj], t_indptr[p, bj + 1]
        t = a + np.searchsorted(t_rows[a:z], bi0)
        while t < z and t_rows[t] < bi0 + nb:
            s = (f - f0) * nb + (t_rows[t] - bi0)
            o = slot_w[s] + wcum[t_pos[t]]
            pk = part_k[o * d : (o + w) * d].reshape((w, d))
            pv = part_v[o * d_v : (o + w) * d_v].reshape((w, d_v))
            for c in range(w):
                for e in range(d):
                    dkb[c, e] += pk[c, e]
                for e in range(d_v):
                    dvb[c, e] += pv[c, e]
            t += 1


class _Tensors(NamedTuple):
    """The inputs and outputs of a call: q, k, v, dout (read-only), dq, dk, dv."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray


class _Layout(NamedTuple):
    """The block form as the tasks read it: rows (``indptr``, ``indices``, ``mask_index``,
    ``masks_t``: masks transposed to ``(w, nr)``), block widths (``widths``) and their running sum
    within each block row (``wcum``), the block transpose (``t_indptr``, ``t_rows``, ``t_pos``),
    the block shape, and the tiling options (``use_blas``, ``tile_keys``)."""

    indptr: np.ndarray
    indices: np.ndarray
    mask_index: np.ndarray
    masks_t: np.ndarray
    wcum: np.ndarray
    widths: np.ndarray
    t_indptr: np.ndarray
    t_rows: np.ndarray
    t_pos: np.ndarray
    bq: int
    bk: int
    use_blas: bool
    tile_keys: int


class _Work(NamedTuple):
    """One band's work: ``band`` (int64 ``f0, f1, bi0, nb``), the key block columns it touches
    (``cols``), the first key (in widths) of each (head, block row) slot (``slot_w``), and its
    buffers of partial ``dk``/``dv`` (``part_k``, ``part_v``)."""

    band: np.ndarray
    cols: np.ndarray
    slot_w: np.ndarray
    part_k: np.ndarray
    part_v: np.ndarray


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _step(x, lay, scale, softcap, rows, cols, bufs, workers):  # type: ignore[no-untyped-def]
    """One parallel region: the row tasks of band ``rows`` (into its scratch) and the column tasks
    of the previous band ``cols`` (from its scratch); they touch disjoint data.

    ``x`` is a :class:`_Tensors`, ``lay`` a :class:`_Layout`, ``rows``/``cols`` are
    :class:`_Work` (measured against 33 positional arguments: the same time, see
    docs/kernels.md)."""
    H, H_kv = x.q.shape[1], x.k.shape[1]
    group = H // H_kv
    n_row = rows.slot_w.shape[0] - 1
    units = (cols.band[1] - 1) // group + 1 - cols.band[0] // group
    n_col = units * cols.cols.shape[0]
    for worker in prange(workers):  # one iteration per thread; tasks dealt out cyclically
        for t in range(worker, n_row + n_col, workers):
            if t < n_row:
                _row_task(
                    t,
                    x.q,
                    x.k,
                    x.v,
                    x.dout,
                    lay.indptr,
                    lay.indices,
                    lay.mask_index,
                    lay.masks_t,
                    lay.wcum,
                    lay.widths,
                    lay.bq,
                    lay.bk,
                    scale,
                    softcap,
                    lay.use_blas,
                    lay.tile_keys,
                    rows.band,
                    rows.slot_w,
                    rows.part_k,
                    rows.part_v,
                    bufs,
                    x.dq,
                )
            else:
                _column_task(
                    t - n_row,
                    H,
                    lay.wcum,
                    lay.t_indptr,
                    lay.t_rows,
                    lay.t_pos,
                    lay.bk,
                    cols.band,
                    cols.cols,
                    cols.slot_w,
                    cols.part_k,
                    cols.part_v,
                    x.dk,
                    x.dv,
                )


# ------------------------------------------------------------------------------------ planning
def bands(cost: np.ndarray, H: int, B: int, cap: int) -> list[tuple[int, int, int, int]]:
    """The schedule: ``(f0, f1, bi0, bi1)`` per (chunk of query heads, band of block rows), in
    order. ``cost (P, nbq)`` is the scratch each block row needs (per stored head, ``P`` 1 or
    ``H``); a chunk holds as many heads as fit ``cap`` on their costliest block row, a band the
    consecutive block rows whose cost over the chunk fits ``cap`` (at least one of each). The
    result depends only on its arguments: it fixes the order of the sums into ``dk``/``dv``."""
    P, nbq = cost.shape
    if nbq == 0 or B * H == 0:
        return []
    heads = max(1, min(B * H, cap // max(1, int(cost.max()))))
    out = []
    for f0 in range(0, B * H, heads):
        f1 = min(f0 + heads, B * H)
        hs = np.arange(f0, f1) % H
        band_cost = cost[hs if P > 1 else np.zeros(len(hs), dtype=np.int64)].sum(axis=0)
        bi0, acc = 0, 0
        for bi in range(nbq):
            c = int(band_cost[bi])
            if bi > bi0 and acc + c > cap:
                out.append((f0, f1, bi0, bi))
                bi0, acc = bi, 0
            acc += c
        out.append((f0, f1, bi0, nbq))
    return out


class _Band(NamedTuple):
    """One band's arguments to :func:`_step` (its scratch is buffer ``parity`` of two)."""

    band: np.ndarray  # int64 (f0, f1, bi0, nb)
    cols: np.ndarray  # int64 key block columns touched
    slot_w: np.ndarray  # int64 first key (in widths) of each (head, block row) slot
    parity: int


def bsr_backward(  # type: ignore[no-untyped-def]
    q,
    k,
    v,
    dout,
    indptr,
    indices,
    mask_index,
    layout,
    bq,
    bk,
    t_indptr,
    t_rows,
    t_pos,
    scale,
    softcap,
    dq,
    dk,
    dv,
):
    """Fill ``dq``, ``dk``, ``dv`` in place (formulas and schedule in the module doc).

    Args:
        q, k, v, dout: ``(B, H, n_q, d)``, ``(B, H_kv, n_k, d)``, ``(B, H_kv, n_k, d_v)``,
            ``(B, H, n_q, d_v)``, C-contiguous, float32 or float64 (the compute dtype).
        indptr, indices, mask_index, bq, bk: the block form (:class:`StackedBSR`); ragged last
            block row/column allowed.
        layout: the same block form as the row tasks read it
            (``sparse_ref.metadata.block_row_layout``: block widths, their offsets within each
            block row, keys per block row, the masks key-major), built once per pattern.
        t_indptr, t_rows, t_pos: the stored blocks of each key block column
            (``sparse_ref.metadata.block_transpose``: ``t_indptr (P, nbk + 1)`` absolute offsets,
            block rows ascending, storage positions).
        scale, softcap: scalars of the compute dtype; ``softcap = 0`` disables it.
        dq, dk, dv: outputs shaped like q, k, v, same dtype.

    Extra memory: two band buffers of partial ``dk``/``dv`` (:data:`SCRATCH_BYTES` together,
    unless one block row of one head needs more), per thread the scores and ``dp`` of one block
    row (and the softcap derivative), and per band the key block columns it touches and the
    offsets of its slots. (The O(nblocks) layout arrays are the pattern's, built once.)
    """
    B, H, n_q, d = q.shape
    d_v = v.shape[3]
    dt = q.dtype.type
    P = indptr.shape[0]
    dk[...] = 0
    dv[...] = 0
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    mask_index = np.ascontiguousarray(mask_index, dtype=np.int32)
    widths, wcum, row_keys, masks_t = layout  # row_keys: (P, nbq)
    per_key = (d + d_v) * q.dtype.itemsize
    plan = bands(row_keys, H, B, max(1, SCRATCH_BYTES // (2 * per_key)))
    if not plan:
        dq[...] = 0
        return

    def slot_keys(f0: int, f1: int, bi0: int, bi1: int) -> np.ndarray:
        """Keys of each (head, block row) slot of a band, ``(f1 - f0, bi1 - bi0)``."""
        ps = np.arange(f0, f1) % H if P > 1 else np.zeros(f1 - f0, dtype=np.int64)
        return row_keys[ps, bi0:bi1]

    size = max(int(slot_keys(*band).sum()) for band in plan)
    part_k = np.empty((2, max(1, size * d)), dtype=q.dtype)
    part_v = np.empty((2, max(1, size * d_v)), dtype=q.dtype)
    # per thread: scores, dp (and the softcap derivative) of one block row; pages are touched
    # only by threads that run
    row_len = max(
        1, int((row_keys * np.minimum(bq, n_q - np.arange(row_keys.shape[1]) * bq)).max())
    )
    bufs = np.empty((numba.config.NUMBA_NUM_THREADS, 3 if softcap > 0 else 2, row_len), q.dtype)
    use_blas = bq * bk * d >= BLAS_MIN_TILE
    arrays = (q, k, v, dout, indptr, indices, mask_index, masks_t, wcum, widths)
    q, k, v, dout, indptr, indices, mask_index, masks_t, wcum, widths = map(_readonly, arrays)
    t_indptr, t_rows, t_pos = map(_readonly, (t_indptr, t_rows, t_pos))

    def band_args(i: int) -> _Band:
        f0, f1, bi0, bi1 = plan[i]
        keys = slot_keys(f0, f1, bi0, bi1)
        slot_w = np.zeros(keys.size + 1, dtype=np.int64)
        np.cumsum(keys.ravel(), out=slot_w[1:])
        ps = np.unique(np.arange(f0, f1) % H) if P > 1 else np.zeros(1, dtype=np.int64)
        spans = [indices[a:z] for a, z in zip(indptr[ps, bi0], indptr[ps, bi1], strict=True)]
        cols = np.unique(np.concatenate(spans)).astype(np.int64)
        band = np.array([f0, f1, bi0, bi1 - bi0], dtype=np.int64)
        return _Band(band, cols, slot_w, i % 2)

    idle = _Band(
        np.array([0, 1, 0, 1], dtype=np.int64),  # no row tasks (one slot offset), no columns
        np.zeros(0, dtype=np.int64),
        np.zeros(1, dtype=np.int64),
        0,
    )
    x = _Tensors(q, k, v, dout, dq, dk, dv)
    lay = _Layout(
        indptr,
        indices,
        mask_index,
        masks_t,
        wcum,
        widths,
        t_indptr,
        t_rows,
        t_pos,
        int(bq),
        int(bk),
        bool(use_blas),
        int(max(TILE_KEYS, bk)),
    )

    def work(band: _Band) -> _Work:
        return _Work(band.band, band.cols, band.slot_w, part_k[band.parity], part_v[band.parity])

    prev = idle
    with single_threaded_blas():
        for i in range(len(plan) + 1):
            cur = band_args(i) if i < len(plan) else idle._replace(parity=1 - prev.parity)
            _step(
                x, lay, dt(scale), dt(softcap), work(cur), work(prev), bufs, numba.get_num_threads()
            )
            prev = cur
