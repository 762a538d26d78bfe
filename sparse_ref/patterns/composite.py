"""Composite patterns built from column sets and diagonals (i query, j key)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_bool, check_index_list, check_nonneg_int, int_sequence
from ..pattern import Pattern, csr_from_arrays, index_dtype

__all__ = ["vertical_slash"]


def _offsets(values: Any, name: str, n: int, causal: bool) -> np.ndarray:
    """Diagonal offsets ``i - j`` in ``(-n, n)`` (``[0, n)`` if causal) -> sorted unique int64."""
    arr = int_sequence(values, name)
    if arr.size == 0:
        return arr
    lo = 0 if causal else -n + 1
    bad = (arr < lo) | (arr >= max(n, 1))
    if bad.any():
        where = "[0, n)" if causal else "(-n, n)"
        raise ValueError(
            f"{name} out of range: offset {int(arr[np.argmax(bad)])} is not in {where} for n = {n}"
            + (" (causal=True needs i - j >= 0)" if causal and arr[np.argmax(bad)] < 0 else "")
        )
    return np.unique(arr)


def _as_list(values: Any) -> list[int]:
    return [int(v) for v in np.asarray(values, dtype=np.int64).ravel()]


def vertical_slash(n: int, vertical: Any, slash: Any, causal: bool = True) -> Pattern:
    """``j in vertical`` or ``i - j in slash`` (and ``j <= i`` if causal): columns plus diagonals.

    The "vertical-slash" head pattern of MInference (Jiang et al. 2024, "MInference 1.0:
    Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention"): a few key
    columns every query sees (``vertical``) and a few diagonals at fixed offsets (``slash``;
    offset 0 is the main diagonal, ``k`` the ``k``-th below it). MInference picks the indices per
    head from the data; here they are given.

    Args:
        n (int): number of tokens (square pattern).
        vertical (sequence of int): key columns in ``[-n, n)``, negative counting from the end.
        slash (sequence of int): diagonal offsets ``i - j``, in ``[0, n)`` if causal, else in
            ``(-n, n)`` (negative offsets lie above the main diagonal).
        causal (bool): keep only ``j <= i``.

    Example:
        >>> vertical_slash(4, [0], [0]).to_dense().astype(int).tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
    """
    n = check_nonneg_int(n, "n")
    causal = check_bool(causal, "causal")
    cols = check_index_list(vertical, "vertical", n)
    offs = _offsets(slash, "slash", n, causal)
    params = {"n": n, "vertical": _as_list(vertical), "slash": _as_list(slash), "causal": causal}
    i = np.arange(n, dtype=np.int64)[:, None]
    # Candidates per row: every vertical column and diagonal; invalid ones become n (sorted last).
    v = np.broadcast_to(cols[None, :], (n, len(cols)))
    if causal:
        v = np.where(v <= i, v, n)
    s = i - offs[None, :]
    s = np.where((s >= 0) & (s < n), s, n)
    cand = np.sort(np.concatenate([v, s], axis=1), axis=1)
    keep = cand < n
    keep[:, 1:] &= cand[:, 1:] != cand[:, :-1]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    indices = cand[keep].astype(index_dtype(int(indptr[-1]), n))
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n, n))],
        family="vertical_slash",
        params=params,
    )
