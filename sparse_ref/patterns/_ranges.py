"""Vectorised CSR construction for patterns whose rows are unions of arithmetic progressions.

The local families are described once, as unions of :class:`~sparse_ref.blocks.Term`;
:func:`terms_pattern` derives their token CSR here (:func:`terms_csr`) or their block form
(``blocks.from_terms``).

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

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..blocks import Term, from_terms
from ..checks import block_param
from ..pattern import Pattern, csr_from_arrays, index_dtype

__all__ = ["BlockArg", "csr_pattern", "progressions_csr", "terms_csr", "terms_pattern"]

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


def terms_pattern(
    family: str,
    params: dict[str, Any],
    terms: Sequence[Term],
    shape: tuple[int, int],
    block: BlockArg,
) -> Pattern:
    """The pattern of a family described by the union of ``terms`` over ``shape``: token CSR
    (:func:`terms_csr`) when ``block`` is ``None``, else the block form built directly
    (``blocks.from_terms``), with ``params`` gaining ``block`` so that ``build`` rebuilds it."""
    if block is None:
        indptr, indices = terms_csr(terms, shape)
        heads = [csr_from_arrays(indptr, indices, shape)]
        return Pattern._new(heads, family=family, params=params)
    blocks = from_terms(terms, shape, block)
    params = {**params, "block": block_param(blocks.block)}
    return Pattern._new(None, blocks=blocks, family=family, params=params)


def terms_csr(terms: Sequence[Term], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Canonical CSR ``(indptr, indices)`` of the union of ``terms`` over ``shape``.

    In a row ``i`` a term is one run of keys ``max(lo_j, i + lo_d, 0) .. min(hi_j, i + hi_d,
    n_k - 1)`` (none outside ``lo_i <= i <= hi_i``). Rows are cut into segments where the same
    terms are active (a global query row is its own segment), and per segment the runs are sorted
    and merged into disjoint runs, vectorised over the rows, for :func:`progressions_csr`.
    """
    n_q, n_k = shape
    terms = [t for t in terms if t.lo_d <= t.hi_d]
    cuts = {0, n_q}
    for t in terms:
        cuts.update(min(max(v, 0), n_q) for v in (t.lo_i, t.hi_i + 1))
    edges = sorted(cuts)
    parts = []
    for r0, r1 in zip(edges[:-1], edges[1:], strict=True):
        active = [t for t in terms if t.lo_i <= r0 and r1 - 1 <= t.hi_i]
        parts.append(_merged_runs(np.arange(r0, r1, dtype=np.int64), active, n_k))
    width = max([1] + [lo.shape[1] for lo, _ in parts])
    start = np.zeros((n_q, width), dtype=np.int64)
    count = np.zeros((n_q, width), dtype=np.int64)
    for (lo, cnt), r0 in zip(parts, edges[:-1], strict=True):
        start[r0 : r0 + len(lo), : lo.shape[1]] = lo
        count[r0 : r0 + len(lo), : lo.shape[1]] = cnt
    return progressions_csr(start, count, n_k)


def _merged_runs(
    rows: np.ndarray, terms: Sequence[Term], n_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(start, count)`` ``(len(rows), S)``: the runs of ``terms`` in ``rows``, disjoint and
    ascending within each row (``count`` 0 for unused columns)."""
    if not terms:
        return np.zeros((len(rows), 0), dtype=np.int64), np.zeros((len(rows), 0), dtype=np.int64)
    i = rows[:, None]
    lo = np.maximum(np.array([[max(t.lo_j, 0) for t in terms]]), i + [[t.lo_d for t in terms]])
    hi = np.minimum(
        np.array([[min(t.hi_j, n_k - 1) for t in terms]]), i + [[t.hi_d for t in terms]]
    )
    if len(terms) == 1:  # one run per row (dense, causal, windows): nothing to merge
        return lo, np.maximum(hi - lo + 1, 0)
    order = np.argsort(lo, axis=1, kind="stable")
    lo, hi = np.take_along_axis(lo, order, axis=1), np.take_along_axis(hi, order, axis=1)
    out_lo = np.zeros_like(lo)
    out_hi = np.full_like(hi, -1)
    col = np.zeros(len(rows), dtype=np.int64)  # runs emitted so far per row
    cur_lo, cur_hi = lo[:, 0].copy(), hi[:, 0].copy()  # the run being grown (empty if lo > hi)
    every = np.arange(len(rows))
    for s in range(1, lo.shape[1]):
        nonempty = lo[:, s] <= hi[:, s]
        cur = cur_lo <= cur_hi
        new = nonempty & cur & (lo[:, s] > cur_hi + 1)  # disjoint from the run being grown
        out_lo[every[new], col[new]] = cur_lo[new]
        out_hi[every[new], col[new]] = cur_hi[new]
        col += new
        take = nonempty & (new | ~cur)  # start a new run from this one
        cur_lo[take], cur_hi[take] = lo[take, s], hi[take, s]
        grow = nonempty & cur & ~new
        cur_hi[grow] = np.maximum(cur_hi[grow], hi[grow, s])
    cur = cur_lo <= cur_hi
    out_lo[every[cur], col[cur]] = cur_lo[cur]
    out_hi[every[cur], col[cur]] = cur_hi[cur]
    used = int(col.max(initial=0)) + 1
    return out_lo[:, :used], np.maximum(out_hi - out_lo + 1, 0)[:, :used]


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
