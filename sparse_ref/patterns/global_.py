"""Global + local patterns (i query, j key), described as unions of terms like ``local``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..blocks import Term
from ..checks import check_index_list, check_nonneg_int
from ..pattern import Pattern
from ._ranges import BlockArg, terms_pattern

__all__ = ["global_local"]


def global_local(
    n: int, left: int, right: int, global_tokens: Sequence[int], *, block: BlockArg = None
) -> Pattern:
    """``i - left <= j <= i + right`` or ``i in G`` or ``j in G`` (``G``: global_tokens).

    Beltagy et al. 2020, "Longformer": a sliding window, plus global rows that attend to every key,
    plus global columns that every row attends to.

    Args:
        n (int): number of tokens (square pattern).
        left (int >= 0): window keys before ``i``.
        right (int >= 0): window keys after ``i``.
        global_tokens (sequence of int): token indices in ``[-n, n)``; negatives count from the end,
            duplicates merge. ``params`` stores them sorted, unique and non-negative.
        block (int | (bq, bk) | None): build the block form directly (BSR kernels), no token CSR.

    Example:
        >>> global_local(4, 0, 0, [0]).to_dense().astype(int).tolist()
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
    """
    n = check_nonneg_int(n, "n")
    left = check_nonneg_int(left, "left")
    right = check_nonneg_int(right, "right")
    tokens = check_index_list(global_tokens, "global_tokens", n)
    params = {"n": n, "left": left, "right": right, "global_tokens": tokens.tolist()}
    terms = [Term(lo_d=-left, hi_d=right)]  # the window
    breaks = np.flatnonzero(np.diff(tokens) != 1) + 1
    for run in np.split(tokens, breaks) if len(tokens) else []:  # one pair per run of tokens
        lo, hi = int(run[0]), int(run[-1])
        terms += [Term(lo_i=lo, hi_i=hi), Term(lo_j=lo, hi_j=hi)]  # global rows, global columns
    return terms_pattern("global_local", params, terms, (n, n), block)
