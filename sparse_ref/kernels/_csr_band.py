"""The band path of the token-CSR backward (:mod:`.csr_backward`): BLAS on rows that share keys.

A *band* is ``BAND`` (or ``BAND // 2``) consecutive rows of one head's pattern (query rows in the
row pass, key columns of the transposed pattern in the column pass) that share a **core**: the
indices present in every row of the band. The rest of a row are its *edges*. A band qualifies
when the core has at least ``min_core`` indices and the edges hold at most a quarter as many
entries as the core's rectangle (``rows x core``). Two kinds, recognised from the pattern alone
(:func:`band_core`):

* kind 1, *one run*: every row is one run of consecutive indices (windows, causal, local
  patterns; and their transposes); the core is the intersection ``[lo, hi)`` of the runs, and a
  row is ``left edge + core + right edge`` (for a window, a triangle of at most ``BAND - 1``
  entries per row).
* kind 2, *common indices*: any other rows (BigBird and block patterns held as token CSR, where
  the rows of a block are identical; windows beside global keys or attention sinks; vertical
  plus slash lines); the core is the sorted list of indices in every row, found by intersecting
  the rows as lists of runs, and core and edge entries may interleave in a row. A run of
  consecutive core indices is a stretch of every row (the rows are sorted and hold each core
  index once), so the rows are walked stretch by stretch (:func:`core_runs`).

On the core the row pass is three GEMMs over the ``(rows, core)`` rectangle
(``S = scale Q K^T``, ``dP = dout V^T``, ``dq = dS K``) and the column pass two (``dv += P^T
dout``, ``dk += dS^T q`` over the core queries, with ``P`` and ``dS`` gathered from the
CSR-ordered scratch: for each core query the weights of the band's keys are adjacent). The core's
rows of k and v (q and dout) are used in place for a kind 1 core and gathered into a buffer for
kind 2. The edges take the gather path (:mod:`._csr_parts`). Every product is over entries of
the pattern only, as on the other paths. Each band's GEMM shapes and its sums depend only on the
pattern and the shapes, and BLAS runs single-threaded (:mod:`._blas`), so the results stay
bitwise reproducible for any thread count.

Why: the row pass of the other paths keeps ``GROUP = 4`` rows in registers and streams the rows'
keys through the core once per group; on rows of thousands of keys (causal window 4096) that is
about three megabytes read from L3 per four rows, and rows of several runs took the gather path
(dot products through the index array). A band reads the core once per ``BAND`` rows, and BLAS
does the products at GEMM speed, faster with 64 rows than with 32 (OpenBLAS here, float32,
``(rows, 64) @ (64, 4096)``: 81 against 60 GFLOP/s on one core).
"""

from __future__ import annotations

import numba
import numpy as np

from ._blas import gemm
from ._csr_parts import (
    gather_accumulate,
    gather_accumulate_perm,
    gather_scores,
    row_grad,
    run_bounds,
)

__all__ = ["BAND", "band_core", "core_runs", "band_rows", "band_columns"]

_FASTMATH = {"reassoc", "contract", "arcp"}

#: Rows (keys) per band: one row task (column task) of the backward.
BAND = 64


