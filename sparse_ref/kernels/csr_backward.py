"""Numba backward kernels over token CSR: dq over the pattern's rows, dk/dv over its transpose.

    s_ij    = scale * q_i . k_j           (with softcap: t_ij = tanh(s_ij / softcap), s_ij = softcap t_ij)
    p_ij    = exp(s_ij - m_i) / l_i       (m_i = max_j s_ij, l_i = sum_j exp(s_ij - m_i))
    dp_ij   = dout_i . v_j
    delta_i = sum_j p_ij dp_ij            (= dout_i . out_i)
    ds_ij   = p_ij (dp_ij - delta_i)      (times 1 - t_ij**2 with softcap)
    dq_i    = scale * sum_j ds_ij k_j     over the keys j of row i         (row pass, pattern rows)
    dk_j    = scale * sum_i ds_ij q_i,  dv_j = sum_i p_ij dout_i
                                          over the queries i of key j      (column pass, transpose)

Two passes, no atomics. The **row pass** computes, for each query row, the scores and ``dp`` of
its keys, the row's exact softmax (``m``, ``l``) and ``delta = sum_j p_ij dp_ij`` from them, then
``ds`` and ``dq``; it copies ``p`` and ``ds`` of the row into scratch arrays in the pattern's own
CSR order (one contiguous copy per row). The **column pass** walks the transposed rows (the
queries of each key) and accumulates ``dv_j += p_ij dout_i`` and ``dk_j += ds_ij q_i``, finding
each weight through ``perm`` (transposed position -> CSR position, from
:func:`sparse_ref.metadata.csr_transpose`). The keys of a band (of a group) are consecutive, so for each query they sit in adjacent CSR
positions: one ``perm`` read serves all their weights. That is five products of size ``nnz x d``, as in
FlashAttention-2 (which instead recomputes ``p`` in its key-major pass and adds ``dq`` with
atomics), and scratch memory for two floats per entry; the caller (:func:`csr_backward`) bounds
it by running the passes over a few heads at a time and keeps it for the next call
(:mod:`._workspace`). (Recomputing ``p`` and ``ds`` in the column pass instead, seven products and
no scratch, measured 15% slower; writing the scratch in transposed order through an inverse
permutation, as an earlier version did, cost a third of the row pass.)

Deriving ``m``, ``l`` and ``delta`` from the row's own scores, instead of taking ``lse`` and
``delta = rowsum(dout * out)`` from the forward, keeps ``p`` and ``delta`` consistent to rounding,
so ``sum_j ds_ij`` cancels as it should and the gradients do not inherit the rounding of the
forward's ``out`` (with ``delta`` from a float32 ``out``, about 4% of small random cases broke the
DESIGN §9 rule). It costs a few vectorised passes over each row's scores.

Schedule. Each task produces ``BAND`` consecutive output rows (query rows in the row pass, keys in
the column pass; with GQA the column task walks the query heads of its kv head in increasing
order). Tasks are dealt to the threads cyclically (task ``t`` to thread ``t mod T``: a ``prange``
would give each thread one contiguous half, and on causal patterns the later rows cost more). A
task's rows go by one of three paths, chosen from the pattern alone:

* **band path** (:mod:`._csr_band`): the ``BAND`` rows (else each half of them) share a core of at
  least :data:`BAND_MIN_CORE` indices, as one-run rows that overlap (wide windows) or as identical
  rows (block patterns held as token CSR). The core's products are BLAS GEMMs: ``S``, ``dP`` and
  ``dq`` over the ``(rows, core)`` rectangle in the row pass, ``dv`` and ``dk`` in the column pass
  (the band's ``BAND`` weights of each core query are adjacent in the scratch); the edges take the
  gather path. Measured (n = 16384, d = 64, float32, 2 threads) against the two paths below:
  backward / forward from 4.4 to 2.2 on a causal window of 4096, from 4.5 to 2.5 on BigBird of
  64-blocks, from 2.7 to 2.4 on a causal window of 256.
* otherwise groups of ``GROUP`` rows:

  * **run path**: the ``GROUP`` rows' entries are runs of consecutive indices (windows, causal,
    local and block patterns) overlapping enough. In the row pass the scores of the union run are
    small matrix products ``Q_g @ K_run^T`` (and ``dout_g @ V_run^T``) vectorised over the run,
    against copies of k and v transposed tile by tile (``TILE`` keys per contiguous tile), with
    the ``GROUP`` rows blocked in registers. Accumulations ``acc_g += W_g @ Y_run`` run over the
    indices common to all rows with the rows blocked in registers again; indices of only some
    rows are added row by row. The rows may also share a *prefix*, up to :data:`MAX_PREFIX`
    identical leading indices before their runs (global keys or attention sinks beside a narrow
    window; global rows in the column pass): its entries take the gather path's dot products
    and accumulations (global_local with a window of +-64 and 4 global tokens, n = 16384:
    backward / forward from 3.3-3.7 to 2.85-2.99).
  * **gather path** (any sorted CSR row): dot products through the index array four entries at a
    time, then ``acc += w_u y_u`` four entries per pass over ``acc``.

On every path an entry outside a row's pattern is never multiplied, not even by 0.

Determinism: each output row (``dq_i``, or ``dk_j``/``dv_j``) is written by exactly one task, and
its sequence of floating-point operations depends only on the pattern and the shapes (the bands,
groups and tiles, the choice of path, GEMM shapes with BLAS single-threaded; head chunks only
split a sequence of additions into the same additions), so results are bitwise identical for any
thread count and across runs.

Special values: a row with no allowed keys (or only ``-inf`` scores) gets ``dq = 0`` and weights 0
in the column pass. A weight 0 still meets the row's ``q``/``dout`` there, so where such a row
holds a non-finite value (possible only with ``check_finite=False``) the row pass flags it and
the column pass runs on copies of ``q``/``dout`` with the flagged rows zeroed: the oracle skips
those rows, and so do the kernels. A NaN score makes its row's gradients NaN. ``exp`` is
:func:`._exp.fast_exp` (vectorisable, about 1 ulp); ``fastmath`` only ``reassoc``/``contract``/
``arcp`` (never ``nnan``/``ninf``).

The kernels trust their inputs (validated by ``sparse_ref.api``): q ``(B, H, n_q, d)``, k
``(B, H_kv, n_k, d)``, v ``(B, H_kv, n_k, d_v)``, dout ``(B, H, n_q, d_v)``, all C-contiguous of
one float dtype, which is also the accumulation dtype (float32 kernels accumulate in float32);
``indptr (P, n_q + 1)`` int64 absolute offsets into ``indices`` (``P`` is 1 or ``H``,
:meth:`Pattern.stacked_csr`); ``scale``/``softcap`` scalars of the data dtype, ``softcap = 0``
meaning none.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import _workspace
from ._blas import single_threaded_blas
from ._csr_band import BAND, band_columns, band_core, band_rows
from ._csr_parts import (
    all_finite,
    axpy,
    axpy4,
    gather_accumulate,
    gather_accumulate_perm,
    gather_scores,
    row_grad,
    run_bounds,
)
from ._views import readonly as _readonly

__all__ = [
    "GROUP",
    "TILE",
    "BAND",
    "BAND_MIN_CORE",
    "MAX_PREFIX",
    "SCRATCH_BYTES",
    "csr_backward",
    "csr_backward_rows",
    "csr_backward_columns",
]

#: IEEE-preserving fast-math: reassociation (vectorised sums), FMA contraction and reciprocal
#: approximation are allowed; ``nnan``/``ninf`` never, so -inf and NaN keep their meaning.
_FASTMATH = {"reassoc", "contract", "arcp"}

#: output rows per task, blocked in registers on the run path
GROUP = 4
#: keys per tile of the transposed copies of k and v used by the run path
TILE = 64
#: the run path also takes rows that share up to this many leading indices before their run
MAX_PREFIX = 64
#: the band path (:mod:`._csr_band`) takes rows (key columns) sharing at least this many keys
#: (queries); read when :func:`csr_backward` is called
BAND_MIN_CORE = 128
#: the scratch (``p`` and ``ds`` per entry) of one call of the passes stays under this, unless a
#: single head needs more
SCRATCH_BYTES = 256 << 20


# ------------------------------------------------------------------------------------- layout
@numba.njit(parallel=True, cache=True)
def tile_transpose(x, out):  # type: ignore[no-untyped-def]
    """``out[b, h, t, c, u] = x[b, h, t * TILE + u, c]``, zero past the end (``out`` is
    ``(B, H, ceil(n / TILE), d, TILE)``): rows of a tile become contiguous columns."""
    B, Hx, n, d = x.shape
    ntile = out.shape[2]
    zero = x.dtype.type(0)
    for task in prange(B * Hx * ntile):
        b = task // (Hx * ntile)
        h = (task // ntile) % Hx
        t = task % ntile
        tile = out[b, h, t]
        for u in range(TILE):
            j = t * TILE + u
            if j < n:
                row = x[b, h, j]
                for c in range(d):
                    tile[c, u] = row[c]
            else:
                for c in range(d):
                    tile[c, u] = zero


# -------------------------------------------------------------------------------- run path
@numba.njit(cache=True, fastmath=_FASTMATH)
def _tile_scores4(x4, ytf, base, sv):  # type: ignore[no-untyped-def]
    """``sv[r * TILE + u] = x4[r] . Y[u]`` for the 4 rows of ``x4`` and the ``TILE`` indices of one
    tile, where ``ytf[base + c * TILE + u]`` is component ``c`` of ``Y[u]`` (the transposed tile):
    the inner loop has a fixed trip count, runs over indices with unit stride, and each loaded
    value serves the 4 rows. (A trip count set by the part of the tile in use, even in whole
    vectors, measured six times slower: Numba then leaves the loop scalar.)"""
    d = x4.shape[1]
    quad_end = d - d % 4  # components [0, quad_end) go four at a time
    zero = sv.dtype.type(0)
    for u in range(GROUP * TILE):
        sv[u] = zero
    for c in range(0, quad_end, 4):
        q00, q01, q02, q03 = x4[0, c], x4[0, c + 1], x4[0, c + 2], x4[0, c + 3]
        q10, q11, q12, q13 = x4[1, c], x4[1, c + 1], x4[1, c + 2], x4[1, c + 3]
        q20, q21, q22, q23 = x4[2, c], x4[2, c + 1], x4[2, c + 2], x4[2, c + 3]
        q30, q31, q32, q33 = x4[3, c], x4[3, c + 1], x4[3, c + 2], x4[3, c + 3]
        yv = ytf[base + c * TILE : base + (c + 4) * TILE]
        for u in range(TILE):
            y0, y1, y2, y3 = yv[u], yv[TILE + u], yv[2 * TILE + u], yv[3 * TILE + u]
            sv[u] += q00 * y0 + q01 * y1 + q02 * y2 + q03 * y3
            sv[TILE + u] += q10 * y0 + q11 * y1 + q12 * y2 + q13 * y3
            sv[2 * TILE + u] += q20 * y0 + q21 * y1 + q22 * y2 + q23 * y3
            sv[3 * TILE + u] += q30 * y0 + q31 * y1 + q32 * y2 + q33 * y3
    for c in range(quad_end, d):
        q00, q10, q20, q30 = x4[0, c], x4[1, c], x4[2, c], x4[3, c]
        yv = ytf[base + c * TILE : base + (c + 1) * TILE]
        for u in range(TILE):
            y0 = yv[u]
            sv[u] += q00 * y0
            sv[TILE + u] += q10 * y0
            sv[2 * TILE + u] += q20 * y0
            sv[3 * TILE + u] += q30 * y0


@numba.njit(cache=True, fastmath=_FASTMATH)
def _run_scores4(x4, ytf, base, d, lo, nu, scale, sv, out, off):  # type: ignore[no-untyped-def]
    """``out[r, off + u] = scale * x4[r] . Y[lo + u]`` for ``u < nu``, tile by tile; ``base`` is
    the offset of this (batch, head)'s first tile in the flat tiled transpose ``ytf``."""
    j = lo
    while j < lo + nu:
        t = j // TILE
        a = j - t * TILE
        m = min(TILE - a, lo + nu - j)
        _tile_scores4(x4, ytf, base + t * d * TILE, sv)  # the whole tile: no scalar tail
        for r in range(GROUP):
            o = out[r]
            for u in range(m):
                o[off + j - lo + u] = sv[r * TILE + a + u] * scale
        j += m


