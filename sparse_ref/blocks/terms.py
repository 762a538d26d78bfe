"""Block forms of unions of :class:`Term`: how the catalog describes its local families.

A term is a diagonal band cut by a key range and a query range; each structured family of
``sparse_ref.patterns`` (dense, causal, windows, sinks, prefix LM, Longformer) is a short list of
terms, from which ``patterns._ranges.terms_csr`` derives token CSR and :func:`from_terms` the block
form, without tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..checks import check_block
from .form import BlockSparse, cdiv, finish, ragged_arange

__all__ = ["Term", "from_terms"]

_BIG = 1 << 40  # an unbounded term bound (far beyond any sequence length)


class Term(NamedTuple):
    """``lo_d <= j - i <= hi_d`` and ``lo_j <= j <= hi_j`` and ``lo_i <= i <= hi_i`` (inclusive).

    The description of a structured family: a union of terms, each a diagonal band cut by a key
    range and a query range (omitted bounds are unbounded). ``sparse_ref.patterns`` states each
    local family as a short list of terms and derives both forms from it: the block form with
    :func:`from_terms`, token CSR with ``patterns._ranges.terms_csr``.

    Example:
        >>> window = Term(lo_d=-2, hi_d=0)  # i - 2 <= j <= i: a causal window of 3
        >>> from_terms([window], (4, 4), 2).nnz
        9
    """

    lo_d: int = -_BIG
    hi_d: int = _BIG
    lo_j: int = -_BIG
    hi_j: int = _BIG
    lo_i: int = -_BIG
    hi_i: int = _BIG


def from_terms(terms: Sequence[Term], shape: tuple[int, int], block: Any) -> BlockSparse:
    """Block form of the union of ``terms`` over ``shape``, without touching individual tokens.

    A term meets a block emptily, fully or partially by O(1) arithmetic on the block's corners;
    its mask in a partial block depends only on its bounds relative to the block's corner, so
    masks are computed once per distinct relative position.

    Example:
        >>> from_terms([Term(hi_d=0)], (10, 10), 4).full.tolist()  # causal
        [False, True, False, True, True, False]
    """
    block = check_block(block)
    bq, bk = block
    n_q, n_k = shape
    nbq, nbk = cdiv(n_q, bq), cdiv(n_k, bk)
    terms = [t for t in terms if t.lo_d <= t.hi_d]
    # 1. candidate blocks: per term and block row, the key range it reaches (exact)
    r0 = np.arange(nbq, dtype=np.int64) * bq
    r1 = np.minimum(r0 + bq, n_q) - 1
    keys = []
    for t in terms:
        j0, j1 = max(t.lo_j, 0), min(t.hi_j, n_k - 1)
        i0 = np.maximum(np.maximum(r0, t.lo_i), j0 - t.hi_d)
        i1 = np.minimum(np.minimum(r1, t.hi_i), j1 - t.lo_d)
        ok = (i0 <= i1) & (j0 <= j1)
        jlo = np.maximum(j0, i0 + t.lo_d)[ok] // bk
        jhi = np.minimum(j1, i1 + t.hi_d)[ok] // bk
        bj = ragged_arange(jlo, jhi - jlo + 1)
        bi = np.repeat(np.flatnonzero(ok), jhi - jlo + 1)
        keys.append(bi * nbk + bj)
    key = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
    bi, bj = key // nbk, key % nbk
    # 2. per block and term: empty / full / partial, and the term's bounds relative to the block
    r0, c0 = bi * bq, bj * bk
    r1, c1 = np.minimum(r0 + bq, n_q) - 1, np.minimum(c0 + bk, n_k) - 1
    full = np.zeros(len(key), dtype=bool)
    rel = []
    for t in terms:
        i0, i1 = np.maximum(r0, t.lo_i), np.minimum(r1, t.hi_i)
        j0, j1 = np.maximum(c0, t.lo_j), np.minimum(c1, t.hi_j)
        empty = (i0 > i1) | (j0 > j1) | (j0 - i1 > t.hi_d) | (j1 - i0 < t.lo_d)
        full |= (
            (i0 == r0)
            & (i1 == r1)
            & (j0 == c0)
            & (j1 == c1)
            & (c0 - r1 >= t.lo_d)
            & (c1 - r0 <= t.hi_d)
        )
        delta = c0 - r0
        b = np.stack(
            [
                np.clip(t.lo_i - r0, 0, bq),
                np.clip(t.hi_i - r0, -1, bq - 1),
                np.clip(t.lo_j - c0, 0, bk),
                np.clip(t.hi_j - c0, -1, bk - 1),
                np.clip(t.lo_d - delta, -bq, bk),
                np.clip(t.hi_d - delta, -bq, bk),
            ],
            axis=1,
        )
        b[empty] = (1, 0, 1, 0, 1, 0)  # one canonical "empty" key
        rel.append(b)
    cid = np.full(len(key), -1, dtype=np.int64)
    cand = np.zeros((0, bq, bk), dtype=bool)
    part = np.flatnonzero(~full)
    if len(part) and terms:
        # 3. a partial block's mask depends only on its relative bounds: one mask per distinct row
        rel_part = np.concatenate([r[part] for r in rel], axis=1)
        urel, inv = np.unique(rel_part, axis=0, return_inverse=True)
        u = np.arange(bq)[None, :, None]
        w = np.arange(bk)[None, None, :]
        cand = np.zeros((len(urel), bq, bk), dtype=bool)
        for k in range(len(terms)):
            lo_i, hi_i, lo_j, hi_j, lo_d, hi_d = (
                urel[:, 6 * k + c][:, None, None] for c in range(6)
            )
            cand |= (
                (u >= lo_i)
                & (u <= hi_i)
                & (w >= lo_j)
                & (w <= hi_j)
                & (w - u >= lo_d)
                & (w - u <= hi_d)
            )
        cid[part] = inv.ravel()
    return finish(block, shape, [(bi, bj, cid)], cand)
