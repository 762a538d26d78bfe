"""Sparse Transformer factorized patterns (Child et al. 2019): strided, fixed (i query, j key)."""

from __future__ import annotations

import numpy as np

from ..checks import check_bool, check_nonneg_int, check_pos_int
from ..pattern import Pattern, csr_from_arrays, index_dtype
from ._ranges import progressions_csr
from ._rowkeys import rank_csr

__all__ = ["sparse_transformer_fixed", "sparse_transformer_strided"]


def sparse_transformer_strided(n: int, stride: int, split_heads: bool = False) -> Pattern:
    """``j <= i`` and (``i - stride < j`` or ``(i - j) % stride == 0``): local plus strided keys.

    The strided factorized attention of the Sparse Transformer (Child et al. 2019, "Generating Long
    Sequences with Sparse Transformers", eq. for ``A(1)``/``A(2)`` with ``l = stride``): head
    ``A(1)`` sees the previous ``stride`` tokens (itself included), head ``A(2)`` every
    ``stride``-th token before it. By default the two are merged into one head (their union);
    ``split_heads=True`` returns them as 2 heads, ``head(0)`` the local one and ``head(1)`` the
    strided one (``(i - j) % stride == 0`` and ``j <= i``).

    Args:
        n (int): number of tokens (square pattern).
        stride (int >= 1): the stride ``l`` (typically about ``sqrt(n)``).
        split_heads (bool): return the two components as two heads.

    Example:
        >>> sparse_transformer_strided(6, 2).to_dense().astype(int).tolist()[5]
        [0, 1, 0, 1, 1, 1]
    """
    n = check_nonneg_int(n, "n")
    stride = check_pos_int(stride, "stride")
    split_heads = check_bool(split_heads, "split_heads")
    params = {"n": n, "stride": stride, "split_heads": split_heads}
    i = np.arange(n, dtype=np.int64)
    lo = np.maximum(i - stride + 1, 0)  # local run [lo, i]
    if split_heads:
        local = progressions_csr(lo, i - lo + 1, n)
        strided = progressions_csr(i % stride, i // stride + 1, n, step=stride)
        heads = [csr_from_arrays(*part, (n, n)) for part in (local, strided)]
        return Pattern._new(heads, family="sparse_transformer_strided", params=params)
    # Row i: the strided keys below the local run (i % stride + t * stride, t < i // stride; the
    # largest is i - stride < lo), then the local run.
    far = i // stride

    def key(rows: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        f = far[rows]
        return np.where(ranks < f, rows % stride + ranks * stride, lo[rows] + ranks - f)

    indptr, indices = rank_csr(far + i - lo + 1, n, key)
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n, n))],
        family="sparse_transformer_strided",
        params=params,
    )


def sparse_transformer_fixed(n: int, stride: int, c: int) -> Pattern:
    """``j <= i`` and (``j // stride == i // stride`` or ``j % stride >= stride - c``).

    The fixed factorized attention of the Sparse Transformer (Child et al. 2019): ``A(1)`` is the
    causal part of the query's own block of ``stride`` tokens, ``A(2)`` the last ``c`` tokens of
    every block (the "summary" cells), merged into one head. ``c = 0`` leaves the blocks alone;
    ``c = stride`` is causal attention.

    Args:
        n (int): number of tokens (square pattern).
        stride (int >= 1): block length ``l``.
        c (int, 0 <= c <= stride): summary tokens at the end of each block.

    Example:
        >>> sparse_transformer_fixed(6, 3, 1).to_dense().astype(int).tolist()[4]
        [0, 0, 1, 1, 1, 0]
    """
    n = check_nonneg_int(n, "n")
    stride = check_pos_int(stride, "stride")
    c = check_nonneg_int(c, "c")
    if c > stride:
        raise ValueError(f"c must be <= stride = {stride}, got {c}")
    # Row i of block b: the summary keys of the blocks before b (the first b * c entries of
    # `summary`, all below b * stride), then b * stride .. i. The rows of one block are prefixes of
    # one template, so each block fills its rows with one gather.
    i = np.arange(n, dtype=np.int64)
    first = i - i % stride
    lengths = (i // stride) * c + i - first + 1
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), dtype=index_dtype(int(indptr[-1]), n))
    nb = -(-n // stride)
    summary = (
        (np.arange(nb, dtype=np.int64) * stride)[:, None] + np.arange(stride - c, stride)
    ).ravel()
    for b in range(nb):
        r0, r1 = b * stride, min((b + 1) * stride, n)
        template = np.concatenate([summary[: b * c], np.arange(r0, r1, dtype=np.int64)])
        seg = slice(int(indptr[r0]), int(indptr[r1]))
        pos = np.arange(seg.stop - seg.start) - np.repeat(
            indptr[r0:r1] - indptr[r0], lengths[r0:r1]
        )
        indices[seg] = template[pos]
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n, n))],
        family="sparse_transformer_fixed",
        params={"n": n, "stride": stride, "c": c},
    )