@numba.njit(cache=True, fastmath=_FASTMATH)
def _run_accumulate4(a0, a1, a2, a3, w, o0, o1, o2, o3, rows, lo, n):  # type: ignore[no-untyped-def]
    """``a_r += sum_u w[o_r + u] rows[lo + u]`` for ``u < n``, four indices at a time."""
    n4 = n - n % 4
    for u in range(0, n4, 4):
        p00, p01, p02, p03 = w[o0 + u], w[o0 + u + 1], w[o0 + u + 2], w[o0 + u + 3]
        p10, p11, p12, p13 = w[o1 + u], w[o1 + u + 1], w[o1 + u + 2], w[o1 + u + 3]
        p20, p21, p22, p23 = w[o2 + u], w[o2 + u + 1], w[o2 + u + 2], w[o2 + u + 3]
        p30, p31, p32, p33 = w[o3 + u], w[o3 + u + 1], w[o3 + u + 2], w[o3 + u + 3]
        y0, y1, y2, y3 = rows[lo + u], rows[lo + u + 1], rows[lo + u + 2], rows[lo + u + 3]
        for c in range(a0.shape[0]):
            x0, x1, x2, x3 = y0[c], y1[c], y2[c], y3[c]
            a0[c] += p00 * x0 + p01 * x1 + p02 * x2 + p03 * x3
            a1[c] += p10 * x0 + p11 * x1 + p12 * x2 + p13 * x3
            a2[c] += p20 * x0 + p21 * x1 + p22 * x2 + p23 * x3
            a3[c] += p30 * x0 + p31 * x1 + p32 * x2 + p33 * x3
    for u in range(n4, n):
        p0, p1, p2, p3 = w[o0 + u], w[o1 + u], w[o2 + u], w[o3 + u]
        y0 = rows[lo + u]
        for c in range(a0.shape[0]):
            x0 = y0[c]
            a0[c] += p0 * x0
            a1[c] += p1 * x0
            a2[c] += p2 * x0
            a3[c] += p3 * x0


