"""How far information travels: the input tokens an output token depends on after L layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..pattern import Pattern
from ._structure import _pos_int, _square, _union_bool

__all__ = ["ReceptiveField", "default_rows", "receptive_field"]


@dataclass(frozen=True)
class ReceptiveField:
    """Input tokens that each selected output token depends on after ``layers`` layers.

    ``reach`` is a bool ``csr_array`` of shape ``(len(rows), n)``: row ``k`` holds the input tokens
    that output token ``rows[k]`` depends on.
    """

    rows: np.ndarray
    reach: sp.csr_array
    layers: int
    residual: bool

    @property
    def sizes(self) -> np.ndarray:
        """Number of input tokens each selected output token depends on (int64)."""
        return np.diff(self.reach.indptr).astype(np.int64)

    @property
    def spans(self) -> np.ndarray:
        """``max - min + 1`` of each row's reach (0 for an empty reach), int64."""
        ip, ix = self.reach.indptr, self.reach.indices
        out = np.zeros(len(self.rows), dtype=np.int64)
        nonempty = np.diff(ip) > 0
        out[nonempty] = ix[ip[1:][nonempty] - 1].astype(np.int64) - ix[ip[:-1][nonempty]] + 1
        return out

    @property
    def max(self) -> int:
        """The largest receptive field (tokens) among the selected rows."""
        return int(self.sizes.max()) if len(self.rows) else 0

    @property
    def coverage(self) -> float:
        """``max / n``: the largest receptive field as a fraction of the sequence."""
        n = self.reach.shape[1]
        return self.max / n if n else 0.0


def _layer_list(patterns: Pattern | Sequence[Pattern], layers: int | None) -> list[Pattern]:
    if isinstance(patterns, Pattern):
        return [patterns] * (1 if layers is None else _pos_int(layers, "layers"))
    stack = list(patterns)
    if not stack or not all(isinstance(p, Pattern) for p in stack):
        raise TypeError("patterns must be a Pattern or a non-empty sequence of Patterns")
    if layers is None:
        return stack
    layers = _pos_int(layers, "layers")
    return [stack[i % len(stack)] for i in range(layers)]


def default_rows(n: int, limit: int = 2048, samples: int = 64) -> np.ndarray:
    """All rows when ``n <= limit``, else ``samples`` evenly spaced rows (first, middle, last)."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    rows = np.linspace(0, n - 1, samples).round().astype(np.int64)
    return np.unique(np.concatenate([rows, [n // 2]]))


def receptive_field(
    patterns: Pattern | Sequence[Pattern],
    layers: int | None = None,
    *,
    rows: Any = None,
    residual: bool = True,
) -> ReceptiveField:
    """Which input tokens each output token depends on after a stack of attention layers.

    The stack is ``patterns`` bottom layer first: one pattern repeated ``layers`` times (default
    1), or a list of per-layer patterns (a hybrid stack such as three windowed layers and one dense
    layer), cycled to ``layers`` layers if ``layers`` is given. Output token ``i`` depends on input
    token ``j`` when ``(e_i @ A_L @ ... @ A_1)[j] != 0`` with ``A_l`` the union of layer ``l``'s
    heads, plus the identity if ``residual`` (a residual connection carries token ``i`` to the
    next layer). The products are sparse boolean row-vector products, so memory is O(rows x
    reach), never ``n x n``; rows that already reach every token stop early. The layers' token CSR
    is used (materialised once for a pattern built in block form).

    With residual connections a window of ``w`` keys (``causal_sliding_window(n, w)``) reaches
    ``L * (w - 1) + 1`` tokens after ``L`` layers (the literature's ``L * w``), and
    ``sliding_window(n, left, right)`` reaches ``L * (left + right) + 1``, away from the edges.

    Args:
        patterns: a square Pattern, or a sequence of square Patterns of the same size.
        layers: number of layers (see above).
        rows: output tokens to trace (default: all rows up to n = 2048, else 65 evenly spaced rows
            including the first, middle and last).
        residual: add the identity to every layer.

    Example:
        >>> from sparse_ref import patterns
        >>> rf = receptive_field(patterns.causal_sliding_window(4096, 256), layers=4, rows=[4095])
        >>> rf.max == 4 * 255 + 1
        True
    """
    stack = _layer_list(patterns, layers)
    n = _square(stack[0], "receptive_field")
    for i, p in enumerate(stack):
        if p.shape != (n, n):
            raise ValueError(f"layer {i} has shape {p.shape}, layer 0 has {(n, n)}")
    rows_arr = default_rows(n) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
    if len(rows_arr) and (rows_arr.min() < 0 or rows_arr.max() >= n):
        raise ValueError(f"rows must be in [0, {n})")
    r = len(rows_arr)
    idx_dtype = np.int32 if n < 2**31 - 1 else np.int64
    reach = _bool_csr(np.arange(r + 1), rows_arr, (r, n), idx_dtype)
    layer_ids: dict[int, int] = {}
    mats: list[sp.csr_array] = []
    saturated = np.zeros(r, dtype=bool)  # reaches every token: final (residual only)
    fixed_for = np.full(r, -1)  # unchanged by layer k: final while the layers are k
    for p in reversed(stack):  # top layer first: e_i @ A_L @ ... @ A_1
        if id(p) not in layer_ids:
            mats.append(_union_bool(p))
            layer_ids[id(p)] = len(mats) - 1
        k = layer_ids[id(p)]
        idx = np.flatnonzero(~saturated & (fixed_for != k))
        if len(idx) == 0:
            continue
        sub = reach[idx]
        new = sp.csr_array(sub @ mats[k])  # bool semiring: entries OR together
        if residual:
            new = sp.csr_array(new + sub)
        new = _bool_csr(new.indptr, new.indices, new.shape, idx_dtype, canonical=False)
        counts_new = np.diff(new.indptr)
        if residual:  # reach only grows, so equal counts mean equal sets
            fixed_for[idx] = np.where(counts_new == np.diff(sub.indptr), k, -1)
            saturated[idx] = counts_new == n
        reach = _replace_rows(reach, idx, new)
    reach.sort_indices()
    return ReceptiveField(rows=rows_arr, reach=reach, layers=len(stack), residual=residual)


def _bool_csr(
    indptr: Any, indices: Any, shape: tuple[int, int], idx_dtype: Any, canonical: bool = True
) -> sp.csr_array:
    m = sp.csr_array(
        (
            np.ones(len(indices), dtype=bool),
            np.asarray(indices, dtype=idx_dtype),
            np.asarray(indptr, dtype=idx_dtype),
        ),
        shape=shape,
    )
    if not canonical:
        m.sum_duplicates()
    return m


def _replace_rows(m: sp.csr_array, idx: np.ndarray, new: sp.csr_array) -> sp.csr_array:
    """``m`` with rows ``idx`` replaced by the rows of ``new`` (CSR row operations only)."""
    if len(idx) == m.shape[0]:
        return new
    keep = np.ones(m.shape[0], dtype=bool)
    keep[idx] = False
    order = np.concatenate([np.flatnonzero(keep), idx])
    stacked = sp.csr_array(sp.vstack([m[np.flatnonzero(keep)], new], format="csr"))
    out = sp.csr_array(stacked[np.argsort(order, kind="stable")])
    return _bool_csr(out.indptr, out.indices, out.shape, m.indices.dtype)
