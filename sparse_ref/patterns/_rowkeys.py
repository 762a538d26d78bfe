"""Vectorised CSR construction helpers for the Sparse Transformer and data-dependent families.

Complements :mod:`._ranges` (rows made of arithmetic progressions) with three shapes of row:

* :func:`rank_csr`: row ``i`` holds ``counts[i]`` keys given by a vectorised ``key(row, rank)``;
* :func:`union_csr`: the row-wise union of several CSR structures of one shape;
* :func:`same_group_csr`: ``i`` sees ``j`` when ``q_group[i] == k_group[j]`` (buckets, clusters).

All return ``(indptr int64, indices)`` with canonical (sorted, unique) rows and the canonical index
dtype, ready for :func:`sparse_ref.pattern.csr_from_arrays`. No Python loop runs per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..pattern import index_dtype

__all__ = ["rank_csr", "same_group_csr", "union_csr"]


def _indptr(counts: np.ndarray) -> np.ndarray:
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def rank_csr(
    counts: np.ndarray, n_k: int, key: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i`` holds ``key(i, r)`` for ``r in range(counts[i])``.

    ``key`` receives two int64 arrays of length ``nnz`` (row and rank of every entry) and returns
    the keys; the caller guarantees they come out strictly increasing in ``r`` and in ``[0, n_k)``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    indptr = _indptr(counts)
    nnz = int(indptr[-1])
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    ranks = np.arange(nnz, dtype=np.int64) - indptr[rows]
    indices = np.asarray(key(rows, ranks)).astype(index_dtype(nnz, n_k), copy=False)
    return indptr, indices


def union_csr(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], n_q: int, n_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise union of CSR structures ``(indptr, indices)`` of shape ``(n_q, n_k)``."""
    if len(parts) == 1:
        indptr, indices = parts[0]
        return np.asarray(indptr, dtype=np.int64), indices
    flat = np.concatenate(
        [
            np.repeat(np.arange(n_q, dtype=np.int64), np.diff(ip)) * n_k + ix.astype(np.int64)
            for ip, ix in parts
        ]
    )
    flat.sort()  # by row, then key
    if len(flat) > 1:
        flat = flat[np.concatenate(([True], flat[1:] != flat[:-1]))]
    rows = flat // max(n_k, 1)
    indptr = _indptr(np.bincount(rows, minlength=n_q))
    return indptr, (flat - rows * n_k).astype(index_dtype(len(flat), n_k))


def same_group_csr(
    q_group: np.ndarray, k_group: np.ndarray, causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Row ``i`` holds every ``j`` with ``k_group[j] == q_group[i]`` (and ``j <= i`` if causal).

    Groups are non-negative ints. Keys are listed group by group in ascending order, so each row
    is one contiguous slice of ``order`` (the keys sorted by ``(group, j)``); causal rows keep the
    prefix of that slice up to ``i``.
    """
    q_group = np.asarray(q_group, dtype=np.int64)
    k_group = np.asarray(k_group, dtype=np.int64)
    n_q, n_k = len(q_group), len(k_group)
    num_groups = int(max(q_group.max(initial=-1), k_group.max(initial=-1))) + 1
    order = np.argsort(k_group, kind="stable")  # keys by group, ascending j inside a group
    group_start = _indptr(np.bincount(k_group, minlength=num_groups))
    lo = group_start[q_group]
    if causal:
        sorted_code = k_group[order] * (n_k + 1) + order
        last = np.minimum(np.arange(n_q, dtype=np.int64), n_k)  # i >= n_k sees the whole group
        hi = np.searchsorted(sorted_code, q_group * (n_k + 1) + last, side="right")
    else:
        hi = group_start[q_group + 1]
    return rank_csr(hi - lo, n_k, lambda rows, ranks: order[lo[rows] + ranks])