@numba.njit(cache=True, fastmath=_FASTMATH)
def _column_accumulate4(a0, a1, a2, a3, w, perm, t0, base, rows, lo, n):  # type: ignore[no-untyped-def]
    """``a_r += sum_u w[perm[t0 + u] - base + r] rows[lo + u]`` for ``u < n``: the column pass of
    ``GROUP`` consecutive keys over their common queries ``lo .. lo + n - 1``, where ``t0`` is the
    transposed position of ``(lo, first key)`` and the weight of key ``r`` for a query sits ``r``
    places after that of the first key (the keys are adjacent in each query's CSR row). Same
    arithmetic, in the same order, as :func:`_run_accumulate4`."""
    n4 = n - n % 4
    for u in range(0, n4, 4):
        b0, b1 = perm[t0 + u] - base, perm[t0 + u + 1] - base
        b2, b3 = perm[t0 + u + 2] - base, perm[t0 + u + 3] - base
        p00, p01, p02, p03 = w[b0], w[b1], w[b2], w[b3]
        p10, p11, p12, p13 = w[b0 + 1], w[b1 + 1], w[b2 + 1], w[b3 + 1]
        p20, p21, p22, p23 = w[b0 + 2], w[b1 + 2], w[b2 + 2], w[b3 + 2]
        p30, p31, p32, p33 = w[b0 + 3], w[b1 + 3], w[b2 + 3], w[b3 + 3]
        y0, y1, y2, y3 = rows[lo + u], rows[lo + u + 1], rows[lo + u + 2], rows[lo + u + 3]
        for c in range(a0.shape[0]):
            x0, x1, x2, x3 = y0[c], y1[c], y2[c], y3[c]
            a0[c] += p00 * x0 + p01 * x1 + p02 * x2 + p03 * x3
            a1[c] += p10 * x0 + p11 * x1 + p12 * x2 + p13 * x3
            a2[c] += p20 * x0 + p21 * x1 + p22 * x2 + p23 * x3
            a3[c] += p30 * x0 + p31 * x1 + p32 * x2 + p33 * x3
    for u in range(n4, n):
        b = perm[t0 + u] - base
        p0, p1, p2, p3 = w[b], w[b + 1], w[b + 2], w[b + 3]
        y0 = rows[lo + u]
        for c in range(a0.shape[0]):
            x0 = y0[c]
            a0[c] += p0 * x0
            a1[c] += p1 * x0
            a2[c] += p2 * x0
            a3[c] += p3 * x0


