"""Global + local patterns (i query, j key)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..checks import check_index_list, check_nonneg_int
from ..pattern import Pattern
from ._ranges import BlockArg, block_pattern, csr_pattern

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
    if block is not None:
        return block_pattern("global_local", params, block, **params)

    # Global columns as maximal runs [run_lo[r], run_hi[r]) of consecutive tokens.
    breaks = np.flatnonzero(np.diff(tokens) != 1) + 1
    run_lo = tokens[np.concatenate(([0], breaks))] if len(tokens) else tokens
    run_hi = tokens[np.concatenate((breaks - 1, [len(tokens) - 1]))] + 1 if len(tokens) else tokens
    num_runs = len(run_lo)

    # Each row: the runs wholly before the window, the window merged with the runs it overlaps,
    # the runs wholly after it; as S = num_runs + 1 progression columns, unused ones empty.
    i = np.arange(n, dtype=np.int64)
    lo = np.maximum(i - left, 0)
    hi = np.minimum(i + right + 1, n)
    before = np.searchsorted(run_hi, lo, side="right")  # runs with run_hi <= lo
    after = np.searchsorted(run_lo, hi, side="left")  # runs c >= after have run_lo >= hi
    overlaps = after > before
    if num_runs:
        lo = np.where(overlaps, np.minimum(lo, run_lo[np.minimum(before, num_runs - 1)]), lo)
        hi = np.where(overlaps, np.maximum(hi, run_hi[np.maximum(after - 1, 0)]), hi)
    col = np.arange(num_runs + 1, dtype=np.int64)[None, :]
    run = np.where(col < before[:, None], col, after[:, None] + col - before[:, None] - 1)
    is_window = col == before[:, None]
    has_run = ~is_window & (run < num_runs)
    run = np.minimum(run, max(num_runs - 1, 0))
    if num_runs:
        start = np.where(is_window, lo[:, None], run_lo[run])
        count = np.where(
            is_window, (hi - lo)[:, None], np.where(has_run, run_hi[run] - run_lo[run], 0)
        )
    else:
        start, count = lo[:, None], (hi - lo)[:, None]
    start[tokens] = 0  # global rows: every key, as one run in column 0
    count[tokens] = 0
    count[tokens, 0] = n
    return csr_pattern("global_local", params, start, count, n)