@numba.njit(cache=True)
def band_core(ptr, idx, r0, rn, min_core, core_buf):  # type: ignore[no-untyped-def]
    """``(kind, lo, hi)`` of rows ``r0 .. r0 + rn - 1`` of a CSR (``ptr`` one head's indptr,
    ``idx`` its indices): kind 0 (not a band), 1 (one-run rows, core ``[lo, hi)``) or 2 (core =
    the indices common to all the rows, written to ``core_buf[0, :hi]``; ``lo`` is 0); see the
    module doc. ``core_buf`` is ``(2, L)`` int64 with ``L >= 2`` and ``L >=`` the first row's
    length (work space for the runs of the rows, of which at most ``L // 2`` are followed)."""
    one_run, _, _, lo, hi, total = run_bounds(ptr, idx, r0, rn, 0)  # an empty row: not one run
    if one_run:
        core = hi - lo
        if core >= min_core and 4 * (total - rn * core) <= rn * core:
            return 1, lo, hi
        return 0, 0, 0  # the intersection below would be the same range
    # kind 2: intersect the rows as lists of runs [a, z) (pairs, alternating between the two rows
    # of core_buf), then expand the common runs into core_buf[0]
    cap = core_buf.shape[1] // 2
    src = 0
    runs = _row_runs(idx, ptr[r0], ptr[r0 + 1], core_buf[0], cap)
    for r in range(1, rn):
        if runs < 0:
            break
        runs = _intersect_runs(
            core_buf[src], runs, idx, ptr[r0 + r], ptr[r0 + r + 1], core_buf[1 - src], cap
        )
        src = 1 - src
    if runs < 0:  # rows of runs shorter than 2 on average: no band
        return 0, 0, 0
    core = 0
    for x in range(runs):
        core += core_buf[src, 2 * x + 1] - core_buf[src, 2 * x]
    if core < min_core or 4 * (total - rn * core) > rn * core:
        return 0, 0, 0
    if src == 0:
        core_buf[1, : 2 * runs] = core_buf[0, : 2 * runs]
    u = 0
    for x in range(runs):
        for j in range(core_buf[1, 2 * x], core_buf[1, 2 * x + 1]):
            core_buf[0, u] = j
            u += 1
    return 2, 0, core


@numba.njit(cache=True)
def _run_end(idx, e, end):  # type: ignore[no-untyped-def]
    """End (exclusive) of the run of consecutive indices starting at position ``e``: indices
    strictly increase, so ``idx[p] - idx[e] == p - e`` holds exactly up to the run's end (binary
    search)."""
    a = e
    b = end - 1
    while a < b:
        mid = (a + b + 1) >> 1
        if np.int64(idx[mid]) - np.int64(idx[e]) == mid - e:
            a = mid
        else:
            b = mid - 1
    return a + 1


@numba.njit(cache=True)
def _row_runs(idx, start, end, out, cap):  # type: ignore[no-untyped-def]
    """The row ``idx[start:end]`` as runs ``[a, z)`` of indices, ``out[2x], out[2x + 1]``;
    returns their number, or -1 past ``cap`` runs."""
    runs = 0
    e = start
    while e < end:
        if runs == cap:
            return -1
        f = _run_end(idx, e, end)
        out[2 * runs] = idx[e]
        out[2 * runs + 1] = np.int64(idx[f - 1]) + 1
        runs += 1
        e = f
    return runs


@numba.njit(cache=True)
def _intersect_runs(runs_in, runs, idx, start, end, out, cap):  # type: ignore[no-untyped-def]
    """The ``runs`` pairs of ``runs_in`` intersected with the row ``idx[start:end]``, as pairs in
    ``out``; returns their number, or -1 past ``cap``."""
    kept = 0
    e = start
    for x in range(runs):
        a, z = runs_in[2 * x], runs_in[2 * x + 1]
        while e < end:
            f = _run_end(idx, e, end)
            lo = max(a, np.int64(idx[e]))
            hi = min(z, np.int64(idx[f - 1]) + 1)
            if lo < hi:
                if kept == cap:
                    return -1
                out[2 * kept] = lo
                out[2 * kept + 1] = hi
                kept += 1
            if np.int64(idx[f - 1]) + 1 >= z:  # the row's run reaches past [a, z): keep it
                break
            e = f
    return kept


@numba.njit(cache=True)
def _gather_rows(src, idx, start, n, out):  # type: ignore[no-untyped-def]
    """``out[u] = src[idx[start + u]]`` for ``u < n``; returns ``out[:n]``."""
    for u in range(n):  # loops: a slice assignment per row costs more than the copy
        row = src[idx[start + u]]
        dst = out[u]
        for c in range(row.shape[0]):
            dst[c] = row[c]
    return out[:n]


@numba.njit(cache=True)
def core_runs(core_idx, run_end):  # type: ignore[no-untyped-def]
    """``run_end[c]``: the end (exclusive) of the run of consecutive indices holding
    ``core_idx[c]``."""
    size = core_idx.shape[0]
    c = size - 1
    while c >= 0:
        run_end[c] = (
            c + 1 if c == size - 1 or core_idx[c + 1] != core_idx[c] + 1 else run_end[c + 1]
        )
        c -= 1


