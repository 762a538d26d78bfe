"""What a pattern costs: density, FLOPs, score-matrix memory, storage bytes of CSR and BSR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bench.flops import useful_flops
from ..pattern import Pattern
from ._structure import _np_dtype, _pos_int

__all__ = ["Cost", "cost", "dense_score_bytes", "density"]


def density(pattern: Pattern) -> float:
    """Fraction of allowed (query, key) pairs: ``nnz / (num_heads * n_q * n_k)``.

    Example:
        >>> from sparse_ref import patterns
        >>> round(density(patterns.causal_sliding_window(8192, 256)), 4)
        0.0308
    """
    return pattern.density


def dense_score_bytes(
    n_q: int, n_k: int | None = None, *, dtype: Any = "float32", heads: int = 1
) -> int:
    """Bytes of a materialised dense score matrix ``heads x n_q x n_k`` in ``dtype``.

    Example:
        >>> dense_score_bytes(8192) // 2**20  # MiB, one head, float32
        256
    """
    n_k = n_q if n_k is None else n_k
    return int(heads) * int(n_q) * int(n_k) * np.dtype(_np_dtype(dtype)).itemsize


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of one attention call over a pattern, sparse next to dense.

    Counts are totals over ``heads`` query heads and one batch element. ``flops`` follows the
    FlashAttention convention: ``2 * nnz * d`` for ``q @ k.T`` plus ``2 * nnz * d_v`` for ``p @ v``
    (``4 * nnz * d`` when ``d_v == d``); softmax is not counted; ``backward_flops`` counts the
    four products of the backward, twice ``flops`` (both from
    :func:`sparse_ref.bench.flops.useful_flops`). Bytes:

    - ``io_bytes``: reading q, k, v and writing out once (what a fused kernel must move; the same
      for sparse and dense);
    - ``score_bytes`` / ``dense_score_bytes``: a materialised score matrix, sparse (``nnz``
      entries) or dense (``n_q * n_k`` per head);
    - ``csr_bytes``: the token CSR structure (int64 ``indptr`` per stored head, int32/int64
      indices), ``bsr_bytes``: the block form with blocks ``bsr_block`` (int64 ``indptr``, int32
      block columns and mask ids, one byte per bool of the deduplicated partial masks).
    """

    shape: tuple[int, int]
    heads: int
    d: int
    d_v: int
    itemsize: int
    nnz: int
    flops: int
    dense_flops: int
    io_bytes: int
    score_bytes: int
    dense_score_bytes: int
    csr_bytes: int
    bsr_bytes: int
    bsr_block: tuple[int, int]

    @property
    def backward_flops(self) -> int:
        """Useful flops of the backward pass: ``4 * nnz * (d + d_v)``, twice :attr:`flops` (the
        products dP, dV, dQ and dK; recomputing the scores is not counted)."""
        return useful_flops(self.nnz, self.d, self.d_v, backward=True)

    @property
    def flop_ratio(self) -> float:
        """``flops / dense_flops``: the pattern's density; 1/this is the best possible speed-up."""
        return self.flops / self.dense_flops if self.dense_flops else 0.0


def cost(
    pattern: Pattern,
    d: int,
    *,
    d_v: int | None = None,
    heads: int | None = None,
    dtype: Any = "float32",
    block: Any = None,
) -> Cost:
    """FLOPs and bytes of attention over ``pattern`` with head dimension ``d`` (see :class:`Cost`).

    Args:
        pattern: any pattern; one head is broadcast to ``heads`` heads.
        d: query/key head dimension; ``d_v`` the value dimension (default ``d``).
        heads: query heads (default ``pattern.num_heads``); must be a multiple of the pattern's
            stored heads.
        dtype: element type of q, k, v, out and scores (``itemsize`` only; ``"bfloat16"`` is 2).
        block: block size of the BSR storage count (default: the pattern's own block form, else
            128).

    Example:
        >>> from sparse_ref import patterns
        >>> c = cost(patterns.causal_sliding_window(8192, 256), d=64)
        >>> c.flops == 4 * c.nnz * 64, round(c.flop_ratio, 4)
        (True, 0.0308)
    """
    d = _pos_int(d, "d")
    d_v = d if d_v is None else _pos_int(d_v, "d_v")
    stored = pattern.num_heads
    heads = stored if heads is None else _pos_int(heads, "heads")
    if heads % stored:
        raise ValueError(f"heads = {heads} must be a multiple of the pattern's {stored} heads")
    itemsize = np.dtype(_np_dtype(dtype)).itemsize
    n_q, n_k = pattern.shape
    nnz = pattern.nnz * (heads // stored)
    if pattern.block_form is not None and block is None:
        bsr = pattern.block_form
    else:
        bsr = pattern.to_bsr(128 if block is None else block)
    per_head_nnz = (
        [pattern.to_csr(h).nnz for h in range(stored)]
        if pattern.block is None
        else [int(x) for x in bsr.nnz_per_head]
    )
    csr_bytes = sum((n_q + 1) * 8 + k * (4 if max(k, n_k) < 2**31 else 8) for k in per_head_nnz)
    bsr_bytes = int(
        bsr.indptr.nbytes + bsr.indices.nbytes + bsr.mask_index.nbytes + bsr.mask_table.nbytes
    )
    return Cost(
        shape=(n_q, n_k),
        heads=heads,
        d=d,
        d_v=d_v,
        itemsize=itemsize,
        nnz=nnz,
        flops=useful_flops(nnz, d, d_v),
        dense_flops=useful_flops(heads * n_q * n_k, d, d_v),
        io_bytes=heads * (n_q * (d + d_v) + n_k * (d + d_v)) * itemsize,
        score_bytes=nnz * itemsize,
        dense_score_bytes=heads * n_q * n_k * itemsize,
        csr_bytes=int(csr_bytes),
        bsr_bytes=bsr_bytes,
        bsr_block=bsr.block,
    )
