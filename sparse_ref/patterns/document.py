"""Document (packed-sequence) masking (i query, j key)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pattern import Pattern, csr_from_arrays
from ._ranges import progressions_csr

__all__ = ["document"]


def document(
    seq_ids: Sequence[int] | None = None,
    *,
    lengths: Sequence[int] | None = None,
    cu_seqlens: Sequence[int] | None = None,
) -> Pattern:
    """``seq_ids[i] == seq_ids[j]``: tokens attend within their own document only.

    Packed-sequence (document) masking, as in FlexAttention's ``document_id`` mask_mod and
    FlashAttention's varlen ``cu_seqlens``. Combine with ``&`` (e.g. ``& causal(n)``). Pass
    exactly one of ``seq_ids``, ``lengths`` and ``cu_seqlens``.

    Args:
        seq_ids (sequence of int): document id per token, shape ``(n,)``. Ids are compared for
            equality only; a document need not be contiguous.
        lengths (sequence of int >= 0, keyword-only): consecutive document lengths; ``n =
            sum(lengths)``.
        cu_seqlens (sequence of int, keyword-only): FlashAttention's varlen convention
            (``flash_attn_varlen_func``): the cumulative lengths ``[0, l_0, l_0 + l_1, ...]``,
            ``num_docs + 1`` ints starting at 0 and non-decreasing (a repeated value is an empty
            document); ``n = cu_seqlens[-1]``. A NumPy array or a CPU torch tensor works.

    Example:
        >>> document(lengths=[1, 2]).to_dense().astype(int).tolist()
        [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
        >>> document(cu_seqlens=[0, 1, 3]) == document(lengths=[1, 2])
        True
    """
    given = [name for name, x in (("seq_ids", seq_ids), ("lengths", lengths),
                                  ("cu_seqlens", cu_seqlens)) if x is not None]  # fmt: skip
    if len(given) != 1:
        raise ValueError(
            f"pass exactly one of seq_ids, lengths and cu_seqlens, got {given or 'none'}"
        )
    params: dict[str, Any]
    if cu_seqlens is not None:
        sizes = _lengths_from_cu_seqlens(cu_seqlens)
        params = {"cu_seqlens": np.concatenate([[0], np.cumsum(sizes)]).tolist()}
    elif lengths is not None:
        sizes = _int_array(lengths, "lengths")
        if (sizes < 0).any():
            d = int(np.argmax(sizes < 0))
            raise ValueError(f"lengths must be >= 0, got lengths[{d}] = {sizes[d]}")
        params = {"lengths": sizes.tolist()}
    if seq_ids is None:
        doc = np.repeat(np.arange(len(sizes)), sizes)
        start, count = (np.cumsum(sizes) - sizes)[doc], sizes[doc]
        order = None
    else:
        ids = _int_array(seq_ids, "seq_ids")
        params = {"seq_ids": ids.tolist()}
        run_starts = np.flatnonzero(np.diff(ids)) + 1
        if len(run_starts) + 1 == len(np.unique(ids)):  # every document is contiguous
            bounds = np.concatenate(([0], run_starts, [len(ids)]))
            run = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
            start, count, order = bounds[run], np.diff(bounds)[run], None
        else:  # documents interleave: rows are runs of positions in `order`, mapped to tokens
            order = np.argsort(ids, kind="stable")  # grouped by id, ascending within a group
            start = np.searchsorted(ids[order], ids, side="left")
            count = np.searchsorted(ids[order], ids, side="right") - start
    n = len(start)
    indptr, indices = progressions_csr(start, count, n)
    if order is not None:
        indices = order.astype(indices.dtype)[indices]
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n, n))], family="document", params=params
    )


def _lengths_from_cu_seqlens(cu_seqlens: Any) -> np.ndarray:
    """Document lengths from FlashAttention-style ``cu_seqlens``, checked (``ValueError`` naming
    the first entry that breaks the rule)."""
    cu = _int_array(cu_seqlens, "cu_seqlens")
    if len(cu) == 0:
        raise ValueError("cu_seqlens must hold num_docs + 1 >= 1 ints starting at 0, got []")
    if cu[0] != 0:
        raise ValueError(
            f"cu_seqlens must start at 0 (FlashAttention's varlen convention), got {cu[0]}"
        )
    sizes = np.diff(cu)
    if (sizes < 0).any():
        i = int(np.argmax(sizes < 0)) + 1
        raise ValueError(
            f"cu_seqlens must be non-decreasing (cumulative lengths): cu_seqlens[{i}] = {cu[i]} < "
            f"cu_seqlens[{i - 1}] = {cu[i - 1]}"
        )
    return sizes


def _int_array(values: Any, name: str) -> np.ndarray:
    """A 1-D sequence of ints as an int64 array (``TypeError`` otherwise)."""
    if isinstance(values, str | bytes) or np.ndim(values) != 1:
        raise TypeError(f"{name} must be a 1-D sequence of ints, got {values!r}")
    arr = np.asarray(values)
    if arr.size and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold ints, got dtype {arr.dtype}")
    return arr.astype(np.int64)