@numba.njit(cache=True, fastmath=_FASTMATH, inline="always")
def _run_accumulate(y, w, off, rows, lo, n):  # type: ignore[no-untyped-def]
    """``y += sum_u w[off + u] rows[lo + u]`` for ``u < n``, four rows per pass over ``y``."""
    u = 0
    while u + 4 <= n:
        axpy4(
            y,
            w[off + u],
            rows[lo + u],
            w[off + u + 1],
            rows[lo + u + 1],
            w[off + u + 2],
            rows[lo + u + 2],
            w[off + u + 3],
            rows[lo + u + 3],
        )
        u += 4
    while u < n:
        axpy(y, w[off + u], rows[lo + u])
        u += 1


@numba.njit(cache=True, inline="always")
def _runs(ptr, idx, r0, rn, skip):  # type: ignore[no-untyped-def]
    """Whether rows ``r0 .. r0 + GROUP - 1``, less their first ``skip`` entries, take the run path,
    and ``(lo, hi, core_lo, core_hi)``: the union and the intersection of their index ranges."""
    one_run, lo, hi, core_lo, core_hi, total = run_bounds(ptr, idx, r0, rn, skip)
    # dense enough: at most half of the union wasted
    ok = rn == GROUP and one_run and 2 * total >= GROUP * (hi - lo)
    return ok, lo, hi, core_lo, core_hi


@numba.njit(cache=True)
def _common_prefix(ptr, idx, r0, rn):  # type: ignore[no-untyped-def]
    """The number of leading indices (``1 .. MAX_PREFIX``) the ``GROUP`` rows share before their
    runs: what precedes the last run of consecutive indices of the first row (global keys or sinks
    before a window), if the other rows start with the same indices; 0 if there is none."""
    start = ptr[r0]
    end = ptr[r0 + 1]
    if rn != GROUP or end - start < 2:
        return 0
    a = start  # the last run's first position: idx[end - 1] - idx[e] == end - 1 - e from there on
    b = end - 1
    while a < b:
        mid = (a + b) >> 1
        if np.int64(idx[end - 1]) - np.int64(idx[mid]) == end - 1 - mid:
            b = mid
        else:
            a = mid + 1
    prefix = a - start
    if prefix == 0 or prefix > MAX_PREFIX:
        return 0
    for r in range(1, rn):
        other = ptr[r0 + r]
        if ptr[r0 + r + 1] - other <= prefix:
            return 0
        for t in range(prefix):
            if idx[other + t] != idx[start + t]:
                return 0
    return prefix


