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

A progression may also copy a slice of a key list (``extra``) instead of counting keys: that is
how :func:`terms_csr` writes Longformer's scattered global columns, a few slices per row whatever
their number, instead of one progression per global run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..blocks import Term, from_terms
from ..blocks.form import ragged_arange
from ..checks import block_param
from ..pattern import Pattern, csr_from_arrays, index_dtype

__all__ = ["BlockArg", "csr_pattern", "progressions_csr", "terms_csr", "terms_pattern"]

#: The ``block`` argument of the structured families: ``None`` (token CSR), an int or ``(bq, bk)``.
BlockArg = int | tuple[int, int] | None

# A run of equal-length rows is filled as a rectangle when each broadcast call it costs writes at
# least this many keys; smaller runs go to the ragged path, so Python-level calls stay
# O(nnz / 2**16).
_MIN_KEYS_PER_CALL = 1 << 16

# ... or a sixteenth of that where the ragged path would gather from ``extra`` (about 4 ns a key
# here against about 1 ns for the counted keys, so rectangles pay with fewer keys per call).
_GATHER_SHIFT = 4

# The ragged path works by chunks of rows of about this many keys, so its temporaries stay small.
_RAGGED_CHUNK = 1 << 22


def progressions_csr(
    start: np.ndarray,
    count: np.ndarray,
    n_k: int,
    step: int = 1,
    *,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` of rows made of progressions ``start + step * arange(count)``.

    ``start`` and ``count`` are int arrays of shape ``(n_q,)`` or ``(n_q, S)``; row ``i`` holds the
    keys of its ``S`` progressions in column order. The caller guarantees that, within a row, the
    keys come out strictly increasing and in ``[0, n_k)`` (columns ascending and disjoint);
    ``count <= 0`` means an empty progression. ``indptr`` is int64, ``indices`` has the canonical
    dtype (int32 unless ``nnz`` or ``n_k`` needs int64).

    ``extra`` (1-D int keys in ``[0, n_k)``) lets a progression copy a slice of a key list instead
    of counting: a position ``p >= n_k`` stands for the key ``extra[p - n_k]`` (each progression
    lies wholly below ``n_k`` or wholly at or above it). :func:`terms_csr` stores scattered global
    columns this way, one slice per gap between a row's window runs.
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
    source = None  # key of every position: identity below n_k, then `extra`
    if extra is not None and len(extra):
        source = np.concatenate((np.arange(n_k, dtype=dtype), np.asarray(extra, dtype=dtype)))

    # Runs of consecutive rows with identical progression lengths.
    if n_q > 1:
        changes = np.flatnonzero((count[1:] != count[:-1]).any(axis=1)) + 1
    else:
        changes = np.zeros(0, dtype=np.int64)
    run_lo = np.concatenate(([0], changes))
    run_hi = np.concatenate((changes, [n_q]))
    cols_used = (count[run_lo] > 0).sum(axis=1)
    run_keys = (run_hi - run_lo) * row_nnz[run_lo]
    min_keys = np.full(len(run_lo), _MIN_KEYS_PER_CALL)
    if source is not None:  # the ragged fill of slices of `extra` gathers: rectangles pay sooner
        gathers = ((start[run_lo] >= n_k) & (count[run_lo] > 0)).any(axis=1)
        min_keys[gathers] >>= _GATHER_SHIFT
    rect = (run_hi - run_lo >= 2) & (run_keys >= min_keys * np.maximum(cols_used, 1))

    ragged_from = 0  # first row not yet filled
    for r in np.flatnonzero(rect):
        lo, hi = int(run_lo[r]), int(run_hi[r])
        if ragged_from < lo:
            _fill_ragged(indices, indptr, start, count, ragged_from, lo, step, source, n_k)
        block = indices[indptr[lo] : indptr[hi]].reshape(hi - lo, -1)
        offset = 0
        for s in range(count.shape[1]):
            length = int(count[lo, s])
            if length:
                first = start[lo:hi, s]
                out = block[:, offset : offset + length]
                if source is None or int(first.max()) < n_k:  # counted keys
                    np.add(
                        first[:, None].astype(dtype),
                        np.arange(0, length * step, step, dtype=dtype),
                        out=out,
                    )
                elif (first == first[0]).all():  # one slice of `extra`, repeated down the rows
                    out[...] = source[first[0] + np.arange(0, length * step, step)]
                else:
                    out[...] = source[first[:, None] + np.arange(0, length * step, step)]
                offset += length
        ragged_from = hi
    if ragged_from < n_q:
        _fill_ragged(indices, indptr, start, count, ragged_from, n_q, step, source, n_k)
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
    n_k - 1)`` (none outside ``lo_i <= i <= hi_i``). A term is *constant* when its diagonal bounds
    never bind in its rows (Longformer's global rows and columns, a prefix): its run is the same in
    every row. Rows are grouped by the terms active in them; per group the constant runs are merged
    once into a sorted key list ``C``, the other (*diagonal*) runs are merged per row, vectorised
    over the rows, and each row becomes ``C`` cut around its diagonal runs: ``C[:p1], run 1,
    C[q1:p2], ..., C[qd:]`` for :func:`progressions_csr`. The work is linear in the number of terms
    and in ``n_q`` times the number of diagonal terms (1 or 2 in the catalog), not in ``n_q`` times
    the number of terms.
    """
    n_q, n_k = shape
    t = np.array(terms, dtype=np.int64).reshape(-1, 6)
    lo_d, hi_d = t[:, 0], t[:, 1]
    j0, j1 = np.maximum(t[:, 2], 0), np.minimum(t[:, 3], n_k - 1)
    i0, i1 = np.maximum(t[:, 4], 0), np.minimum(t[:, 5], n_q - 1)
    # Keep the terms that reach a key: the band meets the term's rectangle.
    keep = (lo_d <= hi_d) & (i0 <= i1) & (j0 <= j1) & (j0 - i1 <= hi_d) & (j1 - i0 >= lo_d)
    lo_d, hi_d, j0, j1, i0, i1 = (a[keep] for a in (lo_d, hi_d, j0, j1, i0, i1))
    constant = (i1 + lo_d <= j0) & (i0 + hi_d >= j1)
    full = constant & (j0 == 0) & (j1 == n_k - 1)

    # Row segments: rows between consecutive term row bounds see the same terms.
    edges = np.unique(np.concatenate(([0, n_q], i0, i1 + 1)))
    n_seg = len(edges) - 1
    seg0, seg1 = np.searchsorted(edges, i0), np.searchsorted(edges, i1 + 1)
    # A segment inside the rows of a full constant term is made of full rows, whatever else.
    full_depth = np.zeros(n_seg + 1, dtype=np.int64)
    np.add.at(full_depth, seg0[full], 1)
    np.add.at(full_depth, seg1[full], -1)
    seg_full = np.cumsum(full_depth[:-1]) > 0
    # Group the other segments by the terms that are active in some rows only.
    everywhere = (seg0 == 0) & (seg1 == n_seg)
    part = np.flatnonzero(~everywhere & ~full)
    pair_seg = ragged_arange(seg0[part], seg1[part] - seg0[part])
    pair_term = np.repeat(part, seg1[part] - seg0[part])
    order = np.argsort(pair_seg, kind="stable")
    pair_seg, pair_term = pair_seg[order], pair_term[order]
    bounds = np.searchsorted(pair_seg, np.arange(n_seg + 1))
    groups: dict[bytes, list[int]] = {}
    for s in np.flatnonzero(~seg_full).tolist():
        groups.setdefault(pair_term[bounds[s] : bounds[s + 1]].tobytes(), []).append(s)

    tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, start, count) per group
    extra = []  # the groups' constant key lists that are not one run, from position n_k on
    n_extra = 0
    if seg_full.any():
        segs = np.flatnonzero(seg_full)
        rows = ragged_arange(edges[segs], edges[segs + 1] - edges[segs])
        tables.append((rows, np.zeros((len(rows), 1), np.int64), np.full((len(rows), 1), n_k)))
    for sig, segs_list in groups.items():
        segs = np.array(segs_list, dtype=np.int64)
        rows = ragged_arange(edges[segs], edges[segs + 1] - edges[segs])
        active = np.concatenate((np.flatnonzero(everywhere), np.frombuffer(sig, dtype=np.int64)))
        diag = [
            Term(int(lo_d[k]), int(hi_d[k]), int(j0[k]), int(j1[k]))
            for k in active
            if not constant[k]
        ]
        start, count = _merged_runs(rows, diag, n_k)
        const = active[constant[active]]
        keys = ragged_arange(*_union_runs(j0[const], j1[const]))
        if len(keys):
            start, count = _joined(*_cut_keys(start, count, keys, n_k + n_extra), n_k)
            if keys[-1] - keys[0] != len(keys) - 1:  # some slices may need the lookup
                extra.append(keys)
                n_extra += len(keys)
        tables.append((rows, start, count))

    width = max([1] + [g_start.shape[1] for _, g_start, _ in tables])
    all_start = np.zeros((n_q, width), dtype=np.int64)
    all_count = np.zeros((n_q, width), dtype=np.int64)
    for rows, g_start, g_count in tables:
        w = g_start.shape[1]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # consecutive rows: no scatter
            r = slice(int(rows[0]), int(rows[-1]) + 1)
            all_start[r, :w], all_count[r, :w] = g_start, g_count
        else:
            all_start[rows, :w], all_count[rows, :w] = g_start, g_count
    return progressions_csr(
        all_start, all_count, n_k, extra=np.concatenate(extra) if extra else None
    )


def _union_runs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(start, count)`` of the disjoint ascending runs covering the union of ``[lo, hi]``."""
    if len(lo) == 0:
        return lo, hi
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], np.maximum.accumulate(hi[order])
    first = np.concatenate(([True], lo[1:] > hi[:-1] + 1))  # starts a new run
    last = np.concatenate((first[1:], [True]))
    return lo[first], hi[last] - lo[first] + 1


def _cut_keys(
    start: np.ndarray, count: np.ndarray, keys: np.ndarray, base: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of disjoint ascending runs ``(start, count)`` ``(m, d)`` united with the sorted unique
    keys ``keys``: ``(m, 2d + 1)`` pieces ``keys[:p1], run 1, keys[q1:p2], ..., keys[qd:]``, where
    ``keys[q:p]`` are the keys between two runs.

    A slice of ``keys`` that is a run of consecutive keys is stored as that run (counted, no
    lookup); any other as positions ``base + q ...`` (:func:`progressions_csr`'s ``extra``, with
    ``keys`` placed at ``base``).
    """
    m, d = start.shape
    out_start = np.zeros((m, 2 * d + 1), dtype=np.int64)
    out_count = np.zeros((m, 2 * d + 1), dtype=np.int64)
    q = np.zeros(m, dtype=np.int64)  # keys before q are placed
    for k in range(d + 1):
        if k < d:
            a, c = start[:, k], count[:, k]
            run = c > 0
            p = np.where(run, np.searchsorted(keys, a), q)
            out_start[:, 2 * k + 1], out_count[:, 2 * k + 1] = a, c
        else:
            p = np.full(m, len(keys), dtype=np.int64)
        out_count[:, 2 * k] = p - q
        first = keys[np.minimum(q, len(keys) - 1)]
        is_run = keys[np.maximum(p - 1, 0)] - first == p - 1 - q
        out_start[:, 2 * k] = np.where(is_run, first, base + q)
        if k < d:
            q = np.where(run, np.searchsorted(keys, a + c), p)
    return out_start, out_count


def _joined(start: np.ndarray, count: np.ndarray, n_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pieces ``(start, count)`` ``(m, S)`` with adjacent counted runs joined and empty pieces
    moved to the end: a prefix next to a causal run is one run, as :func:`_merged_runs` gives,
    so that :func:`progressions_csr` finds the same rectangles."""
    m, width = start.shape
    out_start = np.zeros_like(start)
    out_count = np.zeros_like(count)
    used = np.zeros(m, dtype=np.int64)  # pieces written per row
    every = np.arange(m)
    for s in range(width):
        st, cnt = start[:, s], count[:, s]
        last = np.maximum(used - 1, 0)
        prev_start, prev_count = out_start[every, last], out_count[every, last]
        join = (cnt > 0) & (used > 0) & (st < n_k) & (prev_start < n_k)
        join &= prev_start + prev_count == st
        out_count[every[join], last[join]] += cnt[join]
        new = (cnt > 0) & ~join
        out_start[every[new], used[new]] = st[new]
        out_count[every[new], used[new]] = cnt[new]
        used += new
    width = max(int(used.max(initial=0)), 1)
    return out_start[:, :width], out_count[:, :width]


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
    source: np.ndarray | None,
    n_k: int,
) -> None:
    """Fill rows ``[row_lo, row_hi)`` by chunks of about ``_RAGGED_CHUNK`` keys (bounded temps)."""
    while row_lo < row_hi:
        end = int(np.searchsorted(indptr, indptr[row_lo] + _RAGGED_CHUNK, side="right")) - 1
        end = min(max(end, row_lo + 1), row_hi)
        _fill_rows(
            indices[indptr[row_lo] : indptr[end]],
            start[row_lo:end],
            count[row_lo:end],
            step,
            source,
            n_k,
        )
        row_lo = end


def _fill_rows(
    out: np.ndarray,
    start: np.ndarray,
    count: np.ndarray,
    step: int,
    source: np.ndarray | None,
    n_k: int,
) -> None:
    """``out`` = the progressions of ``(start, count)`` (rows x columns) back to back; positions
    are looked up in ``source`` when a progression starts at or above ``n_k`` (``extra``)."""
    m = len(out)
    if m == 0:
        return
    seg_start, seg_count = start.ravel(), count.ravel()
    if source is not None and not (seg_start[seg_count > 0] >= n_k).any():
        source = None
    seg_offset = np.cumsum(seg_count) - seg_count  # where each progression begins in `out`
    # Intermediates stay in the output dtype unless step * m could overflow it.
    top = max(m * step, 0 if source is None else len(source))
    work = out.dtype if top <= np.iinfo(out.dtype).max else np.dtype(np.int64)
    base = np.repeat((seg_start - step * seg_offset).astype(work), seg_count)
    if source is None:
        np.add(base, np.arange(0, m * step, step, dtype=work), out=out, casting="unsafe")
    else:
        base += np.arange(0, m * step, step, dtype=work)
        np.take(source, base, out=out, mode="clip")  # positions are valid; "raise" buffers
