"""Local patterns: every row is one or two contiguous runs of keys (i query, j key).

Each family is described once, as a union of :class:`~sparse_ref.blocks.Term` (a diagonal band
``lo_d <= j - i <= hi_d`` cut by key and query ranges); its token CSR and, with ``block=``, its
block form are both derived from that list (``_ranges.terms_pattern``).
"""

from __future__ import annotations

from ..blocks import Term
from ..checks import check_choice, check_nonneg_int, resolve_n_k
from ..pattern import Pattern, _causal_offset
from ._ranges import BlockArg, terms_pattern

__all__ = ["causal", "causal_sliding_window", "dense", "prefix_lm", "sinks", "sliding_window"]


def dense(n_q: int, n_k: int | None = None, *, block: BlockArg = None) -> Pattern:
    """All ``j`` for every ``i``: full attention (Vaswani et al. 2017), the unmasked baseline.

    Args:
        n_q (int): number of queries.
        n_k (int | None): number of keys, default ``n_q``.
        block (int | (bq, bk) | None): build the block form directly (BSR kernels), no token CSR.

    Example:
        >>> dense(2, 3).to_dense().astype(int).tolist()
        [[1, 1, 1], [1, 1, 1]]
    """
    n_q, n_k = resolve_n_k(n_q, n_k)
    params = {"n_q": n_q, "n_k": n_k}
    return terms_pattern("dense", params, [Term()], (n_q, n_k), block)


def causal(
    n_q: int, n_k: int | None = None, align: str = "top_left", *, block: BlockArg = None
) -> Pattern:
    """``j <= i`` (``"top_left"``) or ``j <= i + n_k - n_q`` (``"bottom_right"``).

    Decoder self-attention (Vaswani et al. 2017); bottom-right alignment is the KV-cache convention
    of FlashAttention 2.1+, where the last query sees every key.

    Args:
        n_q (int): number of queries.
        n_k (int | None): number of keys, default ``n_q``.
        align (str): ``"top_left"`` or ``"bottom_right"``.
        block (int | (bq, bk) | None): build the block form directly (BSR kernels), no token CSR.

    Example:
        >>> causal(2, 3, align="bottom_right").to_dense().astype(int).tolist()
        [[1, 1, 0], [1, 1, 1]]
    """
    n_q, n_k = resolve_n_k(n_q, n_k)
    align = check_choice(align, "align", ("top_left", "bottom_right"))
    params = {"n_q": n_q, "n_k": n_k, "align": align}
    terms = [Term(hi_d=_causal_offset(n_q, n_k, align))]  # j - i <= offset
    return terms_pattern("causal", params, terms, (n_q, n_k), block)


def sliding_window(n: int, left: int, right: int, *, block: BlockArg = None) -> Pattern:
    """``i - left <= j <= i + right`` (FlashAttention ``window_size=(left, right)``; Longformer).

    Args:
        n (int): number of tokens (square pattern).
        left (int >= 0): keys allowed before ``i``.
        right (int >= 0): keys allowed after ``i``.
        block (int | (bq, bk) | None): build the block form directly (BSR kernels), no token CSR.

    Example:
        >>> sliding_window(3, 1, 0).to_dense().astype(int).tolist()
        [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    """
    n = check_nonneg_int(n, "n")
    left = check_nonneg_int(left, "left")
    right = check_nonneg_int(right, "right")
    params = {"n": n, "left": left, "right": right}
    terms = [Term(lo_d=-left, hi_d=right)]
    return terms_pattern("sliding_window", params, terms, (n, n), block)


def causal_sliding_window(n: int, window: int, *, block: BlockArg = None) -> Pattern:
    """``i - window < j <= i`` (Mistral 7B; ``window`` counts the token itself, 0 masks every key).

    Equal to ``sliding_window(n, window - 1, 0)`` for ``window >= 1``.

    Args:
        n (int): number of tokens (square pattern).
        window (int >= 0): keys per full row, the token itself included.
        block (int | (bq, bk) | None): build the block form directly (BSR kernels), no token CSR.

    Example:
        >>> causal_sliding_window(3, 2).to_dense().astype(int).tolist()
        [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    """
    n = check_nonneg_int(n, "n")
    window = check_nonneg_int(window, "window")
    params = {"n": n, "window": window}
    terms = [Term(lo_d=1 - window, hi_d=0)] if window else []
    return terms_pattern("causal_sliding_window", params, terms, (n, n), block)


def sinks(n: int, num_sinks: int, window: int, *, block: BlockArg = None) -> Pattern:
    """``j <= i`` and (``j < num_sinks`` or ``i - window < j``) (StreamingLLM attention sinks).

    Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks".

    Args:
        n (int): number of tokens (square pattern).
        num_sinks (int >= 0): leading keys every row sees (when causally allowed).
        window (int >= 0): recent keys per row, the token itself included.
        block (int | (bq, bk) | None): build the block form directly (BSR kernels), no token CSR.

    Example:
        >>> sinks(4, 1, 1).to_dense().astype(int).tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
    """
    n = check_nonneg_int(n, "n")
    num_sinks = check_nonneg_int(num_sinks, "num_sinks")
    window = check_nonneg_int(window, "window")
    params = {"n": n, "num_sinks": num_sinks, "window": window}
    terms = [Term(hi_d=0, hi_j=num_sinks - 1)]  # the sinks, causally
    if window:
        terms.append(Term(lo_d=1 - window, hi_d=0))  # the recent keys
    return terms_pattern("sinks", params, terms, (n, n), block)


def prefix_lm(n: int, prefix: int, *, block: BlockArg = None) -> Pattern:
    """``j < prefix`` or ``j <= i`` (prefix LM: bidirectional prefix, causal rest; T5, UniLM).

    Raffel et al. 2020 (T5) and Dong et al. 2019 (UniLM). ``prefix > n`` is the dense pattern.

    Args:
        n (int): number of tokens (square pattern).
        prefix (int >= 0): length of the bidirectional prefix.
        block (int | (bq, bk) | None): build the block form directly (BSR kernels), no token CSR.

    Example:
        >>> prefix_lm(3, 2).to_dense().astype(int).tolist()
        [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    """
    n = check_nonneg_int(n, "n")
    prefix = check_nonneg_int(prefix, "prefix")
    params = {"n": n, "prefix": prefix}
    terms = [Term(hi_j=prefix - 1), Term(hi_d=0)]  # the prefix, and causal attention
    return terms_pattern("prefix_lm", params, terms, (n, n), block)
