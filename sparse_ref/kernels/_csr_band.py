"""The band path of the token-CSR backward (:mod:`.csr_backward`): BLAS on rows that share keys.

A *band* is ``BAND`` consecutive rows of one head's pattern (query rows in the row pass, key
columns of the transposed pattern in the column pass) that share a **core**: a list of indices
present in every row of the band, each row's entries being ``left edge + core + right edge``
(indices below, in and above the core). Two shapes are recognised, from the pattern alone
(:func:`band_core`):

* kind 1, *one run*: every row is one run of consecutive indices (windows, causal, local
  patterns; and their transposes); the core is the intersection ``[lo, hi)`` of the runs and
  the edges are what sticks out of it (for a window, a triangle of at most ``BAND - 1`` entries
  per row). The band qualifies when the core has at least ``min_core`` indices and the edges hold
  at most a quarter as many entries as the core's rectangle.
* kind 2, *identical rows*: the rows hold the same indices, in several runs (BigBird, block
  sparse and strided patterns held as token CSR): the core is the whole row, no edges.

On the core the row pass is three GEMMs over a ``(rows, core)`` rectangle (``S = scale Q K^T``,
``dP = dout V^T``, ``dq = dS K``) and the column pass two (``dv += P^T dout``, ``dk += dS^T q``
over the core queries, with ``P`` and ``dS`` gathered from the CSR-ordered scratch: for each core
query the ``BAND`` weights of the band's keys are adjacent); the core's rows of k and v (q and
dout) are used in place for a kind 1 core and gathered into a buffer for kind 2. The edges take the
gather path (:mod:`._csr_parts`). Every product is over entries of the pattern only, as on the
other paths. Each band's GEMM shapes and its sums depend only on the pattern and the shapes, and
BLAS runs single-threaded (:mod:`._blas`), so the results stay bitwise reproducible for any
thread count.

Why: the row pass of the other paths keeps ``GROUP = 4`` rows in registers and streams the rows'
keys through the core once per group; on rows of thousands of keys (causal window 4096) that is
about three megabytes read from L3 per four rows, and the column pass reads each scratch weight
from its own cache line. A band reads them once per ``BAND`` rows (keys), and BLAS does the
products at GEMM speed.
"""

from __future__ import annotations

import numba
import numpy as np

from ._blas import gemm
from ._csr_parts import gather_accumulate, gather_accumulate_perm, gather_scores, row_grad

__all__ = ["BAND", "band_core", "band_rows", "band_columns"]

_FASTMATH = {"reassoc", "contract", "arcp"}

#: Rows (keys) per band: one row task (column task) of the backward.
BAND = 64

_BIG = np.int64(1) << 62


@numba.njit(cache=True)
def band_core(ptr, idx, r0, rn, min_core):  # type: ignore[no-untyped-def]
    """``(kind, lo, hi)`` of rows ``r0 .. r0 + rn - 1`` of a CSR (``ptr`` one head's indptr,
    ``idx`` its indices): kind 0 (not a band), 1 (core ``[lo, hi)`` of one-run rows) or 2
    (identical rows; ``hi`` is their length, ``lo`` is 0); see the module doc."""
    one_run = True
    lo = -_BIG
    hi = _BIG
    total = 0
    for r in range(rn):
        start = ptr[r0 + r]
        n = ptr[r0 + r + 1] - start
        if n == 0:
            return 0, 0, 0
        a = np.int64(idx[start])
        z = np.int64(idx[start + n - 1]) + 1
        one_run = one_run and z - a == n
        lo = max(lo, a)
        hi = min(hi, z)
        total += n
    if one_run:
        core = hi - lo
        if core >= min_core and 4 * (total - rn * core) <= rn * core:
            return 1, lo, hi
        return 0, 0, 0
    start0 = ptr[r0]
    n0 = ptr[r0 + 1] - start0
    if n0 < min_core:
        return 0, 0, 0
    for r in range(1, rn):
        start = ptr[r0 + r]
        if ptr[r0 + r + 1] - start != n0:
            return 0, 0, 0
        for u in range(n0):
            if idx[start + u] != idx[start0 + u]:
                return 0, 0, 0
    return 2, 0, n0


@numba.njit(cache=True)
def _gather_rows(src, idx, start, n, out):  # type: ignore[no-untyped-def]
    """``out[u] = src[idx[start + u]]`` for ``u < n``; returns ``out[:n]``."""
    for u in range(n):  # loops: a slice assignment per row costs more than the copy
        row = src[idx[start + u]]
        dst = out[u]
        for c in range(row.shape[0]):
            dst[c] = row[c]
    return out[:n]


