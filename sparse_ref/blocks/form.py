"""The block form's storage type: :class:`BlockSparse`, canonical by construction.

A pattern of shape ``(n_q, n_k)`` cut into blocks of ``(bq, bk)`` tokens has a grid of
``nbq = ceil(n_q / bq)`` block rows and ``nbk = ceil(n_k / bk)`` block columns; the last block row
and column may be ragged (entries outside ``[0, n_q) x [0, n_k)`` do not exist). A block is *stored*
when it holds at least one allowed entry; it is *full* when every in-range entry is allowed (the
kernels then skip every mask test) and *partial* otherwise, with a bool mask ``(bq, bk)`` whose
out-of-range entries are ``False``.

Storage, stacked over ``P`` heads (``P = 1`` means the same for every head), in the flat form
that the kernels consume:

- ``indptr``: ``(P, nbq + 1)`` int64, absolute offsets: head ``p`` block row ``bi`` owns the stored
  blocks ``indptr[p, bi]:indptr[p, bi + 1]``;
- ``indices``: ``(nblocks,)`` int32 block columns, strictly increasing within each block row;
- ``mask_index``: ``(nblocks,)`` int32, ``-1`` for a full block, else a row of ``mask_table``;
- ``mask_table``: ``(n_masks, bq, bk)`` bool, the *distinct* partial-block masks. Deduplicating them
  (as JAX splash attention does) keeps a causal window at n = 1M down to a handful of masks
  instead of ~16k. ``masks`` gives the per-block masks in storage order (materialised).

The form is canonical: stored blocks are exactly the non-empty ones, ``full`` is exact, the mask
table holds each used partial mask once, sorted by content. So two ``BlockSparse`` of the same
structure and block size have equal arrays, and ``==`` compares arrays.

:func:`finish` is the one way every builder (``build.py``, ``terms.py``) and every
:class:`BlockSparse` method that makes a new block form arrives at that canonical form.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from ..checks import BLOCK_WORDS, check_block, check_compressed, check_shape

__all__ = ["BlockSparse", "StackedBSR", "MASK_LIMIT"]

#: Builders refuse to hold more partial-block mask bools than this before deduplication (a random
#: pattern has almost every block partial: use the CSR form for it).
MASK_LIMIT = 1 << 30

CHUNK_CELLS = 1 << 22  # block cells (bq * bk per block) per chunk when streaming token rows


# ------------------------------------------------------------------ helpers (also for build, terms)
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def extents(start: np.ndarray, size: int, n: int) -> np.ndarray:
    """In-range length of blocks starting at ``start`` (int64 array)."""
    return np.minimum(size, n - start)


def ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without a loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + np.arange(total) - offsets


def pack(masks: np.ndarray) -> np.ndarray:
    """Masks ``(m, bq, bk)`` -> one opaque ``np.void`` row per mask (for unique/sort by content)."""
    packed = np.packbits(masks.reshape(len(masks), masks[0].size if len(masks) else 1), axis=1)
    packed = np.ascontiguousarray(packed)
    return packed.view(np.dtype((np.void, max(1, packed.shape[1])))).ravel()


def rect(nr: np.ndarray, nc: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """In-range rectangles ``(len(nr), bq, bk)``: ``u < nr`` and ``w < nc``."""
    u = np.arange(block[0])[None, :, None]
    w = np.arange(block[1])[None, None, :]
    return (u < np.asarray(nr)[:, None, None]) & (w < np.asarray(nc)[:, None, None])


# ---------------------------------------------------------------------------------------- type
class StackedBSR(NamedTuple):
    """The flat block form the kernels consume (see the module docstring).

    ``masks`` is the deduplicated ``mask_table``: partial block ``b`` uses ``masks[mask_index[b]]``.
    """

    block: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    mask_index: np.ndarray
    masks: np.ndarray


@dataclass(frozen=True, eq=False, repr=False)
class BlockSparse:
    """A canonical block-sparse pattern: ``P`` heads over a ``(bq, bk)`` block grid.

    Fields are described in the module docstring; all arrays are read-only. Build one with the
    builders of ``sparse_ref.blocks``, :meth:`from_arrays` (user structure, fully checked and
    canonicalised) or ``Pattern.to_bsr``. Direct construction expects canonical arrays and checks
    only dtypes, shapes and ``indptr``'s endpoints; :meth:`check_format` checks everything.

    Example:
        >>> bs = BlockSparse.from_arrays([0, 1, 3], [0, 0, 1], block=2, shape=(3, 4))
        >>> bs.to_scipy().toarray().astype(int).tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    """

    block: tuple[int, int]
    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    mask_index: np.ndarray
    mask_table: np.ndarray

    def __post_init__(self) -> None:
        for name in ("indptr", "indices", "mask_index", "mask_table"):
            getattr(self, name).flags.writeable = False
        self.check_format(full_check=False)

    # -------------------------------------------------------------------------- validation
    def check_format(self, full_check: bool = True) -> None:
        """Check the structure, as scipy's ``check_format``; ``ValueError`` names the broken rule.

        Always (O(P), run at construction): dtypes and shapes of the four arrays, and ``indptr``
        from 0 to ``nblocks`` (:func:`sparse_ref.checks.check_compressed`). With ``full_check``
        (O(nblocks + mask bools)): ``indptr`` non-decreasing, block columns in range and strictly
        increasing per block row (errors name the head and block row), and the canonical form:
        every ``mask_index`` in range, the mask table sorted by content with each mask used once,
        and every partial mask neither empty nor full nor reaching outside the shape. The
        builders produce canonical arrays by construction; user structure goes through
        :meth:`from_arrays`, which checks fully.
        """
        bq, bk = check_block(self.block)
        n_q, n_k = self.shape
        nbq, nbk = self.grid
        ip, ix, mi, mt = self.indptr, self.indices, self.mask_index, self.mask_table
        if ip.dtype != np.int64 or ip.ndim != 2 or ip.shape[1] != nbq + 1 or ip.shape[0] < 1:
            raise ValueError(
                f"indptr must be int64 of shape (P, nbq + 1 = {nbq + 1}), got {ip.dtype} {ip.shape}"
            )
        if ix.dtype != np.int32 or mi.dtype != np.int32 or ix.ndim != 1 or mi.shape != ix.shape:
            raise ValueError("indices and mask_index must be 1-D int32 arrays of one length")
        if mt.dtype != bool or mt.ndim != 3 or mt.shape[1:] != (bq, bk):
            raise ValueError(
                f"mask_table must be bool of shape (n_masks, {bq}, {bk}), got {mt.dtype} {mt.shape}"
            )
        check_compressed(ip, ix, nbk, words=BLOCK_WORDS, full_check=full_check)
        if not full_check:
            return
        rows = np.repeat(np.tile(np.arange(nbq), ip.shape[0]), np.diff(ip, axis=1).ravel())
        if ((mi < -1) | (mi >= len(mt))).any():
            raise ValueError(f"mask_index must be -1 (full) or in [0, {len(mt)})")
        if len(mt):
            used = np.bincount(mi[mi >= 0], minlength=len(mt))
            keys = pack(mt)
            if (used == 0).any() or not np.array_equal(np.unique(keys), keys):
                raise ValueError(
                    "mask_table must hold each used mask once, sorted by content (canonical form); "
                    "use BlockSparse.from_arrays to canonicalise"
                )
            part = mi >= 0
            nr = extents(rows[part] * bq, bq, n_q)
            nc = extents(ix[part].astype(np.int64) * bk, bk, n_k)
            counts = mt.sum(axis=(1, 2))[mi[part]]
            row_any = np.any(mt, axis=2)  # (n_masks, bq): rows with an allowed entry
            col_any = np.any(mt, axis=1)
            max_u = np.where(row_any.any(axis=1), bq - np.argmax(row_any[:, ::-1], axis=1), 0)
            max_w = np.where(col_any.any(axis=1), bk - np.argmax(col_any[:, ::-1], axis=1), 0)
            max_u, max_w = max_u[mi[part]], max_w[mi[part]]
            bad = (counts == 0) | (counts == nr * nc) | (max_u > nr) | (max_w > nc)
            if bad.any():
                pos = int(np.argmax(bad))
                raise ValueError(
                    f"partial block at block row {rows[part][pos]}, block column "
                    f"{ix[part][pos]} has "
                    "a mask that is empty, full, or allows entries outside the shape"
                )

    # -------------------------------------------------------------------------- properties
    @property
    def grid(self) -> tuple[int, int]:
        """``(nbq, nbk)``: block rows and block columns (the last ones may be ragged)."""
        return cdiv(self.shape[0], self.block[0]), cdiv(self.shape[1], self.block[1])

    @property
    def num_heads(self) -> int:
        """``P``: 1 (shared by every head) or the number of heads."""
        return int(self.indptr.shape[0])

    @property
    def nblocks(self) -> int:
        """Stored blocks over all heads."""
        return len(self.indices)

    @property
    def full(self) -> np.ndarray:
        """Bool per stored block: every in-range entry allowed (no mask)."""
        return self.mask_index < 0

    @property
    def masks(self) -> np.ndarray:
        """Bool ``(n_partial, bq, bk)``: the partial blocks' masks in storage order (a copy)."""
        return self.mask_table[self.mask_index[self.mask_index >= 0]]

    def block_rows(self) -> np.ndarray:
        """Block row of every stored block (int64, storage order, all heads; read-only, cached)."""
        return self._block_rows

    @cached_property
    def _block_rows(self) -> np.ndarray:
        nbq = self.grid[0]
        steps = np.diff(self.indptr, axis=1).ravel()
        rows = np.repeat(np.tile(np.arange(nbq, dtype=np.int64), self.num_heads), steps)
        rows.flags.writeable = False
        return rows

    def _block_counts(self) -> np.ndarray:
        """Allowed entries of every stored block (int64)."""
        nr = extents(self.block_rows() * self.block[0], self.block[0], self.shape[0])
        nc = extents(self.indices.astype(np.int64) * self.block[1], self.block[1], self.shape[1])
        table = self.mask_table.sum(axis=(1, 2), dtype=np.int64)
        return np.where(
            self.full, nr * nc, table[np.maximum(self.mask_index, 0)] if len(table) else 0
        )

    @property
    def nnz_per_head(self) -> np.ndarray:
        """Allowed (query, key) pairs of each stored head, int64 ``(P,)``."""
        cs = np.concatenate([[0], np.cumsum(self._block_counts())])
        return np.diff(cs[self.indptr[:, [0, -1]]], axis=1).ravel()

    @property
    def nnz(self) -> int:
        """Allowed (query, key) pairs summed over the stored heads."""
        return int(self._block_counts().sum())

    def kernel_form(self) -> StackedBSR:
        """The arrays the kernels consume (no copy)."""
        return StackedBSR(self.block, self.indptr, self.indices, self.mask_index, self.mask_table)

    def __repr__(self) -> str:
        return (
            f"BlockSparse(block={self.block}, shape={self.shape}, heads={self.num_heads}, "
            f"nblocks={self.nblocks}, full={int(self.full.sum())}, "
            f"distinct_masks={len(self.mask_table)})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockSparse):
            return NotImplemented
        return (
            self.block == other.block
            and self.shape == other.shape
            and all(
                np.array_equal(getattr(self, f), getattr(other, f))
                for f in ("indptr", "indices", "mask_index", "mask_table")
            )
        )

    __hash__ = None  # type: ignore[assignment]  # arrays inside; hash the owning Pattern instead

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a BlockSparse is ambiguous; use .nblocks or .nnz")

    # -------------------------------------------------------------------------- per head
    def head(self, p: int) -> BlockSparse:
        """Head ``p`` alone (one-head ``BlockSparse``; any ``p`` when there is one head)."""
        if self.num_heads == 1:
            return self
        if not 0 <= p < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {p}")
        a, b = self.indptr[p, 0], self.indptr[p, -1]
        mi = self.mask_index[a:b]
        used = np.unique(mi[mi >= 0])  # a sorted subset of a sorted table stays sorted
        remap = np.full(len(self.mask_table) + 1, -1, dtype=np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        return BlockSparse(
            self.block,
            self.shape,
            (self.indptr[p] - a)[None, :].copy(),
            self.indices[a:b].copy(),
            remap[mi],
            self.mask_table[used],
        )

    def _allowed(self, blk: np.ndarray, u0: int = 0, u1: int | None = None) -> np.ndarray:
        """Dense bool ``(len(blk), u1 - u0, bk)``: rows ``u0:u1`` of the given stored blocks."""
        bq, bk = self.block
        u1 = bq if u1 is None else u1
        rows = self.block_rows()[blk]
        nr = extents(rows * bq, bq, self.shape[0]) - u0
        nc = extents(self.indices[blk].astype(np.int64) * bk, bk, self.shape[1])
        out = rect(nr, nc, (u1 - u0, bk))
        mi = self.mask_index[blk]
        part = mi >= 0
        out[part] = self.mask_table[mi[part], u0:u1]
        return out

    def _chunks(self, head: int, max_cells: int) -> Iterator[tuple[np.ndarray, int, int, int, int]]:
        """``(indptr of the head, b0, b1, u0, u1)``: rows ``u0:u1`` of block rows ``b0:b1``.

        Whole block rows of about ``max_cells`` block cells together; a block row alone above
        that (a global row at large n) is split into slices of its rows.
        """
        bq, bk = self.block
        nbq = self.grid[0]
        ip = self.indptr[head if self.num_heads > 1 else 0]
        cells = np.concatenate([[0], np.cumsum(np.maximum(np.diff(ip), 1))]) * (bq * bk)
        b0 = 0
        while b0 < nbq:
            b1 = int(np.searchsorted(cells, cells[b0] + max_cells, side="right")) - 1
            b1 = min(max(b1, b0 + 1), nbq)
            if b1 == b0 + 1 and cells[b1] - cells[b0] > max_cells:
                step = max(1, max_cells // (int(ip[b1] - ip[b0]) * bk))
                nr = min(bq, self.shape[0] - b0 * bq)
                for u0 in range(0, nr, step):
                    yield ip, b0, b1, u0, min(u0 + step, nr)
            else:
                yield ip, b0, b1, 0, bq
            b0 = b1

    def _segment_rows(
        self, ip: np.ndarray, b0: int, b1: int, u0: int, counts: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Per-row totals of per-block ``counts (nb, us)``: ``(row0, row_counts, cs, starts)``."""
        us = counts.shape[1]
        cs = np.zeros((len(counts) + 1, us), dtype=np.int64)
        np.cumsum(counts, axis=0, out=cs[1:])
        starts = ip[b0 : b1 + 1] - ip[b0]
        rows = (np.arange(b0, b1)[:, None] * self.block[0] + u0 + np.arange(us)[None, :]).ravel()
        row_counts = (cs[starts[1:]] - cs[starts[:-1]]).ravel()[rows < self.shape[0]]
        return b0 * self.block[0] + u0, row_counts, cs, starts

    def iter_csr(
        self, head: int = 0, max_cells: int = CHUNK_CELLS
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Token CSR of one head, streamed: yields ``(row0, row_counts, indices)`` chunks.

        Chunks cover consecutive rows in order, about ``max_cells`` block cells each, so memory
        stays bounded however large the pattern is. ``indices`` are int64, sorted within each row.
        """
        for ip, b0, b1, u0, u1 in self._chunks(head, max_cells):
            yield self._csr_chunk(ip, b0, b1, u0, u1)

    def _csr_chunk(
        self, ip: np.ndarray, b0: int, b1: int, u0: int, u1: int
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Token CSR of rows ``u0:u1`` of block rows ``b0:b1``: ``(row0, row_counts, indices)``.

        The block rows' dense blocks are gathered in token-row order (row, then its blocks in
        ascending column) and one ``flatnonzero`` reads the keys off in CSR order.
        """
        bq, bk = self.block
        us = u1 - u0
        first = int(ip[b0])
        per_row = np.repeat(np.diff(ip[b0 : b1 + 1]), us)  # stored blocks seen by each token row
        rows = (np.arange(b0, b1)[:, None] * bq + u0 + np.arange(us)[None, :]).ravel()
        row_first = np.repeat(ip[b0:b1] - first, us)  # its block row's first block (chunk-local)
        u = np.tile(np.arange(us), b1 - b0)
        j = ragged_arange(np.zeros(len(per_row), dtype=np.int64), per_row)
        src = (np.repeat(row_first, per_row) + j) * us + np.repeat(u, per_row)  # (block, row) pairs
        allowed = self._allowed(np.arange(first, ip[b1]), u0, u1).reshape(-1, bk)[src]
        pair_counts = allowed.sum(axis=1, dtype=np.int64)
        # key = position in the gathered array - pair * bk + first key of the pair's block
        shift = self.indices[first + src // us].astype(np.int64) * bk - np.arange(len(src)) * bk
        out = np.flatnonzero(allowed) + np.repeat(shift, pair_counts)
        row_end = np.concatenate([[0], np.cumsum(pair_counts)])[np.cumsum(per_row)]
        row_counts = np.diff(np.concatenate([[0], row_end]))
        return b0 * bq + u0, row_counts[rows < self.shape[0]], out

    def iter_row_counts(self, head: int = 0, max_cells: int = 1 << 28) -> Iterator[np.ndarray]:
        """Allowed keys per query row of one head (int64), streamed in chunks of rows."""
        bq, bk = self.block
        per_row = self.mask_table.sum(axis=2, dtype=np.int64)  # (n_masks, bq)
        for ip, b0, b1, u0, u1 in self._chunks(head, max_cells):
            blk = np.arange(ip[b0], ip[b1])
            nr = extents(self.block_rows()[blk] * bq, bq, self.shape[0])
            nc = extents(self.indices[blk].astype(np.int64) * bk, bk, self.shape[1])
            counts = np.where(np.arange(bq)[None, :] < nr[:, None], nc[:, None], 0)
            mi = self.mask_index[blk]
            part = mi >= 0
            counts[part] = per_row[mi[part]]
            yield self._segment_rows(ip, b0, b1, u0, counts[:, u0:u1])[1]

    def row_counts(self, head: int = 0) -> np.ndarray:
        """Allowed keys per query row of one head, int64 ``(n_q,)``."""
        parts = list(self.iter_row_counts(head))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def to_csr(self, head: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Token CSR ``(indptr int64, indices)`` of one head (materialised); ``indices`` are int32
        unless ``nnz`` or ``n_k`` needs int64."""
        indptr = np.zeros(self.shape[0] + 1, dtype=np.int64)
        counts = list(self.iter_row_counts(head))
        if counts:
            np.cumsum(np.concatenate(counts), out=indptr[1:])
        nnz = int(indptr[-1])
        big = max(nnz, self.shape[1]) > np.iinfo(np.int32).max
        indices = np.empty(nnz, dtype=np.int64 if big else np.int32)
        for row0, _, chunk in self.iter_csr(head):
            indices[indptr[row0] : indptr[row0] + len(chunk)] = chunk
        return indptr, indices

    def mask_rows(self, rows: Any, head: int = 0) -> np.ndarray:
        """Dense bool ``(len(rows), n_k)`` for the given query rows of one head.

        Touches only the block rows of ``rows``: memory is O(len(rows) * n_k).
        """
        bq, bk = self.block
        n_k = self.shape[1]
        rows = np.asarray(rows, dtype=np.int64).ravel()
        p = head if self.num_heads > 1 else 0
        bi = rows // bq
        u = rows - bi * bq
        start = self.indptr[p, bi]
        cnt = self.indptr[p, bi + 1] - start
        blk = ragged_arange(start, cnt)
        rowpos = np.repeat(np.arange(len(rows)), cnt)
        out = np.zeros((len(rows), self.grid[1] * bk), dtype=bool)
        vals = np.ones((len(blk), bk), dtype=bool)
        mi = self.mask_index[blk]
        part = mi >= 0
        vals[part] = self.mask_table[mi[part], u[rowpos[part]], :]
        cols = self.indices[blk].astype(np.int64)[:, None] * bk + np.arange(bk)[None, :]
        out[rowpos[:, None], cols] = vals
        return out[:, :n_k]

    def transpose(self) -> BlockSparse:
        """The key-major view: shape ``(n_k, n_q)``, block ``(bk, bq)``, masks transposed."""
        rows = self.block_rows()
        heads = []
        for p in range(self.num_heads):
            a, b = self.indptr[p, 0], self.indptr[p, -1]
            order = np.lexsort((rows[a:b], self.indices[a:b]))
            heads.append(
                (
                    self.indices[a:b][order].astype(np.int64),
                    rows[a:b][order],
                    self.mask_index[a:b][order],
                )
            )
        return finish(
            (self.block[1], self.block[0]),
            (self.shape[1], self.shape[0]),
            heads,
            self.mask_table.transpose(0, 2, 1),
        )

    def to_scipy(self) -> sp.bsr_array | list[sp.bsr_array]:
        """scipy ``bsr_array`` whose data are the blocks' bool masks; a list for several heads.

        scipy needs the shape to be whole blocks, so it is rounded up to ``(nbq * bq, nbk * bk)``;
        entries outside ``self.shape`` are ``False``. ``Pattern.from_bsr(a, shape=...)`` reads it
        back. Materialises ``nblocks * bq * bk`` bools.
        """
        nbq, nbk = self.grid
        bq, bk = self.block
        out = []
        for p in range(self.num_heads):
            a, b = self.indptr[p, 0], self.indptr[p, -1]
            data = self._allowed(np.arange(a, b))
            out.append(
                sp.bsr_array(
                    (data, self.indices[a:b].copy(), self.indptr[p] - a),
                    shape=(nbq * bq, nbk * bk),
                    blocksize=(bq, bk),
                )
            )
        return out[0] if self.num_heads == 1 else out

    # -------------------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(
        cls,
        indptr: Any,
        indices: Any,
        block: Any,
        shape: Any,
        *,
        full: Any = None,
        masks: Any = None,
        sort: bool = False,
    ) -> BlockSparse:
        """From user block structure: validated, then canonicalised.

        Args:
            indptr: ``(nbq + 1,)`` for one head or ``(P, nbq + 1)`` (each head's own offsets from
                0, or absolute offsets; both are accepted).
            indices: block columns, strictly increasing within each block row unless ``sort=True``
                (which sorts and ORs duplicates together).
            block: ``(bq, bk)`` or an int.
            shape: ``(n_q, n_k)``.
            full: bool per stored block (default: all full).
            masks: bool ``(n_partial, bq, bk)``, one per non-full block in storage order; entries
                outside the shape must be ``False``. Empty masks drop their block; masks that
                allow every in-range entry become full blocks.
        """
        bq, bk = check_block(block)
        n_q, n_k = check_shape(shape)
        nbq, nbk = cdiv(n_q, bq), cdiv(n_k, bk)
        ip = np.asarray(indptr)
        if ip.dtype == bool or not np.issubdtype(ip.dtype, np.integer):
            raise TypeError(f"indptr must have an integer dtype, got {ip.dtype}")
        ip = ip.astype(np.int64)
        if ip.ndim == 1:
            ip = ip[None, :]
        if ip.ndim != 2 or ip.shape[1] != nbq + 1:
            raise ValueError(
                f"indptr must have length nbq + 1 = {nbq + 1} per head, got shape {ip.shape}"
            )
        ix = np.asarray(indices)
        if ix.ndim != 1 or ix.dtype == bool or not np.issubdtype(ix.dtype, np.integer):
            raise TypeError(f"indices must be a 1-D integer array, got {ix.dtype} {ix.shape}")
        ix = ix.astype(np.int64)
        if ip.shape[0] > 1 and ip[0, 0] == 0 and (ip[1:, 0] == 0).all():  # per-head offsets
            ip = ip + np.concatenate([[0], np.cumsum(ip[:-1, -1])])[:, None]
        in_order = check_compressed(ip, ix, nbk, words=BLOCK_WORDS, require_sorted=not sort)
        steps = np.diff(ip, axis=1)
        rows = np.repeat(np.tile(np.arange(nbq), ip.shape[0]), steps.ravel())
        heads_of = np.repeat(np.arange(ip.shape[0]), steps.sum(axis=1))
        full_arr = np.ones(len(ix), dtype=bool) if full is None else np.asarray(full)
        if full_arr.dtype != bool or full_arr.shape != ix.shape:
            raise ValueError(
                f"full must be a bool array of shape {ix.shape}, got {full_arr.dtype} "
                f"{full_arr.shape}"
            )
        n_part = int((~full_arr).sum())
        m = np.zeros((0, bq, bk), dtype=bool) if masks is None else np.asarray(masks)
        if m.dtype != bool or m.shape != (n_part, bq, bk):
            raise ValueError(
                f"masks must be bool of shape (n_partial = {n_part}, {bq}, {bk}), got {m.dtype} "
                f"{m.shape}"
            )
        nr = extents(rows * bq, bq, n_q)
        nc = extents(ix * bk, bk, n_k)
        part = np.flatnonzero(~full_arr)
        outside = (m & ~rect(nr[part], nc[part], (bq, bk))).any(axis=(1, 2))
        if outside.any():
            pos = part[int(np.argmax(outside))]
            raise ValueError(
                f"mask of block row {rows[pos]}, block column {ix[pos]} allows entries outside the "
                f"shape {(n_q, n_k)}"
            )
        cid = np.full(len(ix), -1, dtype=np.int64)
        cid[part] = np.arange(n_part)
        if not in_order:
            key = (heads_of * nbq + rows) * nbk + ix
            return _from_keys_merged(key, cid, m, (bq, bk), (n_q, n_k), ip.shape[0])
        heads = []
        for p in range(ip.shape[0]):
            a, b = ip[p, 0], ip[p, -1]
            heads.append((rows[a:b], ix[a:b], cid[a:b]))
        return finish((bq, bk), (n_q, n_k), heads, m)


# ---------------------------------------------------------------------------------------- core
def finish(
    block: tuple[int, int],
    shape: tuple[int, int],
    heads: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    cand: np.ndarray,
) -> BlockSparse:
    """Canonical ``BlockSparse`` from per-head ``(block_rows, block_cols, cand_id)`` triples.

    Blocks must be sorted by (row, column) without duplicates within a head. ``cand_id`` is -1 for
    a full block, else a row of ``cand`` (bool ``(m, bq, bk)``, out-of-range entries ignored).
    Empty masks drop their block, masks that fill the block's in-range area make it full, and the
    rest are deduplicated into a table sorted by content.
    """
    bq, bk = block
    n_q, n_k = shape
    nbq = cdiv(n_q, bq)
    rows = np.concatenate([np.asarray(h[0], dtype=np.int64) for h in heads])
    cols = np.concatenate([np.asarray(h[1], dtype=np.int64) for h in heads])
    cid = np.concatenate([np.asarray(h[2], dtype=np.int64) for h in heads])
    head_of = np.repeat(np.arange(len(heads)), [len(h[0]) for h in heads])
    nr = extents(rows * bq, bq, n_q)
    nc = extents(cols * bk, bk, n_k)
    mask_index = np.full(len(rows), -1, dtype=np.int64)
    keep = np.ones(len(rows), dtype=bool)
    part = np.flatnonzero(cid >= 0)
    table = np.zeros((0, bq, bk), dtype=bool)
    if len(part):
        # a candidate mask's status depends on the block's in-range extent: one check per pair
        pair = (cid[part] * (bq + 1) + nr[part]) * (bk + 1) + nc[part]
        upair, first, inv = np.unique(pair, return_index=True, return_inverse=True)
        if len(upair) * bq * bk > MASK_LIMIT:
            raise ValueError(
                f"the block form would hold {len(upair)} distinct partial-block masks of {bq}x{bk} "
                f"(> MASK_LIMIT = {MASK_LIMIT} bools): this pattern is not block-structured at "
                "this block size; keep its CSR form or use a smaller block"
            )
        src = part[first]
        m = cand[cid[src]] & rect(nr[src], nc[src], block)
        count = m.sum(axis=(1, 2))
        status = np.where(
            count == 0, 0, np.where(count == nr[src] * nc[src], 2, 1)
        )  # empty/full/partial
        partial = np.flatnonzero(status == 1)
        keys = pack(m[partial])
        ukeys, uinv = np.unique(keys, return_inverse=True)
        table = np.zeros((len(ukeys), bq, bk), dtype=bool)
        table[uinv] = m[partial]
        pair_index = np.full(len(upair), -1, dtype=np.int64)
        pair_index[partial] = uinv
        mask_index[part] = pair_index[inv]
        keep[part] = status[inv] != 0
    steps = np.zeros((len(heads), nbq), dtype=np.int64)
    np.add.at(steps, (head_of[keep], rows[keep]), 1)
    indptr = np.zeros((len(heads), nbq + 1), dtype=np.int64)
    indptr[:, 1:] = np.cumsum(steps.ravel()).reshape(len(heads), nbq) if nbq else 0
    if nbq:
        indptr[1:, 0] = indptr[:-1, -1]
    return BlockSparse(
        (bq, bk),
        (n_q, n_k),
        indptr,
        cols[keep].astype(np.int32),
        mask_index[keep].astype(np.int32),
        table,
    )


def _from_keys_merged(
    key: np.ndarray,
    cid: np.ndarray,
    cand: np.ndarray,
    block: tuple[int, int],
    shape: tuple[int, int],
    num_heads: int,
) -> BlockSparse:
    """Sort blocks by key ``(head, row, col)`` and OR duplicates together."""
    bq, bk = block
    nbq, nbk = cdiv(shape[0], bq), cdiv(shape[1], bk)
    ukey, inv = np.unique(key, return_inverse=True)
    ext = np.concatenate([cand, np.ones((1, bq, bk), dtype=bool)])  # the last row stands for "full"
    ids = np.where(cid >= 0, cid, len(cand))
    merged = np.zeros((len(ukey), bq, bk), dtype=bool)
    np.logical_or.at(merged, inv, ext[ids])
    heads = []
    for p in range(num_heads):
        sel = (ukey // (nbq * nbk)) == p
        k = ukey[sel] % (nbq * nbk)
        heads.append((k // nbk, k % nbk, np.flatnonzero(sel)))
    return finish(block, shape, heads, merged)