# ----------------------------------------------------------------------------------- kernels
@numba.njit(cache=True, fastmath=_FASTMATH)
def _group_rows(  # type: ignore[no-untyped-def]
    q_bh,
    dout_bh,
    k_bg,
    v_bg,
    ktf,
    vtf,
    k_base,
    v_base,
    ptr,
    indices,
    hb,
    i0,
    rn,
    scale,
    softcap,
    sv,
    s_rows,
    dp_rows,
    fb_rows,
    dq_bh,
    p_head,
    ds_head,
    live,
):
    """Row pass of the ``rn <= GROUP`` query rows ``i0 ..`` of one head, by the run path or the
    gather path: ``dq`` rows unscaled (dead rows unspecified), ``p``/``ds`` into the scratch at
    ``pos - hb``, ``live[r]``. ``k_base``/``v_base``: offsets of the kv head's first tile in the
    flat tiled transposes ``ktf``/``vtf``. Work rows ``(GROUP, width)``, ``width >= 2 *`` the
    longest row ``+ MAX_PREFIX``: ``s_rows`` (scores, then ``p``), ``dp_rows`` (``dp``, then
    ``ds``), ``fb_rows`` (the softcap factor ``1 - t**2``)."""
    d, d_v = k_bg.shape[1], v_bg.shape[1]
    width = s_rows.shape[1]
    zero = q_bh.dtype.type(0)
    one = q_bh.dtype.type(1)
    for r in range(rn):
        dq_bh[i0 + r, :] = zero
    prefix = 0  # a prefix shared by the rows (global keys, sinks) before their runs
    run, lo, hi, core_lo, core_hi = _runs(ptr, indices, i0, rn, 0)
    if not run:
        prefix = _common_prefix(ptr, indices, i0, rn)
        if prefix:
            run, lo, hi, core_lo, core_hi = _runs(ptr, indices, i0, rn, prefix)
    if run:
        # row r's entries sit in s_rows[r] at a_r - lo: its prefix, then its run (run key j at
        # prefix + j - lo), so each row is contiguous in its CSR order
        nu = hi - lo
        _run_scores4(q_bh[i0 : i0 + GROUP], ktf, k_base, d, lo, nu, scale, sv, s_rows, prefix)
        _run_scores4(dout_bh[i0 : i0 + GROUP], vtf, v_base, d_v, lo, nu, one, sv, dp_rows, prefix)
        for r in range(GROUP):
            i = i0 + r
            a = np.int64(indices[ptr[i] + prefix]) - lo
            n = ptr[i + 1] - ptr[i]
            gather_scores(
                q_bh[i],
                k_bg,
                dout_bh[i],
                v_bg,
                indices,
                ptr[i],
                prefix,
                scale,
                s_rows[r, a:],
                dp_rows[r, a:],
            )
            live[r] = row_grad(
                s_rows[r, a : a + n], dp_rows[r, a : a + n], fb_rows[r, a : a + n], n, softcap
            )
            if not live[r]:
                s_rows[r, a : a + n] = zero
                dp_rows[r, a : a + n] = zero
            p_head[ptr[i] - hb : ptr[i + 1] - hb] = s_rows[r, a : a + n]
            ds_head[ptr[i] - hb : ptr[i + 1] - hb] = dp_rows[r, a : a + n]
        w = dp_rows.reshape(GROUP * width)
        c0 = core_lo - lo + prefix
        _run_accumulate4(
            dq_bh[i0],
            dq_bh[i0 + 1],
            dq_bh[i0 + 2],
            dq_bh[i0 + 3],
            w,
            c0,
            width + c0,
            2 * width + c0,
            3 * width + c0,
            k_bg,
            core_lo,
            core_hi - core_lo,
        )
        for r in range(GROUP):
            i = i0 + r
            a = np.int64(indices[ptr[i] + prefix])
            z = a + ptr[i + 1] - ptr[i] - prefix
            left, right = min(z, core_lo), max(a, core_hi)  # outside the common range
            _run_accumulate(dq_bh[i], dp_rows[r], a - lo + prefix, k_bg, a, left - a)
            _run_accumulate(dq_bh[i], dp_rows[r], right - lo + prefix, k_bg, right, z - right)
            gather_accumulate(dq_bh[i], dp_rows[r, a - lo :], k_bg, indices, ptr[i], prefix)
    else:
        for r in range(rn):
            i = i0 + r
            start = ptr[i]
            n = ptr[i + 1] - start
            s, dp, fb = s_rows[0], dp_rows[0], fb_rows[0]
            gather_scores(q_bh[i], k_bg, dout_bh[i], v_bg, indices, start, n, scale, s, dp)
            live[r] = row_grad(s, dp, fb, n, softcap)
            if live[r]:
                gather_accumulate(dq_bh[i], dp, k_bg, indices, start, n)
            else:
                s[:n] = zero
                dp[:n] = zero
            p_head[start - hb : start - hb + n] = s[:n]
            ds_head[start - hb : start - hb + n] = dp[:n]


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def csr_backward_rows(
    q,
    k,
    v,
    dout,
    ktf,
    vtf,
    indptr,
    indices,
    scale,
    softcap,
    f0,
    f1,
    longest,
    band_min,
    workers,
    dq,
    p_scratch,
    ds_scratch,
    poisoned,
):  # type: ignore[no-untyped-def]
    """Row pass over the query heads ``f = b * H + h`` in ``[f0, f1)``: fills their ``dq`` and
    the scratch ``p_scratch[f - f0]``, ``ds_scratch[f - f0]``: ``p`` and ``ds`` of the entry at
    CSR position ``pos`` at ``pos - indptr[p, 0]`` (the head's own CSR order); ``poisoned[f - f0, i]`` tells
    whether row ``i`` gets no gradient but holds a non-finite value in ``q`` or ``dout``.

    One task per (head, ``BAND`` query rows): the band path (:mod:`._csr_band`) when the rows
    share a core of at least ``band_min`` keys, else groups of ``GROUP`` rows by the run or the
    gather path. Tasks are dealt to the ``workers`` threads cyclically. ``ktf``/``vtf`` are the
    flat :func:`tile_transpose` of k and v; ``longest``: the longest row."""
    B, H, n_q, d = q.shape
    H_kv, n_k = k.shape[1], k.shape[2]
    d_v = v.shape[3]
    group = H // H_kv
    per_head = indptr.shape[0] > 1
    ntile = (n_k + TILE - 1) // TILE
    nbands = (n_q + BAND - 1) // BAND
    width = 2 * longest + MAX_PREFIX  # the run path's row buffers (union run and a prefix)
    for worker in prange(workers):  # one iteration per thread; tasks dealt out cyclically
        sv = np.empty(GROUP * TILE, q.dtype)
        s_rows = np.empty((GROUP, width), q.dtype)
        dp_rows = np.empty((GROUP, width), q.dtype)
        fb_rows = np.empty((GROUP, width), q.dtype)
        live = np.empty(BAND, np.bool_)
        core_max = longest if longest >= band_min else 0
        core_buf = np.empty((5, max(longest, 3)), np.int64)  # a band's core, runs, stretches
        k_buf = np.empty((core_max, d), q.dtype)
        v_buf = np.empty((core_max, d_v), q.dtype)
        s_buf = np.empty(BAND * core_max, q.dtype)
        dp_buf = np.empty(BAND * core_max, q.dtype)
        row_s = np.empty(core_max, q.dtype)
        row_dp = np.empty(core_max, q.dtype)
        row_f = np.empty(core_max, q.dtype)
        for task in range(worker, (f1 - f0) * nbands, workers):
            f = f0 + task // nbands
            b = f // H
            h = f % H
            g = h // group
            i0 = (task % nbands) * BAND
            rn = min(BAND, n_q - i0)
            ptr = indptr[h if per_head else 0]
            hb = ptr[0]
            p_head = p_scratch[f - f0]
            ds_head = ds_scratch[f - f0]
            dq_bh = dq[b, h]
            # a band of BAND rows, else two of BAND // 2, else groups of GROUP
            kind, lo, hi = band_core(ptr, indices, i0, rn, band_min, core_buf)
            step = rn if kind else BAND // 2
            for s0 in range(0, rn, step):
                i1 = i0 + s0
                sn = min(step, rn - s0)
                if step != rn:
                    kind, lo, hi = band_core(ptr, indices, i1, sn, band_min, core_buf)
                if kind > 0:
                    band_rows(
                        kind,
                        lo,
                        hi,
                        q[b, h, i1 : i1 + sn],
                        dout[b, h, i1 : i1 + sn],
                        k[b, g],
                        v[b, g],
                        ptr,
                        indices,
                        hb,
                        i1,
                        scale,
                        softcap,
                        core_buf,
                        k_buf,
                        v_buf,
                        s_buf,
                        dp_buf,
                        row_s,
                        row_dp,
                        row_f,
                        dq_bh[i1 : i1 + sn],
                        p_head,
                        ds_head,
                        live[s0:],
                    )
                    continue
                for g0 in range(s0, s0 + sn, GROUP):
                    _group_rows(
                        q[b, h],
                        dout[b, h],
                        k[b, g],
                        v[b, g],
                        ktf,
                        vtf,
                        (b * H_kv + g) * ntile * d * TILE,
                        (b * H_kv + g) * ntile * d_v * TILE,
                        ptr,
                        indices,
                        hb,
                        i0 + g0,
                        min(GROUP, rn - g0),
                        scale,
                        softcap,
                        sv,
                        s_rows,
                        dp_rows,
                        fb_rows,
                        dq_bh,
                        p_head,
                        ds_head,
                        live[g0:],
                    )
            for r in range(rn):
                i = i0 + r
                dqi = dq_bh[i]
                if not live[r]:  # no keys: no gradient (the run path summed zeros)
                    dqi[:] = 0
                for c in range(d):
                    dqi[c] *= scale
                poisoned[f - f0, i] = not live[r] and not (
                    all_finite(q[b, h, i]) and all_finite(dout[b, h, i])
                )


