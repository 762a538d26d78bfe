"""Random patterns: each query row samples keys uniformly (i query, j key)."""

from __future__ import annotations

import numpy as np

from ..checks import check_bool, check_nonneg_int, resolve_n_k
from ..pattern import Pattern, csr_from_arrays, index_dtype

__all__ = ["random"]


def random(
    n_q: int,
    n_k: int | None = None,
    per_row: int | None = None,
    seed: int = 0,
    causal: bool = False,
    include_self: bool = True,
) -> Pattern:
    """Row ``i``: ``min(per_row, |A_i|)`` distinct keys drawn uniformly from ``A_i``, plus ``i``.

    Random attention of BigBird (Zaheer et al. 2020), at token level. ``A_i`` is the set of
    admissible keys: ``[0, n_k)``, or ``j <= i`` if ``causal``, minus ``j == i`` when
    ``include_self``. The draw is a uniform random subset of ``A_i`` (all of ``A_i`` when it has at
    most ``per_row`` keys); ``include_self`` then adds the diagonal ``j == i`` when ``i < n_k``, so
    such rows hold ``min(per_row, |A_i|) + 1`` keys. Randomness comes from
    ``numpy.random.Generator(PCG64(seed))`` only: the same arguments give the same pattern (on a
    given NumPy version).

    Args:
        n_q (int): number of queries.
        n_k (int | None): number of keys, default ``n_q``.
        per_row (int >= 0): random keys per row (required).
        seed (int >= 0): seed of the PCG64 generator.
        causal (bool): admissible keys are ``j <= i`` (top-left alignment).
        include_self (bool): add ``j == i`` on top of the draws.

    Example:
        >>> mask = random(6, per_row=2, seed=1).to_dense()
        >>> mask.sum(axis=1).tolist(), bool(mask.diagonal().all())
        ([3, 3, 3, 3, 3, 3], True)
    """
    n_q, n_k = resolve_n_k(n_q, n_k)
    if per_row is None:
        raise TypeError("per_row is required")
    per_row = check_nonneg_int(per_row, "per_row")
    seed = check_nonneg_int(seed, "seed")
    causal = check_bool(causal, "causal")
    include_self = check_bool(include_self, "include_self")
    rng = np.random.Generator(np.random.PCG64(seed))

    # The draw for row i: ranks r in [0, size[i]) of the admissible keys other than self; rank r is
    # key r + (r >= i) when self is excluded, key r otherwise.
    i = np.arange(n_q, dtype=np.int64)
    has_self = (i < n_k) if include_self else np.zeros(n_q, dtype=bool)
    size = (np.minimum(i + 1, n_k) if causal else np.full(n_q, n_k, dtype=np.int64)) - has_self
    k = min(per_row, n_k)
    dtype = index_dtype(n_q * (k + 1), n_k)
    keys = _sample_ranks(rng, size, k, dtype)  # (n_q, k) sorted ranks, padded with `pad`
    pad = np.iinfo(dtype).max
    if include_self:
        keys += (keys >= i[:, None]) & has_self[:, None] & (keys != pad)
        keys = np.concatenate([keys, np.where(has_self, i, pad).astype(dtype)[:, None]], axis=1)
        keys.sort(axis=1)
    row_nnz = np.minimum(size, k) + has_self
    indptr = np.zeros(n_q + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    indices = keys.ravel() if indptr[-1] == keys.size else keys[keys != pad]
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n_q, n_k))],
        family="random",
        params={
            "n_q": n_q,
            "n_k": n_k,
            "per_row": per_row,
            "seed": seed,
            "causal": causal,
            "include_self": include_self,
        },
    )


def _sample_ranks(
    rng: np.random.Generator, size: np.ndarray, k: int, dtype: type[np.signedinteger]
) -> np.ndarray:
    """Per row ``r``, a uniform random ``min(k, size[r])``-subset of ``[0, size[r])``, sorted.

    Returns ``(rows, k)`` of ``dtype``; rows with fewer than ``k`` ranks are padded at the end with
    ``iinfo(dtype).max``. Rows with ``size <= k`` take every rank; rows with ``k < size < 2k`` draw
    the ``size - k`` ranks to leave out; larger rows draw their ``k`` ranks directly (both with
    :func:`_distinct`, uniform by symmetry).
    """
    pad = np.iinfo(dtype).max
    out = np.empty((len(size), k), dtype=dtype)
    col = np.arange(k, dtype=dtype)[None, :]
    every = np.flatnonzero(size <= k)
    out[every] = np.where(col < size[every, None], col, pad)
    direct = np.flatnonzero(size >= 2 * k)
    if len(direct) and k:
        out[direct] = _distinct(rng, size[direct], np.full(len(direct), k), dtype)
    leave_out = np.flatnonzero((size > k) & (size < 2 * k))
    if len(leave_out):
        m = size[leave_out]
        dropped = _distinct(rng, m, m - k, dtype)
        keep = np.arange(int(m.max()))[None, :] < m[:, None]
        rows = np.repeat(np.arange(len(m)), dropped.shape[1])
        drop = dropped.ravel()
        real = drop != pad
        keep[rows[real], drop[real]] = False
        out[leave_out] = np.nonzero(keep)[1].reshape(len(m), k)  # exactly k kept per row
    return out