@numba.njit(cache=True, fastmath=_FASTMATH)
def _core_row_pass(  # type: ignore[no-untyped-def]
    kc,
    vc,
    q_rows,
    dout_rows,
    k_bh,
    v_bh,
    ptr,
    indices,
    hb,
    i0,
    first,
    scale,
    softcap,
    s_buf,
    dp_buf,
    row_s,
    row_dp,
    row_f,
    dq_rows,
    p_f,
    ds_f,
    live,
):
    """:func:`band_rows` once the core's keys are ``kc (C, d)``, ``vc (C, d_v)``; ``first`` is the
    core's first key (kind 1) or -1 (kind 2: the whole row is the core)."""
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
        left = first - np.int64(indices[start]) if first >= 0 else 0
        if n == core:  # no edges: the row is its core's row, in place
            s = s_core[r]
            dp = ds_core[r]
        else:
            s = row_s[:n]
            dp = row_dp[:n]
            s[left : left + core] = s_core[r]
            dp[left : left + core] = ds_core[r]
            for e0, e1 in ((0, left), (left + core, n)):
                gather_scores(
                    q_rows[r],
                    k_bh,
                    dout_rows[r],
                    v_bh,
                    indices,
                    start + e0,
                    e1 - e0,
                    scale,
                    s[e0:],
                    dp[e0:],
                )
        live[r] = row_grad(s, dp, row_f, n, softcap)
        if not live[r]:
            s[:] = zero
            dp[:] = zero
        p_f[start - hb : start - hb + n] = s
        ds_f[start - hb : start - hb + n] = dp
        if n != core:
            ds_core[r] = dp[left : left + core]
    gemm(ds_core, False, kc, False, dq_rows, one, zero)
    for r in range(rn):
        start = ptr[i0 + r]
        n = ptr[i0 + r + 1] - start
        left = first - np.int64(indices[start]) if first >= 0 else 0
        after = start + left + core
        gather_accumulate(dq_rows[r], ds_f[start - hb :], k_bh, indices, start, left)
        gather_accumulate(dq_rows[r], ds_f[after - hb :], k_bh, indices, after, start + n - after)


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
    k_buf,
    v_buf,
    s_buf,
    dp_buf,
    row_s,
    row_dp,
    row_f,
    dq_rows,
    p_f,
    ds_f,
    live,
):
    """Row pass of one band, rows ``i0 .. i0 + rn - 1`` of a head (``q_rows``/``dout_rows``/
    ``dq_rows`` their ``(rn, ·)`` slices, ``(kind, lo, hi)`` from :func:`band_core`): writes
    ``dq_rows`` *unscaled* and without zeroing dead rows, ``p``/``ds`` of the rows into the
    scratch ``p_f``/``ds_f`` at ``pos - hb``, and ``live[r]`` (False: the row gets no gradient).

    Work buffers: ``k_buf (≥ core, d)``, ``v_buf (≥ core, d_v)``, ``s_buf``/``dp_buf``
    (``≥ rn * core``), ``row_s``/``row_dp``/``row_f`` (``≥`` the longest row)."""
    if kind == 1:
        _core_row_pass(
            k_bh[lo:hi],
            v_bh[lo:hi],
            q_rows,
            dout_rows,
            k_bh,
            v_bh,
            ptr,
            indices,
            hb,
            i0,
            lo,
            scale,
            softcap,
            s_buf,
            dp_buf,
            row_s,
            row_dp,
            row_f,
            dq_rows,
            p_f,
            ds_f,
            live,
        )
    else:
        _core_row_pass(
            _gather_rows(k_bh, indices, ptr[i0], hi, k_buf),
            _gather_rows(v_bh, indices, ptr[i0], hi, v_buf),
            q_rows,
            dout_rows,
            k_bh,
            v_bh,
            ptr,
            indices,
            hb,
            i0,
            np.int64(-1),
            scale,
            softcap,
            s_buf,
            dp_buf,
            row_s,
            row_dp,
            row_f,
            dq_rows,
            p_f,
            ds_f,
            live,
        )


@numba.njit(cache=True, fastmath=_FASTMATH)
def _core_column_pass(qc, gc, w_p, w_ds, dk_rows, dv_rows):  # type: ignore[no-untyped-def]
    """``dv_rows += w_p^T gc`` and ``dk_rows += w_ds^T qc`` (unscaled) over the core queries."""
    one = qc.dtype.type(1)
    gemm(w_p, True, gc, False, dv_rows, one, one)
    gemm(w_ds, True, qc, False, dk_rows, one, one)


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
    p_f,
    ds_f,
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
    ``p_f``/``ds_f``. Work buffers: ``wp_buf``/``wd_buf`` (``≥ core * rn``), ``q_buf``/``g_buf``
    (``≥ core`` rows)."""
    rn = dk_rows.shape[0]
    first = t_ptr[j0]
    t0 = first + lo - np.int64(t_indices[first]) if kind == 1 else first
    core = hi - lo
    w_p = wp_buf[: core * rn].reshape((core, rn))
    w_ds = wd_buf[: core * rn].reshape((core, rn))
    for u in range(core):  # the band's keys are adjacent in the CSR row of every core query
        pos = perm[t0 + u] - hb
        for r in range(rn):  # (a slice assignment here cost more than the GEMMs)
            w_p[u, r] = p_f[pos + r]
            w_ds[u, r] = ds_f[pos + r]
    if kind == 1:
        _core_column_pass(q_bh[lo:hi], g_bh[lo:hi], w_p, w_ds, dk_rows, dv_rows)
    else:
        qc = _gather_rows(q_bh, t_indices, t0, core, q_buf)
        gc = _gather_rows(g_bh, t_indices, t0, core, g_buf)
        _core_column_pass(qc, gc, w_p, w_ds, dk_rows, dv_rows)
        return
    for r in range(rn):  # queries outside the core, key by key
        j = j0 + r
        start = t_ptr[j]
        n = t_ptr[j + 1] - start
        left = lo - np.int64(t_indices[start])
        after = start + left + core
        tail = start + n - after
        gather_accumulate_perm(dv_rows[r], p_f, perm, hb, g_bh, t_indices, start, left)
        gather_accumulate_perm(dv_rows[r], p_f, perm, hb, g_bh, t_indices, after, tail)
        gather_accumulate_perm(dk_rows[r], ds_f, perm, hb, q_bh, t_indices, start, left)
        gather_accumulate_perm(dk_rows[r], ds_f, perm, hb, q_bh, t_indices, after, tail)