@numba.njit(cache=True, fastmath=_FASTMATH)
def _group_columns(  # type: ignore[no-untyped-def]
    q_bh, g_bh, ptr, t_indices, perm, hb, j0, rn, p_head, ds_head, dk_g, dv_g
):
    """Column pass of the ``rn <= GROUP`` keys ``j0 ..`` for one query head (``q_bh``/``g_bh``
    its q and dout), by the run path or the gather path: adds to ``dk_g``/``dv_g`` (unscaled)."""
    prefix = 0  # a prefix shared by the keys' query lists (global rows) before their runs
    run, lo, hi, core_lo, core_hi = _runs(ptr, t_indices, j0, rn, 0)
    if not run:
        prefix = _common_prefix(ptr, t_indices, j0, rn)
        if prefix:
            run, lo, hi, core_lo, core_hi = _runs(ptr, t_indices, j0, rn, prefix)
    if run:
        # transposed position of (core_lo, j0): past the prefix, the column of j0 is a run
        t0 = ptr[j0] + prefix + core_lo - np.int64(t_indices[ptr[j0] + prefix])
        n = core_hi - core_lo
        _column_accumulate4(
            dv_g[j0],
            dv_g[j0 + 1],
            dv_g[j0 + 2],
            dv_g[j0 + 3],
            p_head,
            perm,
            t0,
            hb,
            g_bh,
            core_lo,
            n,
        )
        _column_accumulate4(
            dk_g[j0],
            dk_g[j0 + 1],
            dk_g[j0 + 2],
            dk_g[j0 + 3],
            ds_head,
            perm,
            t0,
            hb,
            q_bh,
            core_lo,
            n,
        )
        for r in range(GROUP):  # queries outside the common range, key by key
            j = j0 + r
            t_run = ptr[j] + prefix
            a = np.int64(t_indices[t_run])
            z = a + ptr[j + 1] - t_run
            left, right = min(z, core_lo), max(a, core_hi)
            t_right = t_run + right - a
            gather_accumulate_perm(dv_g[j], p_head, perm, hb, g_bh, t_indices, t_run, left - a)
            gather_accumulate_perm(dv_g[j], p_head, perm, hb, g_bh, t_indices, t_right, z - right)
            gather_accumulate_perm(dk_g[j], ds_head, perm, hb, q_bh, t_indices, t_run, left - a)
            gather_accumulate_perm(dk_g[j], ds_head, perm, hb, q_bh, t_indices, t_right, z - right)
            gather_accumulate_perm(dv_g[j], p_head, perm, hb, g_bh, t_indices, ptr[j], prefix)
            gather_accumulate_perm(dk_g[j], ds_head, perm, hb, q_bh, t_indices, ptr[j], prefix)
    else:
        for r in range(rn):
            j = j0 + r
            start = ptr[j]
            n = ptr[j + 1] - start
            gather_accumulate_perm(dv_g[j], p_head, perm, hb, g_bh, t_indices, start, n)
            gather_accumulate_perm(dk_g[j], ds_head, perm, hb, q_bh, t_indices, start, n)


