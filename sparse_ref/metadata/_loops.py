"""The Numba loops that build kernel metadata (imported by :mod:`sparse_ref.metadata` on first use,
never at package import, so ``import sparse_ref`` and the CuPy backend do not load Numba)."""

from __future__ import annotations

import numba
import numpy as np
from numba import prange


@numba.njit(parallel=True, cache=True)
def transpose_counting_sort(indptr, indices, n_cols, t_indptr, t_indices, perm):  # type: ignore[no-untyped-def]
    """Counting-sort transpose of a stacked CSR, one head per thread.

    ``indptr (P, n_rows + 1)`` holds absolute offsets into ``indices``. Fills ``t_indptr (P,
    n_cols + 1)`` (absolute offsets again, head ``p``'s entries where they were), ``t_indices``
    (the rows of each column, ascending) and ``perm`` (transposed position -> CSR position).
    """
    P, n_rows = indptr.shape[0], indptr.shape[1] - 1
    for p in prange(P):
        start = indptr[p, 0]
        t_ptr = t_indptr[p]
        for col in range(n_cols + 1):
            t_ptr[col] = 0
        for pos in range(start, indptr[p, n_rows]):
            t_ptr[indices[pos] + 1] += 1
        t_ptr[0] = start
        for col in range(n_cols):
            t_ptr[col + 1] += t_ptr[col]
        cursor = t_ptr[:n_cols].copy()
        for row in range(n_rows):
            for pos in range(indptr[p, row], indptr[p, row + 1]):
                col = indices[pos]
                t = cursor[col]
                cursor[col] = t + 1
                t_indices[t] = row
                perm[t] = pos


@numba.njit(cache=True)
def stored_blocks(indptr, indices, n_q, n_k, bq, bk):  # type: ignore[no-untyped-def]
    """``(count, area)``: the ``(bq, bk)`` blocks holding at least one entry of a stacked CSR
    (``indptr (P, n_q + 1)``, sorted rows), summed over heads, and their total area (edge blocks
    clipped to the shape). Each row is walked block by block (a binary search for the first key
    past the block), so a row costs O(blocks it touches x log(row length)), not O(row length)."""
    P = indptr.shape[0]
    nbk = (n_k + bk - 1) // bk
    seen = np.full(nbk, -1, np.int64)  # the last (head, block row) tag that stored each column
    count = 0
    area = 0
    for p in range(P):
        for bi in range((n_q + bq - 1) // bq):
            tag = p * n_q + bi
            height = min(bq, n_q - bi * bq)
            for i in range(bi * bq, bi * bq + height):
                pos, end = indptr[p, i], indptr[p, i + 1]
                while pos < end:
                    bj = indices[pos] // bk
                    if seen[bj] != tag:
                        seen[bj] = tag
                        count += 1
                        area += height * min(bk, n_k - bj * bk)
                    pos += np.searchsorted(indices[pos:end], (bj + 1) * bk)
    return count, area


@numba.njit(cache=True)
def block_rows_of_csr(indptr, indices, n_q, n_k, bq, bk, n_blocks):  # type: ignore[no-untyped-def]
    """The ``(bq, bk)`` blocks holding an entry of a stacked CSR, per head and block row:
    ``(b_indptr (P, nbq + 1)`` absolute offsets, ``b_indices`` int32 block columns ascending within
    each block row, ``counts`` entries per block)``; ``n_blocks`` from :func:`stored_blocks`.
    Rows are walked block by block as there."""
    P = indptr.shape[0]
    nbq, nbk = (n_q + bq - 1) // bq, (n_k + bk - 1) // bk
    b_indptr = np.zeros((P, nbq + 1), np.int64)
    b_indices = np.empty(n_blocks, np.int32)
    counts = np.empty(n_blocks, np.int64)
    count = np.zeros(nbk, np.int64)  # entries per block column in the current block row
    touched = np.empty(nbk, np.int64)
    out = 0
    for p in range(P):
        for bi in range(nbq):
            b_indptr[p, bi] = out
            n_touched = 0
            for i in range(bi * bq, min(bi * bq + bq, n_q)):
                pos, end = indptr[p, i], indptr[p, i + 1]
                while pos < end:
                    bj = indices[pos] // bk
                    nxt = pos + np.searchsorted(indices[pos:end], (bj + 1) * bk)
                    if count[bj] == 0:
                        touched[n_touched] = bj
                        n_touched += 1
                    count[bj] += nxt - pos
                    pos = nxt
            for bj in np.sort(touched[:n_touched]):
                b_indices[out] = bj
                counts[out] = count[bj]
                count[bj] = 0
                out += 1
        b_indptr[p, nbq] = out
    return b_indptr, b_indices, counts


@numba.njit(cache=True)
def partial_block_masks(indptr, indices, n_q, n_k, bq, bk, b_indptr, b_indices, mask_id, masks):  # type: ignore[no-untyped-def]
    """Fill ``masks[mask_id[b]]`` (bool ``(n, bq, bk)``, zeroed) with the entries of each stored
    block ``b`` whose ``mask_id`` is not -1, from the stacked CSR (block rows without such a
    block are skipped; the others are walked block by block)."""
    P, nbq = b_indptr.shape[0], b_indptr.shape[1] - 1
    slot = np.full((n_k + bk - 1) // bk, -1, np.int64)  # mask of each block column, this block row
    for p in range(P):
        for bi in range(nbq):
            a, z = b_indptr[p, bi], b_indptr[p, bi + 1]
            partial = False
            for b in range(a, z):
                if mask_id[b] >= 0:
                    slot[b_indices[b]] = mask_id[b]
                    partial = True
            if not partial:
                continue
            r0 = bi * bq
            for i in range(r0, min(r0 + bq, n_q)):
                pos, end = indptr[p, i], indptr[p, i + 1]
                while pos < end:
                    bj = indices[pos] // bk
                    nxt = pos + np.searchsorted(indices[pos:end], (bj + 1) * bk)
                    m = slot[bj]
                    if m >= 0:
                        for e in range(pos, nxt):
                            masks[m, i - r0, indices[e] - bj * bk] = True
                    pos = nxt
            for b in range(a, z):
                slot[b_indices[b]] = -1
