"""Fused online-softmax attention forward over a CSR pattern (Numba, CPU), never forming ``n x n``.

Row ``i`` of head ``h`` attends exactly the keys ``indices[indptr[p, i]:indptr[p, i + 1]]``
(``p = h`` when ``indptr`` holds one pattern per head, else ``0``); a masked key is never touched.
The result is the FlashAttention running state per row, updated one *chunk* of keys at a time:
for a chunk with scores ``s``: ``m' = max(m, max s)``, ``alpha = exp(m - m')``,
``p = exp(s - m')``, ``l = alpha * l + sum p``, ``acc = alpha * acc + p @ V``; at the end
``out = acc / l`` and ``lse = m + log(l)``.

Schedule. A cheap pass over ``indices`` decides, for the whole call, between two schedules; one
parallel task is ``BLOCK`` consecutive query rows of one ``(batch, head)`` in both.

* **Tiled** (rows are mostly runs of consecutive keys, mean run >= 4: sliding windows, causal,
  local, block and BigBird-like patterns): a chunk is the part of a row's keys that falls in one key
  tile ``[t * TILE, (t + 1) * TILE)``. The task walks the key tiles that its rows touch in
  ascending order, so a tile's K and V rows are loaded once and reused by all ``BLOCK`` rows from
  cache. Inside a tile the rows go in groups of ``GROUP``. *Joint path*: when the group's chunks
  are all runs and overlap enough, the scores of their union are one small product
  ``S = Q_g @ K_tile^T`` vectorised over keys (K is transposed tile by tile once per call, ``kb``)
  with the ``GROUP`` rows blocked in registers, and ``P @ V`` runs over the keys common to all the
  rows, rows blocked in registers again; keys of only some of the rows are added row by row, so a
  masked key's V row is never multiplied by zero. Otherwise the *single path*: per row, dot
  products over ``d`` through ``indices``, four keys at a time, then ``P @ V`` eight at a time.
* **Row by row** (scattered keys): each row on its own, ``TILE`` entries per chunk, single path.

Special values follow the exact float64 oracle: a row with no keys, or whose scores are all
``-inf``, gives ``out = 0`` and ``lse = -inf``; a NaN score makes the whole row NaN (it reaches
``l`` through ``exp``; the all-``-inf`` case checks for it explicitly); ``+inf`` scores give NaN as
``exp(inf - inf)`` does in the reference formula; infinite or NaN V rows of allowed keys propagate
through ``p * v`` (also when ``p == 0``), V rows of masked keys never do.

Numerics: float32 inputs compute and accumulate in float32, float64 in float64 (one jitted
function, specialised by Numba per dtype); ``exp`` is :func:`._exp.fast_exp` (vectorisable, about
1 ulp). ``fastmath`` is ``reassoc``/``contract``/``arcp`` for the reductions that must vectorise
(dot products over ``d``, ``sum p``) and ``contract`` alone elsewhere, so that the ``P @ V`` sums
keep the tree order written in the code (each chunk's ``p @ V`` is summed apart and then added
to ``alpha * acc``); never ``nnan``/``ninf``. Accuracy is that of a naive float32 (float64)
computation: DESIGN §9's rule holds, see ``tests/test_kernels_csr_forward.py``.

Memory: besides ``out`` and ``lse``, a transposed copy of ``k`` on the tiled schedule (its size,
rounded up to whole tiles) and a few kilobytes per task; nothing of size ``n_q x n_k``.

Determinism: every output row is computed by exactly one thread, and its sequence of floating-point
operations depends only on the pattern and the shapes (the schedule, the tile grid, the row groups
and the choice of path are fixed by them), so results are bitwise identical for any number of
threads and across runs.

The kernel trusts its inputs (validated in ``api.py`` and by the ``Pattern`` constructors):
C-contiguous arrays of one float dtype, ``indptr`` int64 of shape ``(P, n_q + 1)`` with ``P`` 1 or
``H``, ``indices`` int32 or int64, strictly ascending within a row (canonical CSR) and in
``[0, n_k)``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._exp import fast_exp

__all__ = ["csr_forward", "TILE", "GROUP", "BLOCK"]

# Reductions that must vectorise (dot products over d, sums of p) are compiled with reassociation,
# in functions of their own; everything else, in particular the P @ V sums whose order is written
# out as trees, with FMA contraction only (reassociation would re-chain the trees into one long
# accumulation and lose accuracy). Never nnan/ninf: -inf and NaN keep IEEE semantics.
_FASTMATH = {"reassoc", "contract", "arcp"}
_ORDERED = {"contract"}

#: Width of a key tile: a row's keys are processed one tile at a time (one online-softmax step per
#: tile), and the tile's K and V rows stay in cache while a block of rows uses them.
TILE = 128
#: Query rows blocked in registers on the joint path.
GROUP = 4
#: Query rows per parallel task (a multiple of ``GROUP``).
BLOCK = 32


@intrinsic
def _order_key(typingctx, x):  # type: ignore[no-untyped-def]
    """The float's bits as a signed integer that sorts like the float (a vectorisable max).

    ``-inf < finite < +inf``; NaNs land beyond ``+inf`` or below ``-inf`` by their sign bit, which
    is harmless here: a NaN score makes ``l`` NaN through ``exp`` whatever the max is.
    """
    if x == types.float32:
        ity, width = types.int32, 32
    elif x == types.float64:
        ity, width = types.int64, 64
    else:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        lt = ir.IntType(width)
        bits = builder.bitcast(args[0], lt)
        flip = builder.and_(
            builder.ashr(bits, ir.Constant(lt, width - 1)), ir.Constant(lt, (1 << (width - 1)) - 1)
        )
        return builder.xor(bits, flip)

    return ity(x), codegen


@intrinsic
def _from_order_key(typingctx, key):  # type: ignore[no-untyped-def]
    """Inverse of :func:`_order_key`."""
    if key == types.int32:
        fty, lft, width = types.float32, ir.FloatType(), 32
    elif key == types.int64:
        fty, lft, width = types.float64, ir.DoubleType(), 64
    else:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        lt = ir.IntType(width)
        flip = builder.and_(
            builder.ashr(args[0], ir.Constant(lt, width - 1)),
            ir.Constant(lt, (1 << (width - 1)) - 1),
        )
        return builder.bitcast(builder.xor(args[0], flip), lft)

    return fty(key), codegen


@numba.njit(fastmath=_FASTMATH, cache=True)
def _softmax_step(srow, scale, softcap, st, rr):  # type: ignore[no-untyped-def]
    """One online-softmax step of row ``rr`` on a chunk of raw scores ``q . k`` (turned into ``p``).

    ``st[rr]`` is the running ``[m, l, bad]`` of the row (``bad``: a NaN score met while every
    other score was ``-inf``); ``m`` and ``l`` are updated here. Returns ``alpha = exp(m - m')``,
    the factor for the row's accumulator (``acc = alpha * acc + p @ V``).
    """
    n = srow.shape[0]
    zero = srow.dtype.type(0.0)
    one = srow.dtype.type(1.0)
    ninf = srow.dtype.type(-np.inf)
    sc = scale
    if softcap != zero:
        for j in range(n):
            srow[j] = softcap * math.tanh((srow[j] * scale) / softcap)
        sc = one
    # max over the chunk on integer keys: a float max reduction only vectorises under nnan
    km = _order_key(ninf)
    for j in range(n):
        kj = _order_key(srow[j] * sc)
        km = kj if kj > km else km
    cm = _from_order_key(km)  # NaN only if a score is NaN: then l becomes NaN through exp
    m = st[rr, 0]
    alpha = one
    if cm > m:
        alpha = fast_exp(m - cm)  # m = -inf: 0 (acc and l are 0, or NaN from 0 * inf)
        m = cm
        st[rr, 0] = m
    if m == ninf:
        # every score so far is -inf: p = 0 (0 * v still carries NaN from an infinite v, as in the
        # reference); a NaN score here would not reach l, so look for it
        for j in range(n):
            if srow[j] != srow[j]:
                st[rr, 2] = one
            srow[j] = zero
        st[rr, 1] *= alpha
    else:
        ls = zero
        for j in range(n):
            e = fast_exp(srow[j] * sc - m)
            srow[j] = e
            ls += e
        st[rr, 1] = st[rr, 1] * alpha + ls
    return alpha


@numba.njit(fastmath=_ORDERED, cache=True, inline="always")
def _combine(acc_row, alpha, tacc_row):  # type: ignore[no-untyped-def]
    """``acc = alpha * acc + tacc`` (the chunk's ``p @ V`` was summed apart: shorter sums)."""
    for c in range(acc_row.shape[0]):
        acc_row[c] = alpha * acc_row[c] + tacc_row[c]
        tacc_row[c] = 0.0


@numba.njit(fastmath=_ORDERED, cache=True, inline="always")
def _pv_run(acc_row, prow, vrun):  # type: ignore[no-untyped-def]
    """``acc_row += prow @ vrun`` over consecutive V rows, eight keys at a time."""
    n = prow.shape[0]
    dv = acc_row.shape[0]
    n8 = n - n % 8
    for j in range(0, n8, 8):
        p0 = prow[j]
        p1 = prow[j + 1]
        p2 = prow[j + 2]
        p3 = prow[j + 3]
        p4 = prow[j + 4]
        p5 = prow[j + 5]
        p6 = prow[j + 6]
        p7 = prow[j + 7]
        v0 = vrun[j]
        v1 = vrun[j + 1]
        v2 = vrun[j + 2]
        v3 = vrun[j + 3]
        v4 = vrun[j + 4]
        v5 = vrun[j + 5]
        v6 = vrun[j + 6]
        v7 = vrun[j + 7]
        for c in range(dv):
            acc_row[c] += ((p0 * v0[c] + p1 * v1[c]) + (p2 * v2[c] + p3 * v3[c])) + (
                (p4 * v4[c] + p5 * v5[c]) + (p6 * v6[c] + p7 * v7[c])
            )
    for j in range(n8, n):
        pj = prow[j]
        vj = vrun[j]
        for c in range(dv):
            acc_row[c] += pj * vj[c]


@numba.njit(fastmath=_ORDERED, cache=True, inline="always")
def _pv_idx(acc_row, prow, vmat, idx):  # type: ignore[no-untyped-def]
    """``acc_row += prow @ vmat[idx]``, eight keys at a time."""
    n = idx.shape[0]
    dv = acc_row.shape[0]
    n8 = n - n % 8
    for j in range(0, n8, 8):
        p0 = prow[j]
        p1 = prow[j + 1]
        p2 = prow[j + 2]
        p3 = prow[j + 3]
        p4 = prow[j + 4]
        p5 = prow[j + 5]
        p6 = prow[j + 6]
        p7 = prow[j + 7]
        v0 = vmat[idx[j]]
        v1 = vmat[idx[j + 1]]
        v2 = vmat[idx[j + 2]]
        v3 = vmat[idx[j + 3]]
        v4 = vmat[idx[j + 4]]
        v5 = vmat[idx[j + 5]]
        v6 = vmat[idx[j + 6]]
        v7 = vmat[idx[j + 7]]
        for c in range(dv):
            acc_row[c] += ((p0 * v0[c] + p1 * v1[c]) + (p2 * v2[c] + p3 * v3[c])) + (
                (p4 * v4[c] + p5 * v5[c]) + (p6 * v6[c] + p7 * v7[c])
            )
    for j in range(n8, n):
        pj = prow[j]
        vj = vmat[idx[j]]
        for c in range(dv):
            acc_row[c] += pj * vj[c]


@numba.njit(fastmath=_FASTMATH, cache=True)
def _scores_idx(qi, kmat, idx, srow):  # type: ignore[no-untyped-def]
    """``srow[j] = qi . kmat[idx[j]]`` for any sorted chunk ``idx``, four keys at a time.

    The dot products are reductions over ``d``: compiled with ``reassoc`` so they vectorise.
    """
    n = idx.shape[0]
    d = qi.shape[0]
    zero = srow.dtype.type(0.0)
    n4 = n - n % 4
    for j in range(0, n4, 4):
        k0 = kmat[idx[j]]
        k1 = kmat[idx[j + 1]]
        k2 = kmat[idx[j + 2]]
        k3 = kmat[idx[j + 3]]
        x0 = zero
        x1 = zero
        x2 = zero
        x3 = zero
        for c in range(d):
            qc = qi[c]
            x0 += qc * k0[c]
            x1 += qc * k1[c]
            x2 += qc * k2[c]
            x3 += qc * k3[c]
        srow[j] = x0
        srow[j + 1] = x1
        srow[j + 2] = x2
        srow[j + 3] = x3
    for j in range(n4, n):
        k0 = kmat[idx[j]]
        x0 = zero
        for c in range(d):
            x0 += qi[c] * k0[c]
        srow[j] = x0


@numba.njit(fastmath=_ORDERED, cache=True, inline="always")
def _scores_joint(q4, kbf, kbase, nu, sv):  # type: ignore[no-untyped-def]
    """``sv[r * TILE + j] = q4[r] . K[j]`` for the ``GROUP = 4`` rows of ``q4`` and ``nu`` keys.

    The tile's padding keys (past ``n_k``) are zeros: reading them is harmless.

    ``kbf[kbase + c * TILE + j]`` is component ``c`` of key ``j`` (the transposed tile), so the
    inner loop runs over keys with unit stride and the four rows reuse each loaded K vector.
    Flat arrays with constant offsets let LLVM vectorise without per-row alias checks.
    """
    d = q4.shape[1]
    quad_end = d - d % 4  # components [0, quad_end) go four at a time
    zero = sv.dtype.type(0.0)
    for j in range(nu):
        sv[j] = zero
        sv[TILE + j] = zero
        sv[2 * TILE + j] = zero
        sv[3 * TILE + j] = zero
    for c in range(0, quad_end, 4):
        q00 = q4[0, c]
        q01 = q4[0, c + 1]
        q02 = q4[0, c + 2]
        q03 = q4[0, c + 3]
        q10 = q4[1, c]
        q11 = q4[1, c + 1]
        q12 = q4[1, c + 2]
        q13 = q4[1, c + 3]
        q20 = q4[2, c]
        q21 = q4[2, c + 1]
        q22 = q4[2, c + 2]
        q23 = q4[2, c + 3]
        q30 = q4[3, c]
        q31 = q4[3, c + 1]
        q32 = q4[3, c + 2]
        q33 = q4[3, c + 3]
        kv = kbf[kbase + c * TILE :]
        for j in range(nu):
            x0 = kv[j]
            x1 = kv[TILE + j]
            x2 = kv[2 * TILE + j]
            x3 = kv[3 * TILE + j]
            sv[j] += q00 * x0 + q01 * x1 + q02 * x2 + q03 * x3
            sv[TILE + j] += q10 * x0 + q11 * x1 + q12 * x2 + q13 * x3
            sv[2 * TILE + j] += q20 * x0 + q21 * x1 + q22 * x2 + q23 * x3
            sv[3 * TILE + j] += q30 * x0 + q31 * x1 + q32 * x2 + q33 * x3
    for c in range(quad_end, d):
        q00 = q4[0, c]
        q10 = q4[1, c]
        q20 = q4[2, c]
        q30 = q4[3, c]
        kv = kbf[kbase + c * TILE :]
        for j in range(nu):
            x0 = kv[j]
            sv[j] += q00 * x0
            sv[TILE + j] += q10 * x0
            sv[2 * TILE + j] += q20 * x0
            sv[3 * TILE + j] += q30 * x0


@numba.njit(fastmath=_ORDERED, cache=True, inline="always")
def _pv_joint(pv, vv, n, a0, a1, a2, a3):  # type: ignore[no-untyped-def]
    """``a_r += pv[r * TILE : r * TILE + n] @ vv[:n]`` for the four rows, four keys at a time."""
    dv = a0.shape[0]
    n4 = n - n % 4
    for j in range(0, n4, 4):
        p00 = pv[j]
        p01 = pv[j + 1]
        p02 = pv[j + 2]
        p03 = pv[j + 3]
        p10 = pv[TILE + j]
        p11 = pv[TILE + j + 1]
        p12 = pv[TILE + j + 2]
        p13 = pv[TILE + j + 3]
        p20 = pv[2 * TILE + j]
        p21 = pv[2 * TILE + j + 1]
        p22 = pv[2 * TILE + j + 2]
        p23 = pv[2 * TILE + j + 3]
        p30 = pv[3 * TILE + j]
        p31 = pv[3 * TILE + j + 1]
        p32 = pv[3 * TILE + j + 2]
        p33 = pv[3 * TILE + j + 3]
        v0 = vv[j]
        v1 = vv[j + 1]
        v2 = vv[j + 2]
        v3 = vv[j + 3]
        for c in range(dv):
            x0 = v0[c]
            x1 = v1[c]
            x2 = v2[c]
            x3 = v3[c]
            a0[c] += p00 * x0 + p01 * x1 + p02 * x2 + p03 * x3
            a1[c] += p10 * x0 + p11 * x1 + p12 * x2 + p13 * x3
            a2[c] += p20 * x0 + p21 * x1 + p22 * x2 + p23 * x3
            a3[c] += p30 * x0 + p31 * x1 + p32 * x2 + p33 * x3
    for j in range(n4, n):
        p00 = pv[j]
        p10 = pv[TILE + j]
        p20 = pv[2 * TILE + j]
        p30 = pv[3 * TILE + j]
        v0 = vv[j]
        for c in range(dv):
            x0 = v0[c]
            a0[c] += p00 * x0
            a1[c] += p10 * x0
            a2[c] += p20 * x0
            a3[c] += p30 * x0


@numba.njit(parallel=True, fastmath=_ORDERED, cache=True)
def _csr_forward(q, k, v, indptr, indices, scale, softcap, workers, out, lse):  # type: ignore[no-untyped-def]
    """:func:`csr_forward` on ``workers`` threads (``numba.get_num_threads()``, passed in: reading
    it inside would make the function uncacheable)."""
    B, H, nq, d = q.shape
    Hkv = k.shape[1]
    nk = k.shape[2]
    dv = v.shape[3]
    grp = H // Hkv
    P = indptr.shape[0]
    dt = q.dtype.type
    scale = dt(scale)
    softcap = dt(softcap)
    zero = dt(0.0)
    ninf = dt(-np.inf)
    nan = dt(np.nan)
    big = np.int64(1) << 62
    ntile = (nk + TILE - 1) // TILE

    # Is the block-tiled schedule worth it? It pays when rows are mostly runs of consecutive keys
    # (mean run >= 4) and there are enough of them to amortise transposing K.
    nnz = 0
    cont = 0
    for pi in prange(P * nq):
        pp = pi // nq
        i = pi - pp * nq
        e_lo = indptr[pp, i]
        e_hi = indptr[pp, i + 1]
        nnz += e_hi - e_lo
        for e in range(e_lo + 1, e_hi):
            if np.int64(indices[e]) == np.int64(indices[e - 1]) + 1:
                cont += 1
    tiled = nnz > 0 and 4 * cont >= 3 * nnz and 4 * nnz >= P * nk

    # K transposed tile by tile: kb[b, hk, t, c, j] = k[b, hk, t * TILE + j, c] (zero padded).
    nkb = ntile if tiled else 0
    kb = np.empty((B, Hkv, nkb, d, TILE), q.dtype)
    for task in prange(B * Hkv * nkb):
        bh = task // nkb
        t = task - bh * nkb
        b = bh // Hkv
        hk = bh - b * Hkv
        tile = kb[b, hk, t]
        nj = min(TILE, nk - t * TILE)
        krows = k[b, hk, t * TILE : t * TILE + nj]
        for c in range(d):
            trow = tile[c]
            for j in range(nj):
                trow[j] = krows[j, c]
            for j in range(nj, TILE):
                trow[j] = zero
    kbf = kb.reshape(kb.size)

    nblk = (nq + BLOCK - 1) // BLOCK
    for worker in prange(workers):  # one iteration per thread; row blocks dealt out cyclically
        for task in range(worker, B * H * nblk, workers):
            bh = task // nblk
            blk = task - bh * nblk
            b = bh // H
            h = bh - b * H
            hk = h // grp
            p = h if P > 1 else 0
            kmat = k[b, hk]
            vmat = v[b, hk]
            i0 = blk * BLOCK
            rn = min(BLOCK, nq - i0)
            sbuf = np.empty(GROUP * TILE, q.dtype)
            acc = np.zeros((rn, dv), q.dtype)
            tacc = np.zeros((GROUP, dv), q.dtype)  # p @ V of the current chunk, per row of a group
            alpha = np.empty(GROUP, q.dtype)
            st = np.zeros((rn, 3), q.dtype)  # running [m, l, bad] per row
            cur = np.empty(rn, np.int64)  # next entry of each row
            end = np.empty(rn, np.int64)
            cut = np.empty(rn, np.int64)  # end of each row's chunk in the current tile
            for r in range(rn):
                st[r, 0] = ninf
                cur[r] = indptr[p, i0 + r]
                end[r] = indptr[p, i0 + r + 1]
            if not tiled:
                # scattered keys: row by row, TILE entries per online-softmax step
                for rr in range(rn):
                    for e0 in range(cur[rr], end[rr], TILE):
                        idx = indices[e0 : min(e0 + TILE, end[rr])]
                        srow = sbuf[: idx.shape[0]]
                        _scores_idx(q[b, h, i0 + rr], kmat, idx, srow)
                        a_r = _softmax_step(srow, scale, softcap, st, rr)
                        _pv_idx(tacc[0], srow, vmat, idx)
                        _combine(acc[rr], a_r, tacc[0])
                    cur[rr] = end[rr]
            while tiled:
                # the next key tile that any row of the block touches
                t = big
                for r in range(rn):
                    if cur[r] < end[r]:
                        t = min(t, np.int64(indices[cur[r]]) // TILE)
                if t == big:
                    break
                jlo = t * TILE
                jhi = jlo + TILE
                for r in range(rn):
                    e0 = cur[r]
                    ee = end[r]
                    if e0 >= ee or indices[e0] >= jhi:
                        cut[r] = e0
                        continue
                    # strictly ascending: at most jhi - indices[e0] entries fall in this tile
                    e1 = min(ee, e0 + (jhi - np.int64(indices[e0])))
                    if indices[e1 - 1] >= jhi:
                        lo = e0  # indices[lo] < jhi <= indices[e1]
                        e1 -= 1
                        while e1 - lo > 1:
                            mid = (lo + e1) >> 1
                            if indices[mid] < jhi:
                                lo = mid
                            else:
                                e1 = mid
                    cut[r] = e1
                for g0 in range(0, rn, GROUP):
                    gn = min(GROUP, rn - g0)
                    # joint path if the GROUP chunks are non-empty runs covering at least half of
                    # their union
                    joint = gn == GROUP
                    ulo = big
                    uhi = -big
                    core_lo = -big
                    core_hi = big
                    tot = 0
                    for r in range(g0, g0 + gn):
                        n_r = cut[r] - cur[r]
                        if n_r <= 0:
                            joint = False
                            continue
                        a = np.int64(indices[cur[r]]) - jlo
                        z = np.int64(indices[cut[r] - 1]) - jlo + 1
                        if z - a != n_r:
                            joint = False
                        ulo = min(ulo, a)
                        uhi = max(uhi, z)
                        core_lo = max(core_lo, a)
                        core_hi = min(core_hi, z)
                        tot += n_r
                    if tot == 0:
                        continue
                    if joint and 2 * tot >= GROUP * (uhi - ulo):
                        # scores over the union, widened to whole SIMD widths inside the tile (the
                        # extra scores are never read)
                        slo = ulo - ulo % 8
                        shi = min(TILE, uhi + (-uhi) % 8)
                        _scores_joint(
                            q[b, h, i0 + g0 : i0 + g0 + GROUP],
                            kbf,
                            ((b * Hkv + hk) * ntile + t) * d * TILE + slo,
                            shi - slo,
                            sbuf[slo:],
                        )
                        for r in range(GROUP):
                            rr = g0 + r
                            a = np.int64(indices[cur[rr]]) - jlo
                            n_r = cut[rr] - cur[rr]
                            alpha[r] = _softmax_step(
                                sbuf[r * TILE + a : r * TILE + a + n_r], scale, softcap, st, rr
                            )
                        if core_hi < core_lo:
                            core_hi = core_lo
                        _pv_joint(
                            sbuf[core_lo:],
                            vmat[jlo + core_lo :],
                            core_hi - core_lo,
                            tacc[0],
                            tacc[1],
                            tacc[2],
                            tacc[3],
                        )
                        # keys of only some of the rows: row by row
                        for r in range(GROUP):
                            rr = g0 + r
                            a = np.int64(indices[cur[rr]]) - jlo
                            z = a + (cut[rr] - cur[rr])
                            hi1 = min(z, core_lo)
                            if hi1 > a:
                                _pv_run(
                                    tacc[r],
                                    sbuf[r * TILE + a : r * TILE + hi1],
                                    vmat[jlo + a : jlo + hi1],
                                )
                            lo2 = max(a, core_hi)
                            if z > lo2:
                                _pv_run(
                                    tacc[r],
                                    sbuf[r * TILE + lo2 : r * TILE + z],
                                    vmat[jlo + lo2 : jlo + z],
                                )
                            _combine(acc[rr], alpha[r], tacc[r])
                            cur[rr] = cut[rr]
                    else:
                        # any sorted chunks: row by row, through the indices
                        for rr in range(g0, g0 + gn):
                            n_r = cut[rr] - cur[rr]
                            if n_r > 0:
                                idx = indices[cur[rr] : cut[rr]]
                                srow = sbuf[:n_r]
                                _scores_idx(q[b, h, i0 + rr], kmat, idx, srow)
                                a_r = _softmax_step(srow, scale, softcap, st, rr)
                                _pv_idx(tacc[0], srow, vmat, idx)
                                _combine(acc[rr], a_r, tacc[0])
                                cur[rr] = cut[rr]
            for r in range(rn):
                i = i0 + r
                m = st[r, 0]
                if st[r, 2] != zero:
                    for c in range(dv):
                        out[b, h, i, c] = nan
                    lse[b, h, i] = nan
                elif m == ninf:
                    for c in range(dv):
                        out[b, h, i, c] = zero
                    lse[b, h, i] = ninf
                else:
                    denom = st[r, 1]
                    for c in range(dv):
                        out[b, h, i, c] = acc[r, c] / denom
                    lse[b, h, i] = m + math.log(denom)


def csr_forward(q, k, v, indptr, indices, scale, softcap, out, lse):  # type: ignore[no-untyped-def]
    """Sparse attention forward over a CSR pattern; writes ``out`` and ``lse`` in place.

    Args:
        q: ``(B, H, n_q, d)`` C-contiguous float32 or float64.
        k: ``(B, H_kv, n_k, d)``, v: ``(B, H_kv, n_k, d_v)``, q's dtype, C-contiguous;
            ``H % H_kv == 0`` and query head ``h`` uses kv head ``h // (H // H_kv)``.
        indptr: ``(P, n_q + 1)`` int64, ``P == 1`` (one pattern for all heads) or ``P == H``;
            absolute offsets into ``indices``.
        indices: ``(nnz,)`` int32 or int64, strictly ascending within each row, in ``[0, n_k)``.
        scale: scalar of q's dtype; scores are ``scale * (q_i . k_j)``.
        softcap: scalar of q's dtype; ``0`` means none, else ``s = softcap * tanh(s / softcap)``.
        out: ``(B, H, n_q, d_v)`` q's dtype, written fully (rows without keys are 0).
        lse: ``(B, H, n_q)`` q's dtype, natural-log logsumexp over the allowed keys (``-inf`` for
            rows without keys).

    Row blocks are dealt to the threads cyclically (block ``t`` to thread ``t mod T``): under
    Numba's OpenMP layer a ``prange`` gives each thread one contiguous range, which on causal
    patterns (later rows cost more) left one thread with most of the work. Which thread computes a
    row block never changes its result.

    Example:
        >>> import numpy as np
        >>> q = k = v = np.ones((1, 1, 2, 4), np.float32)
        >>> indptr = np.array([[0, 1, 3]]); indices = np.array([0, 0, 1], np.int32)
        >>> out = np.empty_like(q); lse = np.empty((1, 1, 2), np.float32)
        >>> csr_forward(q, k, v, indptr, indices, np.float32(0.5), np.float32(0), out, lse)
        >>> out[0, 0, :, 0].tolist(), lse[0, 0].astype(float).round(4).tolist()
        ([1.0, 1.0], [2.0, 2.6931])
    """
    _csr_forward(q, k, v, indptr, indices, scale, softcap, numba.get_num_threads(), out, lse)