@numba.njit(parallel=True, cache=True, fastmath=_FASTMATH)
def csr_backward_columns(
    q,
    dout,
    t_indptr,
    t_indices,
    perm,
    h_base,
    scale,
    f0,
    f1,
    longest,
    band_min,
    workers,
    p_scratch,
    ds_scratch,
    dk,
    dv,
):  # type: ignore[no-untyped-def]
    """Column pass for the query heads ``f = b * H + h`` in ``[f0, f1)``: adds their terms to
    ``dk``/``dv (B, H_kv, n_k, ·)`` with the weights of :func:`csr_backward_rows`, the weight of
    transposed position ``t`` of head pattern ``p`` at ``perm[t] - h_base[p]``.

    One task per (b, kv head, ``BAND`` keys), walking its query heads in increasing order; per
    head the band path when the keys share a core of at least ``band_min`` queries, else groups
    of ``GROUP`` keys. Tasks are dealt to the ``workers`` threads cyclically; ``longest``: the
    longest column. A kv head's rows are zeroed by the call holding its first query head and
    scaled by the one holding its last, so splitting the heads over calls leaves every sum's
    order unchanged."""
    B, H, n_q, d = q.shape
    H_kv, n_k = dk.shape[1], dk.shape[2]
    d_v = dv.shape[3]
    group = H // H_kv
    per_head = t_indptr.shape[0] > 1
    nbands = (n_k + BAND - 1) // BAND
    u0, u1 = f0 // group, (f1 - 1) // group + 1  # kv heads b * H_kv + g touched
    for worker in prange(workers):  # one iteration per thread; tasks dealt out cyclically
        core_max = longest if longest >= band_min else 0
        core_buf = np.empty((5, max(longest, 3)), np.int64)  # a band's core, runs, stretches
        wp_buf = np.empty(BAND * core_max, q.dtype)
        wd_buf = np.empty(BAND * core_max, q.dtype)
        q_buf = np.empty((core_max, d), q.dtype)
        g_buf = np.empty((core_max, d_v), q.dtype)
        for task in range(worker, (u1 - u0) * nbands, workers):
            unit = u0 + task // nbands
            b = unit // H_kv
            g = unit % H_kv
            j0 = (task % nbands) * BAND
            rn = min(BAND, n_k - j0)
            dk_g = dk[b, g]
            dv_g = dv[b, g]
            h_lo = max(g * group, f0 - b * H)
            h_hi = min((g + 1) * group, f1 - b * H)
            if h_lo == g * group:
                dk_g[j0 : j0 + rn] = 0
                dv_g[j0 : j0 + rn] = 0
            for h in range(h_lo, h_hi):
                ph = h if per_head else 0
                ptr = t_indptr[ph]
                p_head = p_scratch[b * H + h - f0]
                ds_head = ds_scratch[b * H + h - f0]
                kind, lo, hi = band_core(ptr, t_indices, j0, rn, band_min, core_buf)
                step = rn if kind else BAND // 2
                for s0 in range(0, rn, step):
                    j1 = j0 + s0
                    sn = min(step, rn - s0)
                    if step != rn:
                        kind, lo, hi = band_core(ptr, t_indices, j1, sn, band_min, core_buf)
                    if kind > 0:
                        band_columns(
                            kind,
                            lo,
                            hi,
                            q[b, h],
                            dout[b, h],
                            ptr,
                            t_indices,
                            perm,
                            h_base[ph],
                            j1,
                            p_head,
                            ds_head,
                            core_buf,
                            wp_buf,
                            wd_buf,
                            q_buf,
                            g_buf,
                            dk_g[j1 : j1 + sn],
                            dv_g[j1 : j1 + sn],
                        )
                        continue
                    for g0 in range(j1, j1 + sn, GROUP):
                        _group_columns(
                            q[b, h],
                            dout[b, h],
                            ptr,
                            t_indices,
                            perm,
                            h_base[ph],
                            g0,
                            min(GROUP, j0 + rn - g0),
                            p_head,
                            ds_head,
                            dk_g,
                            dv_g,
                        )
            if h_hi == (g + 1) * group:
                for r in range(rn):
                    dkj = dk_g[j0 + r]
                    for c in range(d):
                        dkj[c] *= scale