@numba.njit(cache=True)
def _stretches(indices, start, n, core_idx, run_end, out):  # type: ignore[no-untyped-def]
    """The row of ``n`` entries at ``start`` as stretches that are all core entries or all edge
    entries: ``out[0, x]``, ``out[1, x]``, ``out[2, x]`` = first entry, length, position in the
    core (-1 for edges); returns their number. The row holds every core index, sorted and once,
    so a run of consecutive core indices (to ``run_end``) is one stretch, and an edge stretch ends
    where the next core index appears."""
    size = core_idx.shape[0]
    e = 0
    c = 0
    x = 0
    while e < n:
        if c < size and indices[start + e] == core_idx[c]:
            length = run_end[c] - c
            out[2, x] = c
            c += length
        else:
            length = 1
            while e + length < n and not (c < size and indices[start + e + length] == core_idx[c]):
                length += 1
            out[2, x] = -1
        out[0, x] = e
        out[1, x] = length
        x += 1
        e += length
    return x


@numba.njit(cache=True, inline="always")
def _row_stretches(first, indices, start, n, core_idx, run_end, core, out):  # type: ignore[no-untyped-def]
    """:func:`_stretches` of a row of the band, for a range core from key ``first`` (kind 1: left
    edge, core, right edge; some may be empty) or a listed core (``first = -1``, kind 2)."""
    if first < 0:
        return _stretches(indices, start, n, core_idx, run_end, out)
    left = first - np.int64(indices[start])
    out[0, 0], out[1, 0], out[2, 0] = 0, left, -1
    out[0, 1], out[1, 1], out[2, 1] = left, core, 0
    out[0, 2], out[1, 2], out[2, 2] = left + core, n - left - core, -1
    return 3


@numba.njit(cache=True, fastmath=_FASTMATH)
def _core_row_pass(kc, vc, core_idx, run_end, first, rows, bufs, outs):  # type: ignore[no-untyped-def]
    """:func:`band_rows` once the core's keys are ``kc (C, d)``, ``vc (C, d_v)``: a range starting
    at key ``first`` (kind 1: each row is left edge, core, right edge) or, with ``first = -1``,
    the sorted keys ``core_idx`` with their :func:`core_runs` ``run_end`` (kind 2: core and edge
    entries interleave in a row). ``rows``, ``bufs``, ``outs``: :func:`band_rows`'s arguments."""
    q_rows, dout_rows, k_bh, v_bh, ptr, indices, hb, i0, scale, softcap = rows
    s_buf, dp_buf, row_s, row_dp, row_f, st = bufs
    dq_rows, p_head, ds_head, live = outs
    rn = q_rows.shape[0]
    core = kc.shape[0]
    zero = q_rows.dtype.type(0)
    one = q_rows.dtype.type(1)
    s_core = s_buf[: rn * core].reshape((rn, core))
    ds_core = dp_buf[: rn * core].reshape((rn, core))
    gemm(q_rows, False, kc, True, s_core, scale, zero)
    gemm(dout_rows, False, vc, True, ds_core, one, zero)
    for r in range(rn):
        start = ptr[i0 + r]
        n = ptr[i0 + r + 1] - start
        if n == core:  # no edges: the row is its core's row, in place
            s = s_core[r]
            dp = ds_core[r]
        else:
            s = row_s[:n]
            dp = row_dp[:n]
            for x in range(_row_stretches(first, indices, start, n, core_idx, run_end, core, st)):
                e, length, c = st[0, x], st[1, x], st[2, x]
                if c >= 0:
                    s[e : e + length] = s_core[r, c : c + length]
                    dp[e : e + length] = ds_core[r, c : c + length]
                elif length:
                    qr, gr = q_rows[r], dout_rows[r]
                    gather_scores(
                        qr, k_bh, gr, v_bh, indices, start + e, length, scale, s[e:], dp[e:]
                    )
        live[r] = row_grad(s, dp, row_f, n, softcap)
        if not live[r]:
            s[:] = zero
            dp[:] = zero
        p_head[start - hb : start - hb + n] = s
        ds_head[start - hb : start - hb + n] = dp
        if n != core:
            for x in range(_row_stretches(first, indices, start, n, core_idx, run_end, core, st)):
                e, length, c = st[0, x], st[1, x], st[2, x]
                if c >= 0:
                    ds_core[r, c : c + length] = dp[e : e + length]
    gemm(ds_core, False, kc, False, dq_rows, one, zero)
    for r in range(rn):
        start = ptr[i0 + r]
        n = ptr[i0 + r + 1] - start
        for x in range(_row_stretches(first, indices, start, n, core_idx, run_end, core, st)):
            e, length, c = st[0, x], st[1, x], st[2, x]
            if c < 0 and length:
                w = ds_head[start + e - hb :]
                gather_accumulate(dq_rows[r], w, k_bh, indices, start + e, length)


