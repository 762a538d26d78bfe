"""Block patterns: a boolean layout over a grid of ``(bq, bk)`` token blocks (i query, j key)."""

from __future__ import annotations

from typing import Any

from ..pattern import Pattern

__all__ = ["block_sparse"]


def block_sparse(
    layout: Any, block: Any, n_q: int | None = None, n_k: int | None = None
) -> Pattern:
    """``layout[h, i // bq, j // bk]`` (block-sparse attention: OpenAI blocksparse, DeepSpeed).

    Gray, Radford & Kingma 2017, "GPU Kernels for Block-Sparse Weights"; used for attention by
    Child et al. 2019 (Sparse Transformer) and DeepSpeed Sparse Attention (2020). Every ``True``
    block is a full block, so the pattern is held as a block form only and the kernels run on
    blocks; token CSR is built on demand.

    Args:
        layout (bool array): ``(nbq, nbk)`` for one head or ``(H, nbq, nbk)`` per head (nested
            lists are fine; ``params`` stores it as nested lists).
        block (int or (int, int)): block size ``b`` or ``(bq, bk)``, each >= 1.
        n_q (int | None): queries, default ``nbq * bq``; a smaller value clips the last block row
            (``(nbq - 1) * bq < n_q <= nbq * bq``).
        n_k (int | None): keys, default ``nbk * bk``, clipped the same way.

    Example:
        >>> block_sparse([[True, False], [True, True]], 2, n_q=3).to_dense().astype(int).tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    """
    return Pattern.from_block_layout(layout, block, n_q=n_q, n_k=n_k)