def _without_poisoned_rows(
    q: np.ndarray, dout: np.ndarray, poisoned: np.ndarray, f0: int
) -> tuple[np.ndarray, np.ndarray]:
    """``q``, ``dout`` for the column pass: unchanged, or, if rows without gradient hold
    non-finite values (``poisoned[f - f0, i]`` for query head ``f = b * H + h``), read-only copies
    with those rows zeroed, so that their weight 0 meets 0 rather than inf or NaN."""
    if not poisoned.any():
        return q, dout
    H = q.shape[1]
    f, i = np.nonzero(poisoned)
    b, h = (f + f0) // H, (f + f0) % H
    q, dout = q.copy(), dout.copy()
    q[b, h, i] = 0
    dout[b, h, i] = 0
    return _readonly(q), _readonly(dout)


def csr_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    dout: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    t_indptr: np.ndarray,
    t_indices: np.ndarray,
    perm: np.ndarray,
    scale: np.floating,
    softcap: np.floating,
    dq: np.ndarray,
    dk: np.ndarray,
    dv: np.ndarray,
) -> None:
    """Fill ``dq``, ``dk``, ``dv`` in place (shapes and rules in the module doc).

    ``t_indptr``, ``t_indices``, ``perm`` come from :func:`sparse_ref.metadata.transpose_csr`. The
    row pass and the column pass run over chunks of query heads whose scratch (``p`` and ``ds`` per entry, in the
    data dtype) fits :data:`SCRATCH_BYTES` (at least one head per chunk). Working memory besides
    the scratch: tiled transposes of k and v; all of it is borrowed from :mod:`._workspace` and
    kept for the next call.
    """
    B, H, n_q, _ = q.shape
    q, k, v, dout, indptr, indices, t_indptr, t_indices, perm = (
        _readonly(a) for a in (q, k, v, dout, indptr, indices, t_indptr, t_indices, perm)
    )
    h_base = _readonly(np.ascontiguousarray(indptr[:, 0]))
    stride = max(int((indptr[:, -1] - h_base).max(initial=0)), 1)  # the largest head's nnz
    longest = int(np.diff(indptr, axis=1).max(initial=0))
    longest_column = int(np.diff(t_indptr, axis=1).max(initial=0))
    band_min = max(1, BAND_MIN_CORE)
    workers = numba.get_num_threads()
    dtype = q.dtype
    heads = max(1, min(B * H, SCRATCH_BYTES // (2 * stride * dtype.itemsize)))
    tiled_k = (k.shape[0], k.shape[1], (k.shape[2] + TILE - 1) // TILE, k.shape[3], TILE)
    tiled_v = tiled_k[:3] + (v.shape[3], TILE)
    shapes = [(heads, stride), (heads, stride), tiled_k, tiled_v]
    poisoned = np.empty((heads, n_q), dtype=np.bool_)
    buffer = _workspace.borrow(_workspace.nbytes_for(shapes, dtype))
    try:
        p_scratch, ds_scratch, ktf, vtf = _workspace.carve(buffer, shapes, dtype)
        tile_transpose(k, ktf)
        tile_transpose(v, vtf)
        ktf, vtf = _readonly(ktf.reshape(-1)), _readonly(vtf.reshape(-1))
        with single_threaded_blas():  # the band path's GEMMs run in the kernels' threads
            for f0 in range(0, B * H, heads):
                f1 = min(f0 + heads, B * H)
                csr_backward_rows(
                    q,
                    k,
                    v,
                    dout,
                    ktf,
                    vtf,
                    indptr,
                    indices,
                    scale,
                    softcap,
                    f0,
                    f1,
                    longest,
                    band_min,
                    workers,
                    dq,
                    p_scratch,
                    ds_scratch,
                    poisoned,
                )
                q_c, dout_c = _without_poisoned_rows(q, dout, poisoned[: f1 - f0], f0)
                csr_backward_columns(
                    q_c,
                    dout_c,
                    t_indptr,
                    t_indices,
                    perm,
                    h_base,
                    scale,
                    f0,
                    f1,
                    longest_column,
                    band_min,
                    workers,
                    p_scratch,
                    ds_scratch,
                    dk,
                    dv,
                )
    finally:
        _workspace.give_back(buffer)
    if B * H == 0:  # no query heads: nothing reaches k and v
        dk[...] = 0
        dv[...] = 0
