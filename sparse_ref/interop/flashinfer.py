"""FlashInfer interop: the block-sparse arrays that ``BlockSparseAttentionWrapper.plan`` takes.

FlashInfer's ``flashinfer.BlockSparseAttentionWrapper.plan(indptr, indices, M, N, R, C,
num_qo_heads, num_kv_heads, head_dim, mask=None, ...)`` describes one block-sparse layout shared by
every head, in SciPy's BSR convention: ``indptr`` ``(MB + 1,)`` with ``MB = ceil(M / R)`` block
rows, ``indices`` ``(nnz_blocks,)`` block columns (``< NB = ceil(N / C)``), and an optional bool
``mask`` ``(nnz_blocks, R, C)`` for blocks that are not entirely allowed ("if every block is full,
then we don't need to provide the mask tensor"). Most FlashInfer backends need ``N % C == 0``.

Nothing here imports FlashInfer: :func:`to_flashinfer_bsr` returns NumPy arrays (or torch tensors
on ``device``) to pass on; running FlashInfer needs a CUDA GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import check_pos_int
from ..pattern import Pattern

__all__ = ["FlashInferBSR", "to_flashinfer_bsr"]


@dataclass(frozen=True)
class FlashInferBSR:
    """Arguments of ``BlockSparseAttentionWrapper.plan``: ``indptr`` and ``indices`` (int32),
    ``mask`` (bool ``(nnz_blocks, R, C)``, ``None`` when every block is full), ``M``, ``N``,
    ``R``, ``C``."""

    indptr: Any
    indices: Any
    mask: Any
    M: int
    N: int
    R: int
    C: int

    def plan_kwargs(self) -> dict[str, Any]:
        """``dict(indptr=..., indices=..., M=..., N=..., R=..., C=..., mask=...)`` for
        ``wrapper.plan(**bsr.plan_kwargs(), num_qo_heads=..., num_kv_heads=..., head_dim=...)``."""
        return {
            "indptr": self.indptr,
            "indices": self.indices,
            "M": self.M,
            "N": self.N,
            "R": self.R,
            "C": self.C,
            "mask": self.mask,
        }


def to_flashinfer_bsr(
    pattern: Pattern,
    R: int,
    C: int | None = None,
    *,
    head: int | None = None,
    device: Any = None,
    require_divisible: bool = True,
) -> FlashInferBSR:
    """The FlashInfer block-sparse plan of ``pattern`` with blocks of ``R x C`` tokens.

    Stored blocks are the pattern's non-empty ``R x C`` blocks in row-major order; ``mask`` holds
    every stored block's bool mask (all ``True`` inside the shape for full blocks) unless every
    block is full. FlashInfer shares one layout across heads: a pattern with several heads needs
    ``head`` (use FlashInfer's ``VariableBlockSparseAttentionWrapper`` for per-head layouts).

    Args:
        pattern: the pattern, shape ``(M, N)``.
        R, C: block rows and columns (``C`` defaults to ``R``).
        head: which head of a multi-head pattern.
        device: ``None`` for NumPy arrays, else a torch device for torch tensors.
        require_divisible: raise ``ValueError`` unless ``N % C == 0`` (most FlashInfer backends
            need it).

    Example:
        >>> from sparse_ref import patterns
        >>> b = to_flashinfer_bsr(patterns.causal(4), 2)
        >>> b.indptr.tolist(), b.indices.tolist(), b.mask.astype(int).tolist()[0]
        ([0, 1, 3], [0, 0, 1], [[1, 0], [1, 1]])
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a sparse_ref.Pattern, got {type(pattern).__name__}")
    R = check_pos_int(R, "R")
    C = R if C is None else check_pos_int(C, "C")
    M, N = pattern.shape
    if require_divisible and N % C:
        raise ValueError(
            f"N = {N} is not a multiple of C = {C}; most FlashInfer backends need N % C == 0 "
            "(pass require_divisible=False for one that does not)"
        )
    if head is None:
        if pattern.num_heads > 1:
            raise ValueError(
                f"the pattern has {pattern.num_heads} heads but FlashInfer's "
                "BlockSparseAttentionWrapper shares one layout across heads: pass head=h"
            )
        head = 0
    bsr = pattern.to_bsr((R, C)).head(pattern._head_index(head, "head"))
    indptr = np.asarray(bsr.indptr[0], dtype=np.int32)
    indices = np.asarray(bsr.indices, dtype=np.int32)
    mask = None
    if not bsr.full.all():
        rows = bsr.block_rows()
        nr = np.minimum(R, M - rows * R)
        nc = np.minimum(C, N - bsr.indices.astype(np.int64) * C)
        mask = (np.arange(R)[None, :, None] < nr[:, None, None]) & (
            np.arange(C)[None, None, :] < nc[:, None, None]
        )
        part = ~bsr.full
        mask[part] = bsr.mask_table[bsr.mask_index[part]]
    if device is not None:
        from .torch import require_torch

        torch = require_torch()
        indptr = torch.from_numpy(indptr.copy()).to(device)
        indices = torch.from_numpy(indices.copy()).to(device)
        mask = None if mask is None else torch.from_numpy(mask).to(device)
    return FlashInferBSR(indptr=indptr, indices=indices, mask=mask, M=M, N=N, R=R, C=C)