def _distinct(
    rng: np.random.Generator, size: np.ndarray, count: np.ndarray, dtype: type[np.signedinteger]
) -> np.ndarray:
    """Per row ``r``, a uniform ``count[r]``-subset of ``[0, size[r])`` (``count <= size / 2``).

    Returns ``(rows, count.max())`` sorted, padded at the end with ``iinfo(dtype).max``. Draws
    ``L`` values per row with replacement, ``L`` sized so that about ``count`` plus four standard
    deviations of the number of repeats are distinct; sorts; keeps the distinct values ``D``; drops
    ``|D| - count`` of them chosen uniformly (:func:`_distinct_by_rounds`; few, so cheap). Every
    step commutes with relabelling the values, so the result is a uniform subset. Rows with
    ``|D| < count`` (rare) are drawn again.
    """
    pad = np.iinfo(dtype).max
    rows = len(size)
    out = np.full((rows, int(count.max(initial=0))), pad, dtype=dtype)
    if out.size == 0:
        return out
    # L draws show size * (1 - exp(-L / size)) distinct values on average.
    repeats = -size * np.log1p(-count / size) - count  # expected repeats before `count` distinct
    target = np.minimum(count + 4 * np.sqrt(repeats) + 2, (count + size) / 2)
    draws = np.maximum(np.ceil(-size * np.log1p(-target / size)), count).astype(np.int64)
    width = int(draws.max())
    high = int(size[0]) if (size == size[0]).all() else size[:, None].astype(dtype)
    x = rng.integers(0, high, size=(rows, width), dtype=dtype)
    if (draws < width).any():
        x[np.arange(width)[None, :] >= draws[:, None]] = pad
    x.sort(axis=1)
    keep = np.empty(x.shape, dtype=bool)  # the first copy of each drawn value
    keep[:, 0] = x[:, 0] != pad
    np.not_equal(x[:, 1:], x[:, :-1], out=keep[:, 1:])
    keep[:, 1:] &= x[:, 1:] != pad
    have = np.count_nonzero(keep, axis=1)
    excess = have - count
    trim = np.flatnonzero(excess > 0)
    if len(trim):  # drop `excess` of the `have` distinct values, chosen by rank
        ranks = _distinct_by_rounds(rng, have[trim], excess[trim], dtype)
        drop = np.zeros((len(trim), width + 1), dtype=bool)
        r = np.repeat(np.arange(len(trim)), ranks.shape[1])
        drop[r, np.minimum(ranks.ravel(), width)] = True  # pads land in the spare last column
        sub = keep if len(trim) == rows else keep[trim]
        rank_of = np.cumsum(sub, axis=1, dtype=np.int32)
        rank_of -= 1
        np.maximum(rank_of, 0, out=rank_of)
        sub &= ~np.take_along_axis(drop, rank_of, axis=1)
        if sub is not keep:
            keep[trim] = sub
    done = excess >= 0
    col = np.arange(out.shape[1])[None, :]
    if done.all():
        out[col < count[:, None]] = x[keep]
        return out
    sub_out = out[done]
    sub_out[col < count[done, None]] = x[done][keep[done]]
    out[done] = sub_out
    again = np.flatnonzero(~done)
    redo = _distinct(rng, size[again], count[again], dtype)
    out[again[:, None], np.arange(redo.shape[1])] = redo
    return out


def _distinct_by_rounds(
    rng: np.random.Generator, size: np.ndarray, count: np.ndarray, dtype: type[np.signedinteger]
) -> np.ndarray:
    """Like :func:`_distinct`, for ``count`` small next to ``size``: draw, then redraw repeats.

    The kept values are the first ``count`` distinct values of an i.i.d. uniform sequence, hence a
    uniform subset. Each round leaves about ``count / size`` as many repeats as the last; later
    rounds touch only the rows that still have one.
    """
    pad = np.iinfo(dtype).max
    width = int(count.max(initial=0))
    draws = rng.integers(0, size[:, None].astype(dtype), size=(len(size), width), dtype=dtype)
    draws[np.arange(width)[None, :] >= count[:, None]] = pad
    todo = np.arange(len(size))
    rows = draws  # the first round works in place, later ones on copies of the rows in `todo`
    while True:
        rows.sort(axis=1)
        repeat = np.zeros(rows.shape, dtype=bool)
        repeat[:, 1:] = (rows[:, 1:] == rows[:, :-1]) & (rows[:, 1:] != pad)
        r, c = np.nonzero(repeat)
        if rows is not draws:
            draws[todo] = rows
        if not len(r):
            return draws
        rows[r, c] = rng.integers(0, size[todo[r]], dtype=dtype)
        again = np.unique(r)
        todo, rows = todo[again], rows[again]
