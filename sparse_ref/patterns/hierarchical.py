"""Hierarchical attention: a local token window plus one mean-pooled summary key per block.

Keys ``0 .. n - 1`` are the tokens, keys ``n + b`` for ``b < ceil(n / block)`` are the block
summaries that :func:`hierarchical_keys` appends to ``k`` and ``v``; use the two together::

    k2, v2 = hierarchical_keys(k, v, block)
    out = sparse_ref.attention(q, k2, v2, hierarchical(n, block, left, right))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_nonneg_int, check_pos_int
from ..pattern import Pattern, csr_from_arrays
from ._ranges import progressions_csr

__all__ = ["hierarchical"]


def hierarchical(n: int, block: int, left: int, right: int) -> Pattern:
    """Shape ``(n, n + nb)``: ``i - left <= j <= i + right`` for ``j < n``, and every ``j >= n``.

    Two-level hierarchical attention in the style of H-Transformer-1D (Zhu & Soricut 2021,
    "H-Transformer-1D: Fast One-Dimensional Hierarchical Attention for Sequences") and
    Combiner/"global summary" schemes: each token sees its local window at full resolution and
    every block of ``block`` tokens through one summary key (``nb = ceil(n / block)`` summaries,
    the last one over a possibly partial block). Pair with :func:`hierarchical_keys`, which builds
    the ``n + nb`` keys and values.

    Args:
        n (int): number of tokens (queries).
        block (int >= 1): tokens per summary block.
        left (int >= 0), right (int >= 0): the token window, as in ``sliding_window``.

    Example:
        >>> p = hierarchical(4, 2, 0, 0)
        >>> p.shape, p.to_dense().astype(int).tolist()[1]
        ((4, 6), [0, 1, 0, 0, 1, 1])
    """
    n = check_nonneg_int(n, "n")
    block = check_pos_int(block, "block")
    left = check_nonneg_int(left, "left")
    right = check_nonneg_int(right, "right")
    nb = -(-n // block)
    n_k = n + nb
    i = np.arange(n, dtype=np.int64)
    lo = np.maximum(i - left, 0)
    start = np.stack([lo, np.full(n, n, dtype=np.int64)], axis=1)
    count = np.stack([np.minimum(i + right + 1, n) - lo, np.full(n, nb, dtype=np.int64)], axis=1)
    indptr, indices = progressions_csr(start, count, n_k)
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n, n_k))],
        family="hierarchical",
        params={"n": n, "block": block, "left": left, "right": right},
    )


def hierarchical_keys(k: Any, v: Any, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Append the mean of every block of ``block`` tokens to ``k`` and ``v`` (token axis ``-2``).

    ``k`` is ``(..., n, d)`` and ``v`` ``(..., n, d_v)`` with the same leading shape; returns
    ``(..., n + nb, d)`` and ``(..., n + nb, d_v)`` where row ``n + b`` is the mean of rows
    ``b * block .. min((b + 1) * block, n) - 1`` (the last block may be partial). The means are
    accumulated in float64 and returned in the input dtype (float16/32/64).

    Example:
        >>> k2, v2 = hierarchical_keys(np.arange(6.0).reshape(3, 2), np.ones((3, 1)), 2)
        >>> k2.tolist()
        [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [1.0, 2.0], [4.0, 5.0]]
    """
    k_arr = np.asarray(k)
    v_arr = np.asarray(v)
    block = check_pos_int(block, "block")
    for name, arr in (("k", k_arr), ("v", v_arr)):
        if arr.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., n, d), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{name} must have a floating dtype, got {arr.dtype}")
    if k_arr.shape[:-1] != v_arr.shape[:-1]:
        raise ValueError(
            f"k and v must agree on all but the last axis, got k {k_arr.shape} and v {v_arr.shape}"
        )
    n = k_arr.shape[-2]
    starts = np.arange(0, n, block)
    sizes = np.minimum(starts + block, n) - starts

    def extend(arr: np.ndarray) -> np.ndarray:
        if n == 0:
            return arr.copy()
        sums = np.add.reduceat(arr.astype(np.float64), starts, axis=-2)
        means = (sums / sizes[:, None]).astype(arr.dtype)
        return np.concatenate([arr, means], axis=-2)

    return extend(k_arr), extend(v_arr)
