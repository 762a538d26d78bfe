"""Fused online-softmax forward over block rows of a block-sparse pattern (Numba, CPU).

One task is one ``(batch, head, block row)``: ``bq`` query rows walk the stored key blocks of their
block row in storage order (ascending key block) and keep the FlashAttention running state per
row: max ``m``, sum ``l`` and the unnormalised output ``acc``. The unit of work is a *key tile*:
one stored block, or a run of adjacent stored blocks up to ``TILE_KEYS`` keys (a sliding window of
4096 is 4 tiles of 1024 keys per block row instead of 33 blocks). Per tile:

1. ``S^T = K_tile @ Q_blk^T`` as one dense product (``nc x nr``; BLAS ``gemm`` through ``np.dot``,
   or plain loops for tiny tiles), so the softmax below runs along contiguous query rows and needs
   no horizontal reductions;
2. ``s = scale * S`` in the compute dtype, then ``softcap * tanh(s / softcap)`` if softcap > 0; in
   each partial block of the tile, keys outside the block mask become ``-inf`` (excluded); a full
   block has no mask test at all;
3. running max, ``p = exp(s - m_new)`` (a vectorisable exp, :mod:`._exp`), ``l = alpha * l + sum p``
   (the sum in chunks of 32 keys, so a long row keeps the accuracy of a pairwise sum);
4. ``acc = alpha * acc + P @ V_tile`` (BLAS again). When a partial block's V rows hold a NaN or an
   infinity the product skips masked keys one by one (``0 * inf`` would be NaN where the oracle,
   which excludes masked keys, has none).

At the end ``out = acc / l`` and ``lse = m + log(l)``; a row with ``l == 0`` (no keys, or only
``-inf`` scores) gives ``out = 0`` and ``lse = -inf``. NaN scores propagate through ``p``.

Determinism: a block row is computed by one thread, its tiles fixed by the pattern alone, and BLAS
runs single-threaded (:mod:`._blas`) on operands whose shapes depend only on the pattern, so
results are bitwise identical for any number of threads and across runs. ``fastmath`` uses only
``reassoc``/``contract``/``arcp`` (never ``nnan``/``ninf``): ``-inf`` and NaN keep IEEE semantics.
Float32 inputs compute and accumulate in float32, float64 in float64 (one jitted function,
specialised by Numba per dtype).

Argument conventions match :mod:`.csr_forward`; ``softcap = 0`` means no softcap. The kernel
trusts its inputs (validated in ``api.py`` and by the ``Pattern``/``BlockSparse`` constructors).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from ._blas import single_threaded_blas
from ._exp import fast_exp

__all__ = ["bsr_forward", "BLAS_MIN_TILE", "TILE_KEYS"]

_FASTMATH = {"reassoc", "contract", "arcp"}
_SUM_CHUNK = 32

#: Tiles with ``bq * bk * d`` below this use plain loops instead of a BLAS call per block (the call
#: overhead dominates tiny tiles).
BLAS_MIN_TILE = 16 * 16 * 64

#: Adjacent stored blocks of a block row are processed as one key tile of up to this many keys
#: (one pair of larger GEMMs and one online-softmax update instead of one per block). Measured on
#: the causal window 4096 (blocks of 128): 72 GFLOP/s per core for one block per tile, 80 at 1024.
#: (Gathering non-adjacent blocks into one tile was slower: the copy costs more than it saves.)
TILE_KEYS = 1024


@numba.njit(fastmath=_FASTMATH, cache=True)
def _scores_loops(kb, qb, alpha, st):  # type: ignore[no-untyped-def]
    """``st[c, r] = alpha * kb[c] . qb[r]`` with the reduction over d innermost (plain loops for
    tiles too small for BLAS; the backward uses it too)."""
    nc, d = kb.shape
    nr = qb.shape[0]
    for c in range(nc):
        for r in range(nr):
            s = st.dtype.type(0.0)
            for t in range(d):
                s += kb[c, t] * qb[r, t]
            st[c, r] = s * alpha


@numba.njit(fastmath=_FASTMATH, cache=True)
def _pv_loops(pt, vb, tmp):  # type: ignore[no-untyped-def]
    """``tmp[r] = sum_c pt[c, r] * vb[c]``."""
    nc, nr = pt.shape
    tmp[:nr] = 0
    for c in range(nc):
        for r in range(nr):
            p = pt[c, r]
            for e in range(vb.shape[1]):
                tmp[r, e] += p * vb[c, e]


@numba.njit(fastmath=_FASTMATH, cache=True)
def _scale_mask_max(st, scale, softcap, masks_t, mi, m_new):  # type: ignore[no-untyped-def]
    """``st *= scale`` (then softcap), masked keys ``-inf``, ``m_new[r] = max(m_new[r], st[:, r])``.

    A full block (``mi < 0``) runs a loop without any mask test. The max ignores NaN (a NaN score
    still poisons the row through ``exp``).
    """
    nc, nr = st.shape
    neg_inf = st.dtype.type(-np.inf)
    if softcap > 0:
        for c in range(nc):
            for r in range(nr):
                st[c, r] = softcap * math.tanh(st[c, r] * scale / softcap)
    if mi >= 0:
        for c in range(nc):
            for r in range(nr):
                s = st[c, r] if softcap > 0 else st[c, r] * scale
                if not masks_t[mi, c, r]:
                    s = neg_inf
                st[c, r] = s
                if s > m_new[r]:
                    m_new[r] = s
    else:
        for c in range(nc):
            for r in range(nr):
                s = st[c, r] if softcap > 0 else st[c, r] * scale
                st[c, r] = s
                if s > m_new[r]:
                    m_new[r] = s


@numba.njit(fastmath=_FASTMATH, cache=True)
def _exp_sum(st, m_use, l_run, part):  # type: ignore[no-untyped-def]
    """``st = exp(st - m_use[r])`` in place and ``l_run[r] += sum over keys``.

    The sum goes through partial sums of ``_SUM_CHUNK`` keys: a float32 running sum over thousands
    of keys loses ~sqrt(n) ulps, more than the tolerance rule allows for lse (NumPy's pairwise sum
    in the naive reference loses ~log n).
    """
    nc, nr = st.shape
    for c0 in range(0, nc, _SUM_CHUNK):
        part[:] = 0
        for c in range(c0, min(c0 + _SUM_CHUNK, nc)):
            for r in range(nr):
                e = fast_exp(st[c, r] - m_use[r])
                st[c, r] = e
                part[r] += e
        for r in range(nr):
            l_run[r] += part[r]


@numba.njit(fastmath=_FASTMATH, cache=True)
def _finite(x):  # type: ignore[no-untyped-def]
    ok = True
    for c in range(x.shape[0]):
        for e in range(x.shape[1]):
            ok &= math.isfinite(x[c, e])
    return ok


@numba.njit(fastmath=_FASTMATH, cache=True)
def _pv_add_masked(pt, vb, masks_t, mi, tmp):  # type: ignore[no-untyped-def]
    """``tmp[r] += sum over allowed c of pt[c, r] * vb[c]``: masked keys never touch ``vb``."""
    nc, nr = pt.shape
    for c in range(nc):
        for r in range(nr):
            if mi < 0 or masks_t[mi, c, r]:
                p = pt[c, r]
                for e in range(vb.shape[1]):
                    tmp[r, e] += p * vb[c, e]


@numba.njit(fastmath=_FASTMATH, cache=True)
def _group_end(indices, idx, end, bk, max_keys):  # type: ignore[no-untyped-def]
    """Blocks ``idx:g`` form one key tile: adjacent key blocks, up to ``max_keys`` keys."""
    g = idx + 1
    while g < end and (g - idx + 1) * bk <= max_keys and indices[g] == indices[g - 1] + 1:
        g += 1
    return g


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _bsr_forward(
    q,
    k,
    v,
    indptr,
    indices,
    mask_index,
    masks_t,
    bq,
    bk,
    scale,
    softcap,
    use_blas,
    max_keys,
    workers,
    out,
    lse,
):  # type: ignore[no-untyped-def]
    B, H, n_q, d = q.shape
    H_kv, n_k, dv = v.shape[1], v.shape[2], v.shape[3]
    P, nbq = indptr.shape[0], indptr.shape[1] - 1
    group = H // H_kv
    dt = q.dtype.type
    neg_inf = dt(-np.inf)
    zero = dt(0.0)
    tile_keys = max(max_keys, bk)
    for worker in prange(workers):  # one iteration per thread; block rows dealt out cyclically
        for task in range(worker, B * H * nbq, workers):
            b = task // (H * nbq)
            h = (task // nbq) % H
            bi = task % nbq
            hk = h // group
            p = h if P > 1 else 0
            r0 = bi * bq
            nr = min(bq, n_q - r0)
            qb = q[b, h, r0 : r0 + nr]
            st_buf = np.empty(
                tile_keys * bq, dtype=q.dtype
            )  # score tile, transposed: (keys, queries)
            acc = np.zeros((nr, dv), dtype=q.dtype)
            tmp = np.empty((nr, dv), dtype=q.dtype)
            m_run = np.full(nr, neg_inf, dtype=q.dtype)
            m_new = np.empty(nr, dtype=q.dtype)
            m_use = np.empty(nr, dtype=q.dtype)
            alpha = np.empty(nr, dtype=q.dtype)
            l_run = np.zeros(nr, dtype=q.dtype)
            l_tile = np.empty(nr, dtype=q.dtype)
            part = np.empty(nr, dtype=q.dtype)
            idx, end = indptr[p, bi], indptr[p, bi + 1]
            while idx < end:
                # one key tile: the adjacent stored blocks idx..g-1, keys c0..c0+nc
                g = _group_end(indices, idx, end, bk, tile_keys)
                c0 = indices[idx] * bk
                nc = min(indices[g - 1] * bk + bk, n_k) - c0
                kg = k[b, hk, c0 : c0 + nc]
                vg = v[b, hk, c0 : c0 + nc]
                st = st_buf[: nc * nr].reshape((nc, nr))
                if use_blas:
                    np.dot(kg, qb.T, st)
                else:
                    _scores_loops(kg, qb, dt(1.0), st)  # times 1: exact
                m_new[:] = m_run
                exact = True
                off = 0
                for j in range(idx, g):
                    w = min(bk, n_k - indices[j] * bk)
                    mi = mask_index[j]
                    _scale_mask_max(st[off : off + w], scale, softcap, masks_t, mi, m_new)
                    if mi >= 0 and exact:
                        exact = _finite(vg[off : off + w])
                    off += w
                for r in range(nr):
                    m_use[r] = (
                        zero if m_new[r] == neg_inf else m_new[r]
                    )  # all -inf so far: exp gives 0
                    alpha[r] = fast_exp(m_run[r] - m_use[r])
                    m_run[r] = m_new[r]
                    l_tile[r] = zero
                _exp_sum(st, m_use, l_tile, part)
                for r in range(nr):
                    l_run[r] = l_run[r] * alpha[r] + l_tile[r]
                if not exact:  # a partial block with inf/NaN in V: 0 * inf must not reach the sum
                    tmp[:] = zero
                    off = 0
                    for j in range(idx, g):
                        w = min(bk, n_k - indices[j] * bk)
                        _pv_add_masked(
                            st[off : off + w], vg[off : off + w], masks_t, mask_index[j], tmp
                        )
                        off += w
                elif use_blas:
                    np.dot(st.T, vg, tmp)
                else:
                    _pv_loops(st, vg, tmp)
                for r in range(nr):
                    for e in range(dv):
                        acc[r, e] = acc[r, e] * alpha[r] + tmp[r, e]
                idx = g
            for r in range(nr):
                if l_run[r] == zero:  # no keys, or only -inf scores
                    out[b, h, r0 + r, :] = zero
                    lse[b, h, r0 + r] = neg_inf
                else:
                    inv = dt(1.0) / l_run[r]
                    for e in range(dv):
                        out[b, h, r0 + r, e] = acc[r, e] * inv
                    lse[b, h, r0 + r] = m_run[r] + math.log(l_run[r])


def bsr_forward(  # type: ignore[no-untyped-def]
    q, k, v, indptr, indices, mask_index, masks, bq, bk, scale, softcap, out, lse
):
    """Block-sparse attention forward into ``out`` and ``lse`` (written in place).

    Args:
        q: ``(B, H, n_q, d)`` C-contiguous float32 or float64 (the compute dtype).
        k, v: ``(B, H_kv, n_k, d)`` / ``(B, H_kv, n_k, d_v)``, same dtype, ``H % H_kv == 0``.
        indptr: ``(P, nbq + 1)`` int64 absolute offsets, ``P`` 1 (shared) or ``H``.
        indices: ``(nblocks,)`` int32 key-block columns, ascending within each block row.
        mask_index: ``(nblocks,)`` int32: -1 for a full block, else the row of ``masks``.
        masks: ``(n_masks, bq, bk)`` bool masks of the partial blocks (may be deduplicated).
        bq, bk: block size; the last block row/column may be ragged.
        scale, softcap: scalars of the compute dtype; ``softcap = 0`` disables it.
        out: ``(B, H, n_q, d_v)``; lse: ``(B, H, n_q)``; both of the compute dtype.

    Block rows are dealt to the threads cyclically (block row ``t`` to thread ``t mod T``): under
    Numba's OpenMP layer a ``prange`` gives each thread one contiguous range, which on causal
    patterns (later rows cost more) left one thread with most of the work. Which thread computes a
    block row never changes its result.
    """
    masks_t = np.ascontiguousarray(np.asarray(masks, dtype=np.bool_).transpose(0, 2, 1))
    if masks_t.shape[0] == 0:
        masks_t = np.zeros((1, bk, bq), dtype=np.bool_)
    use_blas = bq * bk * q.shape[3] >= BLAS_MIN_TILE
    dt = q.dtype.type
    with single_threaded_blas():
        _bsr_forward(
            q,
            k,
            v,
            indptr,
            indices,
            mask_index,
            masks_t,
            int(bq),
            int(bk),
            dt(scale),
            dt(softcap),
            use_blas,
            int(TILE_KEYS),
            numba.get_num_threads(),
            out,
            lse,
        )
