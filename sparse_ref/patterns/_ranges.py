"""Vectorised CSR construction for patterns whose rows are unions of arithmetic progressions.

Most catalog families have rows made of a few runs of keys: a window is one run ``[lo, hi)``, a
strided row is one progression ``lo, lo + s, lo + 2s, ...``, a sink row is two runs. The
builders describe every row by a ``(n_q, S)`` table of progressions (``start``, ``count``, common
``step``) and :func:`progressions_csr` turns the table into canonical CSR arrays without a
Python loop per row:

* ``indptr`` comes from the row sums of ``count``;
* ``indices`` is allocated once at its final size and dtype, then filled in place. Consecutive rows
  whose progression lengths agree form a rectangular block of the output (the bulk of a sliding
  window), filled with one broadcast ``np.add`` per progression column. The remaining "ragged" rows
  (window edges, causal triangles) are filled by the usual ``arange - repeat`` trick per contiguous
  block of ragged rows.

The broadcast path writes each index once (about 0.7 ns per int32 key here); the ragged path costs
about three passes, so it is kept for the rows where rectangles do not pay.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import blocks as _blocks
from ..pattern import Pattern, csr_from_arrays, index_dtype

__all__ = ["BlockArg", "block_pattern", "csr_pattern", "progressions_csr"]

#: The ``block`` argument of the structured families: ``None`` (token CSR), an int or ``(bq, bk)``.
BlockArg = int | tuple[int, int] | None

# A run of equal-length rows is filled as a rectangle when each broadcast call it costs writes at
# least this many keys; smaller runs go to the ragged path, so Python-level calls stay
# O(nnz / 2**16).
_MIN_KEYS_PER_CALL = 1 << 16

# The ragged path works by chunks of rows of about this many keys, so its temporaries stay small.
_RAGGED_CHUNK = 1 << 22


def progressions_csr(
    start: np.ndarray, count: np.ndarray, n_k: int, step: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` of rows made of progressions ``start + step * arange(count)``.

    ``start`` and ``count`` are int arrays of shape ``(n_q,)`` or ``(n_q, S)``; row ``i`` holds the
    keys of its ``S`` progressions in column order. The caller guarantees that, within a row, the
    keys come out strictly increasing and in ``[0, n_k)`` (columns ascending and disjoint);
    ``count <= 0`` means an empty progression. ``indptr`` is int64, ``indices`` has the canonical
    dtype (int32 unless ``nnz`` or ``n_k`` needs int64).
    """
    start = np.asarray(start, dtype=np.int64)
    count = np.maximum(np.asarray(count, dtype=np.int64), 0)
    if start.ndim == 1:
        start, count = start[:, None], count[:, None]
    n_q = count.shape[0]
    row_nnz = count.sum(axis=1)
    indptr = np.zeros(n_q + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    nnz = int(indptr[-1])
    dtype = index_dtype(nnz, n_k)
    indices = np.empty(nnz, dtype=dtype)
    if nnz == 0:
        return indptr, indices

    # Runs of consecutive rows with identical progression lengths.
    if n_q > 1:
        changes = np.flatnonzero((count[1:] != count[:-1]).any(axis=1)) + 1
    else:
        changes = np.zeros(0, dtype=np.int64)
    run_lo = np.concatenate(([0], changes))
    run_hi = np.concatenate((changes, [n_q]))
    cols_used = (count[run_lo] > 0).sum(axis=1)
    run_keys = (run_hi - run_lo) * row_nnz[run_lo]
    rect = (run_hi - run_lo >= 2) & (run_keys >= _MIN_KEYS_PER_CALL * np.maximum(cols_used, 1))

    ragged_from = 0  # first row not yet filled
    for r in np.flatnonzero(rect):
        lo, hi = int(run_lo[r]), int(run_hi[r])
        if ragged_from < lo:
            _fill_ragged(indices, indptr, start, count, ragged_from, lo, step)
        block = indices[indptr[lo] : indptr[hi]].reshape(hi - lo, -1)
        offset = 0
        for s in range(count.shape[1]):
            length = int(count[lo, s])
            if length:
                np.add(
                    start[lo:hi, s, None].astype(dtype),
                    np.arange(0, length * step, step, dtype=dtype),
                    out=block[:, offset : offset + length],
                )
                offset += length
        ragged_from = hi
    if ragged_from < n_q:
        _fill_ragged(indices, indptr, start, count, ragged_from, n_q, step)
    return indptr, indices


def csr_pattern(
    family: str, params: dict[str, Any], start: Any, count: Any, n_k: int, step: int = 1
) -> Pattern:
    """The token-CSR pattern of :func:`progressions_csr` rows, ``n_q = len(start)``."""
    indptr, indices = progressions_csr(start, count, n_k, step)
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (len(indptr) - 1, n_k))], family=family, params=params
    )


def block_pattern(family: str, params: dict[str, Any], block: BlockArg, **args: Any) -> Pattern:
    """The block-form pattern of ``family``, built by ``sparse_ref.blocks.<family>(**args,
    block=block)`` without token CSR; ``params`` gains ``block`` so that ``build`` rebuilds it."""
    blocks = getattr(_blocks, family)(**args, block=block)
    bq, bk = blocks.block
    params = {**params, "block": bq if bq == bk else [bq, bk]}
    return Pattern._new(None, blocks=blocks, family=family, params=params)


def _fill_ragged(
    indices: np.ndarray,
    indptr: np.ndarray,
    start: np.ndarray,
    count: np.ndarray,
    row_lo: int,
    row_hi: int,
    step: int,
) -> None:
    """Fill rows ``[row_lo, row_hi)`` by chunks of about ``_RAGGED_CHUNK`` keys (bounded temps)."""
    while row_lo < row_hi:
        end = int(np.searchsorted(indptr, indptr[row_lo] + _RAGGED_CHUNK, side="right")) - 1
        end = min(max(end, row_lo + 1), row_hi)
        _fill_rows(
            indices[indptr[row_lo] : indptr[end]], start[row_lo:end], count[row_lo:end], step
        )
        row_lo = end


def _fill_rows(out: np.ndarray, start: np.ndarray, count: np.ndarray, step: int) -> None:
    """``out`` = the progressions of ``(start, count)`` (rows x columns) back to back."""
    m = len(out)
    if m == 0:
        return
    seg_start, seg_count = start.ravel(), count.ravel()
    seg_offset = np.cumsum(seg_count) - seg_count  # where each progression begins in `out`
    # Intermediates stay in the output dtype unless step * m could overflow it.
    work = out.dtype if m * step <= np.iinfo(out.dtype).max else np.dtype(np.int64)
    base = np.repeat((seg_start - step * seg_offset).astype(work), seg_count)
    np.add(base, np.arange(0, m * step, step, dtype=work), out=out, casting="unsafe")
