"""Neighborhood attention over a 2-D grid in raster order (NATTEN rule; i query, j key)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_bool, check_pos_int
from ..pattern import Pattern, csr_from_arrays, index_dtype

__all__ = ["neighborhood_2d"]


def _pair(value: Any, name: str, check: Any) -> tuple[Any, Any]:
    """An int/bool or a pair of them -> a validated pair (per axis: rows, columns)."""
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"{name} must be a single value or a pair (rows, cols), got {value!r}")
        return check(value[0], f"{name}[0]"), check(value[1], f"{name}[1]")
    v = check(value, name)
    return v, v


def _axis_keys(length: int, kernel: int, dilation: int, causal: bool) -> np.ndarray:
    """``(length, kernel)`` ascending neighbour positions along one axis; ``-1`` where cut (causal).

    Non-causal (NATTEN): ``g = i % d``, ``L_g = ceil((L - g) / d)``,
    ``start = clip(i // d - k // 2, 0, L_g - k) * d + g``, keys ``start + d * t`` for ``t < k``.
    Causal: keys ``i - d * t`` for ``t < k`` that are ``>= 0`` (cut at the border, not shifted).
    """
    i = np.arange(length, dtype=np.int64)[:, None]
    t = np.arange(kernel, dtype=np.int64)[None, :]
    if causal:
        keys = i - dilation * (kernel - 1 - t)
        return np.where(keys >= 0, keys, -1)
    g = i % dilation
    length_g = -(-(length - g) // dilation)
    start = np.clip(i // dilation - kernel // 2, 0, length_g - kernel) * dilation + g
    return start + dilation * t


def neighborhood_2d(
    height: int, width: int, kernel: Any, dilation: Any = 1, causal: Any = False
) -> Pattern:
    """Per axis ``k`` keys ``d`` apart around ``i``, shifted inward at borders (NATTEN); 2-D raster.

    Neighborhood attention (Hassani et al. 2023, "Neighborhood Attention Transformer"; dilated:
    Hassani & Shi 2022, "Dilated Neighborhood Attention Transformer"; the NATTEN library). Token
    ``i = r * width + c`` attends to key ``j = r' * width + c'`` iff ``r'`` is in the row-axis
    neighbourhood of ``r`` and ``c'`` in the column-axis neighbourhood of ``c``. Along an axis of
    length ``L`` with kernel ``k`` and dilation ``d``, position ``i`` has ``g = i mod d``,
    ``L_g = ceil((L - g) / d)``, ``start = clamp(i // d - k // 2, 0, L_g - k) * d + g`` and the
    keys ``start, start + d, ..., start + (k - 1) * d``: the window shifts inward at the borders
    and always holds ``k`` keys of the query's dilation group. With ``causal`` on an axis the keys
    are ``i, i - d, ..., i - (k - 1) * d`` that are ``>= 0``: cut at the border, not shifted (NATTEN
    ``is_causal`` per dimension, so causal on both axes means ``r' <= r`` and ``c' <= c``, not
    raster-order causality).

    Args:
        height (int >= 1), width (int >= 1): grid size; ``n = height * width`` tokens.
        kernel (int or (int, int), >= 1): neighbourhood size per axis (NATTEN allows even sizes;
            the window then has ``k // 2`` keys before the centre).
        dilation (int or (int, int), >= 1): key spacing per axis; ``kernel * dilation`` must not
            exceed the axis length (NATTEN's requirement).
        causal (bool or (bool, bool)): causal per axis.

    Example:
        >>> p = neighborhood_2d(1, 5, (1, 3))
        >>> p.to_dense().astype(int).tolist()[0]
        [1, 1, 1, 0, 0]
    """
    height = check_pos_int(height, "height")
    width = check_pos_int(width, "width")
    kh, kw = _pair(kernel, "kernel", check_pos_int)
    dh, dw = _pair(dilation, "dilation", check_pos_int)
    ch, cw = _pair(causal, "causal", check_bool)
    for axis, length, k, d in (("height", height, kh, dh), ("width", width, kw, dw)):
        if k * d > length:
            raise ValueError(
                f"kernel * dilation along {axis} must be <= {axis} = {length}, got {k} * {d}"
            )
    n = height * width
    rows = _axis_keys(height, kh, dh, ch)  # (H, kh)
    cols = _axis_keys(width, kw, dw, cw)  # (W, kw)
    r = np.repeat(np.arange(height), width)
    c = np.tile(np.arange(width), height)
    rk, ck = rows[r][:, :, None], cols[c][:, None, :]  # (n, kh, 1), (n, 1, kw)
    keys = (rk * width + ck).reshape(n, kh * kw)  # ascending: rows major, then columns
    valid = ((rk >= 0) & (ck >= 0)).reshape(n, kh * kw)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(valid.sum(axis=1), out=indptr[1:])
    indices = keys[valid].astype(index_dtype(int(indptr[-1]), n))
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n, n))],
        family="neighborhood_2d",
        params={
            "height": height,
            "width": width,
            "kernel": _param(kernel),
            "dilation": _param(dilation),
            "causal": _param(causal),
        },
    )


def _param(value: Any) -> Any:
    """JSON-able copy of a scalar-or-pair parameter (as given: one value, or a list of two)."""
    if isinstance(value, list | tuple):
        return [v.item() if isinstance(v, np.generic) else v for v in value]
    return value.item() if isinstance(value, np.generic) else value
