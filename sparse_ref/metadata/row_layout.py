"""The block form as the backward's row tasks read it: where each stored block's keys sit in its
block row, and the masks of partial blocks key-major (:func:`row_layout_of`).

:func:`sparse_ref.metadata.block_row_layout` builds it once per pattern and caches it (it depends
only on the block form and ``n_k``); :mod:`sparse_ref.kernels.bsr_backward` consumes it. NumPy
only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..blocks import StackedBSR

__all__ = ["BlockRowLayout", "row_layout_of"]


class BlockRowLayout(NamedTuple):
    """The keys of each block row's stored blocks laid end to end, and the masks key-major.

    ``widths`` (int64 per stored block): its keys, ``bk`` or fewer in a ragged last block column;
    ``wcum`` (int64 per stored block): where its keys start among its block row's (the running
    sum of ``widths`` within the block row); ``row_keys (P, nbq)`` int64: the keys of each block
    row's stored blocks; ``masks_t (max(1, n_masks), bk, bq)`` bool: the masks of partial blocks
    transposed to key-major (one all-False mask when there are none, so the kernels always get an
    array of that shape). ``masks_t`` costs as much memory as the block form's mask table.
    """

    widths: np.ndarray
    wcum: np.ndarray
    row_keys: np.ndarray
    masks_t: np.ndarray


def row_layout_of(form: StackedBSR, n_k: int) -> BlockRowLayout:
    """The :class:`BlockRowLayout` of a block form (``indptr (P, nbq + 1)`` absolute offsets,
    ``indices`` block columns, ``masks (n_masks, bq, bk)``) over ``n_k`` keys; writable arrays.

    Example:
        >>> import numpy as np
        >>> form = StackedBSR((2, 2), np.array([[0, 1, 3]]), np.array([0, 0, 1], np.int32),
        ...                   np.array([-1, -1, -1], np.int32), np.zeros((0, 2, 2), bool))
        >>> lay = row_layout_of(form, 3)
        >>> lay.widths.tolist(), lay.wcum.tolist(), lay.row_keys.tolist(), lay.masks_t.shape
        ([2, 2, 1], [0, 0, 2], [[2, 3]], (1, 2, 2))
    """
    (bq, bk), indptr = form.block, np.asarray(form.indptr, dtype=np.int64)
    masks_t = np.ascontiguousarray(np.asarray(form.masks, dtype=np.bool_).transpose(0, 2, 1))
    if masks_t.shape[0] == 0:
        masks_t = np.zeros((1, bk, bq), dtype=np.bool_)
    widths = np.minimum(bk, n_k - np.asarray(form.indices).astype(np.int64) * bk)
    cw = np.concatenate([[0], np.cumsum(widths)])
    wcum = cw[:-1] - np.repeat(cw[indptr[:, :-1].ravel()], np.diff(indptr, axis=1).ravel())
    row_keys = cw[indptr[:, 1:]] - cw[indptr[:, :-1]]
    return BlockRowLayout(widths, wcum, row_keys, masks_t)