@numba.njit(cache=True, fastmath=_FASTMATH)
def band_rows(  # type: ignore[no-untyped-def]
    kind,
    lo,
    hi,
    q_rows,
    dout_rows,
    k_bh,
    v_bh,
    ptr,
    indices,
    hb,
    i0,
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
    dq_rows,
    p_head,
    ds_head,
    live,
):
    """Row pass of one band, rows ``i0 .. i0 + rn - 1`` of a head (``q_rows``/``dout_rows``/
    ``dq_rows`` their ``(rn, ·)`` slices, ``(kind, lo, hi)`` from :func:`band_core`, which wrote a
    kind 2 core to ``core_buf[0]``; ``core_buf[1]`` takes its :func:`core_runs` and
    ``core_buf[2:5]`` a row's :func:`_stretches`; ``(5, L)`` with ``L >= 3`` and ``L >=`` the
    longest row): writes ``dq_rows`` *unscaled* and without
    zeroing dead rows, ``p``/``ds`` of the rows into the scratch ``p_head``/``ds_head`` at
    ``pos - hb``, and ``live[r]`` (False: the row gets no gradient).

    Work buffers: ``k_buf (≥ core, d)``, ``v_buf (≥ core, d_v)``, ``s_buf``/``dp_buf``
    (``≥ rn * core``), ``row_s``/``row_dp``/``row_f`` (``≥`` the longest row)."""
    rows = (q_rows, dout_rows, k_bh, v_bh, ptr, indices, hb, i0, scale, softcap)
    bufs = (s_buf, dp_buf, row_s, row_dp, row_f, core_buf[2:])
    outs = (dq_rows, p_head, ds_head, live)
    if kind == 1:  # read-only views of k and v and writable buffers are different Numba types
        empty = core_buf[0, :0]
        _core_row_pass(k_bh[lo:hi], v_bh[lo:hi], empty, empty, lo, rows, bufs, outs)
    else:
        core_idx, run_end = core_buf[0, :hi], core_buf[1, :hi]
        core_runs(core_idx, run_end)
        kc = _gather_rows(k_bh, core_idx, 0, hi, k_buf)
        vc = _gather_rows(v_bh, core_idx, 0, hi, v_buf)
        _core_row_pass(kc, vc, core_idx, run_end, np.int64(-1), rows, bufs, outs)


@numba.njit(cache=True, fastmath=_FASTMATH)
def _core_column_pass(qc, gc, w_p, w_ds, dk_rows, dv_rows):  # type: ignore[no-untyped-def]
    """``dv_rows += w_p^T gc`` and ``dk_rows += w_ds^T qc`` (unscaled) over the core queries."""
    one = qc.dtype.type(1)
    gemm(w_p, True, gc, False, dv_rows, one, one)
    gemm(w_ds, True, qc, False, dk_rows, one, one)


