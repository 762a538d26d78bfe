"""Strided patterns: every row is one arithmetic progression of keys (i query, j key)."""

from __future__ import annotations

import numpy as np

from ..checks import check_bool, check_nonneg_int, check_pos_int
from ..pattern import Pattern
from ._ranges import csr_pattern

__all__ = ["dilated", "strided"]


def dilated(n: int, window: int, dilation: int, causal: bool = False) -> Pattern:
    """``j = i + t*dilation`` with ``|t| <= window // 2`` (``t <= 0`` if causal): dilated window.

    Dilated sliding window of Longformer (Beltagy et al. 2020) and DilatedNeighborhood attention:
    ``window`` positions spread over about ``window * dilation`` tokens, clipped at the borders.

    Args:
        n (int): number of tokens (square pattern).
        window (int >= 0): window positions; ``t`` runs over ``-(window // 2) .. window // 2``.
        dilation (int >= 1): distance between neighbouring window positions.
        causal (bool): keep only ``t <= 0``.

    Example:
        >>> dilated(5, 3, 2).to_dense().astype(int).tolist()[2]
        [1, 0, 1, 0, 1]
    """
    n = check_nonneg_int(n, "n")
    window = check_nonneg_int(window, "window")
    dilation = check_pos_int(dilation, "dilation")
    causal = check_bool(causal, "causal")
    i = np.arange(n, dtype=np.int64)
    half = window // 2
    t_lo = np.maximum(-half, -(i // dilation))
    t_hi = np.zeros(n, dtype=np.int64) if causal else np.minimum(half, (n - 1 - i) // dilation)
    params = {"n": n, "window": window, "dilation": dilation, "causal": causal}
    return csr_pattern("dilated", params, i + t_lo * dilation, t_hi - t_lo + 1, n, dilation)


def strided(n: int, stride: int, causal: bool = False) -> Pattern:
    """``(i - j) % stride == 0`` (and ``j <= i`` if causal): every stride-th token of the sequence.

    The strided component of the Sparse Transformer (Child et al. 2019) on its own.

    Args:
        n (int): number of tokens (square pattern).
        stride (int >= 1): key spacing.
        causal (bool): keep only ``j <= i``.

    Example:
        >>> strided(5, 2).to_dense().astype(int).tolist()[1]
        [0, 1, 0, 1, 0]
    """
    n = check_nonneg_int(n, "n")
    stride = check_pos_int(stride, "stride")
    causal = check_bool(causal, "causal")
    i = np.arange(n, dtype=np.int64)
    first = i % stride
    count = i // stride + 1 if causal else (n - 1 - first) // stride + 1
    params = {"n": n, "stride": stride, "causal": causal}
    return csr_pattern("strided", params, first, count, n, stride)
