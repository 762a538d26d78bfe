"""Block forms from block layouts, from token CSR, and from other block forms (heads, algebra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..checks import check_block, check_nonneg_int
from . import form
from .form import CHUNK_CELLS, BlockSparse, cdiv, extents, finish

__all__ = ["combine", "from_csr", "from_layout", "stack"]


def from_layout(
    layout: Any, block: Any, n_q: int | None = None, n_k: int | None = None
) -> BlockSparse:
    """Every ``True`` block of ``layout`` full: ``layout[h, bi, bj]`` or ``layout[bi, bj]`` (bool).

    ``n_q``/``n_k`` default to ``nbq * bq`` / ``nbk * bk``; smaller values clip the last block row
    or column (they must still reach into it: ``(nbq - 1) * bq < n_q <= nbq * bq``).
    """
    bq, bk = check_block(block)
    lay = np.asarray(layout)
    if lay.dtype != bool:
        raise TypeError(f"layout must be a bool array, got dtype {lay.dtype}")
    if lay.ndim not in (2, 3):
        raise ValueError(f"layout must be 2-D (nbq, nbk) or 3-D (H, nbq, nbk), got {lay.ndim}-D")
    lay = lay[None] if lay.ndim == 2 else lay
    if lay.shape[0] == 0:
        raise ValueError("layout must have at least one head")
    nbq, nbk = lay.shape[1:]
    n_q = nbq * bq if n_q is None else check_nonneg_int(n_q, "n_q")
    n_k = nbk * bk if n_k is None else check_nonneg_int(n_k, "n_k")
    for name, n, nb, b in (("n_q", n_q, nbq, bq), ("n_k", n_k, nbk, bk)):
        if cdiv(n, b) != nb:
            raise ValueError(
                f"{name} = {n} does not fit the layout's {nb} blocks of {b}: need "
                f"{(nb - 1) * b} < {name} <= {nb * b}"
            )
    heads = []
    for h in range(lay.shape[0]):
        bi, bj = np.nonzero(lay[h])
        heads.append((bi, bj, np.full(len(bi), -1)))
    return finish((bq, bk), (n_q, n_k), heads, np.zeros((0, bq, bk), dtype=bool))


def from_csr(
    heads: Sequence[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int], block: Any
) -> BlockSparse:
    """Block form of canonical token CSR heads ``[(indptr, indices), ...]`` (vectorised).

    Works in chunks of block rows (about 16M nonzeros each): per chunk the nonzeros are binned by
    block with ``bincount``, counts give full blocks, and partial masks are scattered in one step.
    """
    bq, bk = check_block(block)
    n_q, n_k = shape
    nbq, nbk = cdiv(n_q, bq), cdiv(n_k, bk)
    out_heads, cands = [], []
    n_cand = 0
    for indptr, indices in heads:
        indptr = np.asarray(indptr, dtype=np.int64)
        # chunk boundaries on block rows, ~16M nonzeros and ~16M bins per chunk
        at = indptr[np.minimum(np.arange(nbq + 1) * bq, n_q)]
        rows_per = max(1, CHUNK_CELLS // max(nbk, 1))
        parts = []
        b0 = 0
        while b0 < nbq:
            b1 = int(np.searchsorted(at, at[b0] + CHUNK_CELLS, side="right")) - 1
            b1 = min(max(b1, b0 + 1), b0 + rows_per, nbq)
            r0, r1 = b0 * bq, min(b1 * bq, n_q)
            s, e = indptr[r0], indptr[r1]
            rows = np.repeat(np.arange(r0, r1, dtype=np.int64), np.diff(indptr[r0 : r1 + 1]))
            cols = np.asarray(indices[s:e], dtype=np.int64)
            key = (rows // bq - b0) * nbk + cols // bk
            counts = np.bincount(key, minlength=(b1 - b0) * nbk)
            stored = np.flatnonzero(counts)
            bi = stored // nbk + b0
            bj = stored % nbk
            area = extents(bi * bq, bq, n_q) * extents(bj * bk, bk, n_k)
            is_part = counts[stored] < area
            cid = np.full(len(stored), -1, dtype=np.int64)
            n_part = int(is_part.sum())
            if n_part * bq * bk > form.MASK_LIMIT:  # read per call: one limit for every builder
                raise ValueError(
                    f"the block form would hold {n_part} partial-block masks of {bq}x{bk} "
                    f"(> MASK_LIMIT = {form.MASK_LIMIT} bools); use a smaller block or the CSR form"
                )
            cid[is_part] = n_cand + np.arange(n_part)
            rank = np.full(len(counts), -1, dtype=np.int64)
            rank[stored[is_part]] = np.arange(n_part)
            m = np.zeros((n_part, bq, bk), dtype=bool)
            pr = rank[key]
            sel = pr >= 0
            m[pr[sel], rows[sel] % bq, cols[sel] % bk] = True
            cands.append(m)
            n_cand += n_part
            parts.append((bi, bj, cid))
            b0 = b1
        bi_all, bj_all, cid_all = (
            np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64)
            for i in range(3)
        )
        out_heads.append((bi_all, bj_all, cid_all))
    cand = np.concatenate(cands) if cands else np.zeros((0, bq, bk), dtype=bool)
    return finish((bq, bk), (n_q, n_k), out_heads, cand)


def stack(parts: Sequence[BlockSparse]) -> BlockSparse:
    """Heads of several ``BlockSparse`` (same block and shape) stacked into one."""
    first = parts[0]
    for i, b in enumerate(parts):
        if b.block != first.block or b.shape != first.shape:
            raise ValueError(
                f"parts[{i}] has block {b.block}, shape {b.shape}; parts[0] has {first.block}, "
                f"{first.shape}"
            )
    heads, cands, offset = [], [], 0
    for b in parts:
        rows = b.block_rows()
        for p in range(b.num_heads):
            a, e = b.indptr[p, 0], b.indptr[p, -1]
            mi = b.mask_index[a:e].astype(np.int64)
            heads.append((rows[a:e], b.indices[a:e], np.where(mi >= 0, mi + offset, -1)))
        cands.append(b.mask_table)
        offset += len(b.mask_table)
    return finish(first.block, first.shape, heads, np.concatenate(cands))


def combine(a: BlockSparse, b: BlockSparse, op: str) -> BlockSparse:
    """``op`` in ``{"union", "intersection", "difference"}`` of two block forms, blockwise.

    Same block and shape; head counts equal or one of them 1 (it broadcasts).
    """
    if a.block != b.block or a.shape != b.shape:
        raise ValueError(f"block forms differ: {a.block}, {a.shape} vs {b.block}, {b.shape}")
    P = max(a.num_heads, b.num_heads)
    if a.num_heads != b.num_heads and 1 not in (a.num_heads, b.num_heads):
        raise ValueError(f"head counts differ: {a.num_heads} vs {b.num_heads}")
    bq, bk = a.block
    nbk = a.grid[1]
    full_id = len(a.mask_table) + len(b.mask_table)  # index of the all-True candidate
    cand = np.concatenate([a.mask_table, b.mask_table, np.ones((1, bq, bk), dtype=bool)])
    pair_ids: list[np.ndarray] = []
    heads = []
    for p in range(P):
        keys, ids = [], []
        for x, off in ((a, 0), (b, len(a.mask_table))):
            q = p if x.num_heads > 1 else 0
            s, e = x.indptr[q, 0], x.indptr[q, -1]
            keys.append(x.block_rows()[s:e] * nbk + x.indices[s:e])
            mi = x.mask_index[s:e].astype(np.int64)
            ids.append(np.where(mi >= 0, mi + off, full_id))
        if op == "union":
            k = np.union1d(keys[0], keys[1])
        elif op == "intersection":
            k = np.intersect1d(keys[0], keys[1], assume_unique=True)
        else:
            k = keys[0]
        ia = np.full(len(k), -2, dtype=np.int64)  # -2: absent
        ib = np.full(len(k), -2, dtype=np.int64)
        ia[np.isin(k, keys[0])] = ids[0][np.isin(keys[0], k)]
        ib[np.isin(k, keys[1])] = ids[1][np.isin(keys[1], k)]
        pair_ids.append(np.stack([ia, ib], axis=1))
        heads.append((k // nbk, k % nbk))
    allp = np.concatenate(pair_ids)
    upairs, inv = np.unique(allp, axis=0, return_inverse=True)
    inv = inv.ravel()
    ext = np.concatenate([cand, np.zeros((1, bq, bk), dtype=bool)])  # last row: absent (empty)
    ma = ext[np.where(upairs[:, 0] >= 0, upairs[:, 0], len(cand))]
    mb = ext[np.where(upairs[:, 1] >= 0, upairs[:, 1], len(cand))]
    if op == "union":
        res = ma | mb
    elif op == "intersection":
        res = ma & mb
    else:
        res = ma & ~mb
    out, pos = [], 0
    for rows, cols in heads:
        out.append((rows, cols, inv[pos : pos + len(rows)]))
        pos += len(rows)
    return finish(a.block, a.shape, out, res)