@numba.njit(cache=True, fastmath=_FASTMATH)
def _gather_weights(p_head, ds_head, perm, hb, t, w_p, w_ds, u):  # type: ignore[no-untyped-def]
    """Row ``u`` of ``w_p``/``w_ds``: the weights of the band's keys for the query at transposed
    position ``t`` of the band's first key (adjacent in the query's CSR row)."""
    pos = perm[t] - hb
    for r in range(w_p.shape[1]):  # loops: a slice assignment per query cost more than the GEMMs
        w_p[u, r] = p_head[pos + r]
        w_ds[u, r] = ds_head[pos + r]


@numba.njit(cache=True, fastmath=_FASTMATH)
def band_columns(  # type: ignore[no-untyped-def]
    kind,
    lo,
    hi,
    q_bh,
    g_bh,
    t_ptr,
    t_indices,
    perm,
    hb,
    j0,
    p_head,
    ds_head,
    core_buf,
    wp_buf,
    wd_buf,
    q_buf,
    g_buf,
    dk_rows,
    dv_rows,
):
    """Column pass of one band for one query head: adds the head's terms to keys
    ``j0 .. j0 + rn - 1`` (``dk_rows``/``dv_rows`` their ``(rn, ·)`` slices; ``dk`` unscaled).
    ``q_bh``/``g_bh`` are the head's q and dout ``(n_q, ·)``; ``t_ptr``, ``t_indices`` its
    transposed pattern; the weight at transposed position ``t`` is at ``perm[t] - hb`` in
    ``p_head``/``ds_head``; ``(kind, lo, hi)`` and ``core_buf`` as in :func:`band_rows`. Work
    buffers: ``wp_buf``/``wd_buf`` (``≥ rn * core``), ``q_buf``/``g_buf`` (``≥ core`` rows)."""
    rn = dk_rows.shape[0]
    first = t_ptr[j0]
    core = hi - lo
    w_p = wp_buf[: core * rn].reshape((core, rn))
    w_ds = wd_buf[: core * rn].reshape((core, rn))
    core_idx, run_end, st = core_buf[0, :core], core_buf[1, :core], core_buf[2:]
    if kind == 1:
        t0 = first + lo - np.int64(t_indices[first])
        for u in range(core):
            _gather_weights(p_head, ds_head, perm, hb, t0 + u, w_p, w_ds, u)
        _core_column_pass(q_bh[lo:hi], g_bh[lo:hi], w_p, w_ds, dk_rows, dv_rows)
    else:
        core_runs(core_idx, run_end)
        for x in range(_stretches(t_indices, first, t_ptr[j0 + 1] - first, core_idx, run_end, st)):
            e, length, c = st[0, x], st[1, x], st[2, x]
            for y in range(length if c >= 0 else 0):  # the core queries in the first key's column
                _gather_weights(p_head, ds_head, perm, hb, first + e + y, w_p, w_ds, c + y)
        qc = _gather_rows(q_bh, core_idx, 0, core, q_buf)
        gc = _gather_rows(g_bh, core_idx, 0, core, g_buf)
        _core_column_pass(qc, gc, w_p, w_ds, dk_rows, dv_rows)
    for r in range(rn):  # queries outside the core, key by key
        j = j0 + r
        start = t_ptr[j]
        n = t_ptr[j + 1] - start
        if n == core:
            continue
        if kind == 2:
            for x in range(_stretches(t_indices, start, n, core_idx, run_end, st)):
                e, length, c = st[0, x], st[1, x], st[2, x]
                if c < 0:
                    t = start + e
                    gather_accumulate_perm(dv_rows[r], p_head, perm, hb, g_bh, t_indices, t, length)
                    gather_accumulate_perm(
                        dk_rows[r], ds_head, perm, hb, q_bh, t_indices, t, length
                    )
            continue
        left = lo - np.int64(t_indices[start])
        after = start + left + core
        tail = start + n - after
        gather_accumulate_perm(dv_rows[r], p_head, perm, hb, g_bh, t_indices, start, left)
        gather_accumulate_perm(dv_rows[r], p_head, perm, hb, g_bh, t_indices, after, tail)
        gather_accumulate_perm(dk_rows[r], ds_head, perm, hb, q_bh, t_indices, start, left)
        gather_accumulate_perm(dk_rows[r], ds_head, perm, hb, q_bh, t_indices, after, tail)
