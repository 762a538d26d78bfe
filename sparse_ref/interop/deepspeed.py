"""DeepSpeed sparse-attention layouts, reimplemented in NumPy (no DeepSpeed or torch needed).

The classes carry DeepSpeed's names and constructor parameters
(``deepspeed.ops.sparse_attention.sparsity_config``, DeepSpeed <= 0.17; the module was removed
later) and their ``make_layout(seq_len)`` returns what DeepSpeed's returns, as a NumPy array: int64
0/1 of shape ``(num_heads, num_blocks, num_blocks)``, ``num_blocks = seq_len // block``, entry
``[h, bi, bj] = 1`` when query block ``bi`` attends key block ``bj`` in head ``h``. The rules were
re-derived from DeepSpeed's documentation and source and are tested against it bit for bit
(``tests/test_deepspeed.py``); corner cases follow DeepSpeed too, e.g. a window that does not fit
the last blocks, negative global indices (Python indexing), and a short last local window.

``to_pattern(seq_len)`` gives the :class:`~sparse_ref.Pattern` (``Pattern.from_block_layout``:
block form, family ``block_sparse``, so the BSR kernels run): token ``(i, j)`` is allowed iff
``layout[h, i // block, j // block]``. One head when every head shares the layout
(``different_layout_per_head=False``), else ``num_heads`` heads. Like DeepSpeed's block-sparse
kernels, no token-level causal mask is applied inside diagonal blocks of ``"unidirectional"``
layouts (DeepSpeed leaves that to ``attn_mask``); add one with ``pattern.causal()``.

Randomness. DeepSpeed draws random blocks (``VariableSparsityConfig``, ``BigBirdSparsityConfig``)
with Python's ``random.sample`` on the global ``random`` state, not with torch's generator. These
classes make the same calls in the same order (head by head, row by row): with ``seed=None`` (the
default) on the global state too, so ``random.seed(s)`` before ``make_layout`` reproduces
DeepSpeed's layout after the same ``random.seed(s)`` bit for bit; with ``seed=s`` they use a
private ``random.Random(s)`` per call, which gives that same layout, every call, without touching
the global state. (Python's ``random`` sequences are stable across platforms and versions for
``sample`` over a ``range``.)

Example:
    >>> cfg = LocalSlidingWindowSparsityConfig(num_heads=2, block=4, num_sliding_window_blocks=3)
    >>> cfg.make_layout(16)[0].tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..checks import (
    check_bool,
    check_choice,
    check_int,
    check_nonneg_int,
    check_pos_int,
)
from ..pattern import Pattern

__all__ = [
    "BigBirdSparsityConfig",
    "BSLongformerSparsityConfig",
    "DenseSparsityConfig",
    "FixedSparsityConfig",
    "LocalSlidingWindowSparsityConfig",
    "SparsityConfig",
    "VariableSparsityConfig",
]

_ATTENTION = ("unidirectional", "bidirectional")


def _int_list(values: Any, name: str, *, positive: bool = False) -> list[int]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    out = [check_int(v, f"{name}[{t}]") for t, v in enumerate(values)]
    if positive:
        for t, v in enumerate(out):
            if v < 1:
                raise ValueError(f"{name}[{t}] must be >= 1, got {v}")
    return out


class SparsityConfig:
    """Base of the layout builders, as DeepSpeed's ``SparsityConfig``.

    Args:
        num_heads (int >= 1): attention heads of the layer.
        block (int >= 1): block size; ``seq_len`` must be a multiple of it.
        different_layout_per_head (bool): give each head its own layout (where the config
            supports it); otherwise head 0's layout is copied to every head.
        seed (int | None): keyword only, not in DeepSpeed: ``None`` draws random blocks from the
            global ``random`` state as DeepSpeed does; an int uses ``random.Random(seed)``.
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        *,
        seed: int | None = None,
    ) -> None:
        self.num_heads = check_pos_int(num_heads, "num_heads")
        self.block = check_pos_int(block, "block")
        self.different_layout_per_head = check_bool(
            different_layout_per_head, "different_layout_per_head"
        )
        self.num_layout_heads = self.num_heads if self.different_layout_per_head else 1
        if seed is not None:
            seed = check_int(seed, "seed")
        self.seed = seed

    # DeepSpeed's helpers ------------------------------------------------------------------
    def setup_layout(self, seq_len: int) -> np.ndarray:
        """Zero int64 layout ``(num_heads, seq_len // block, seq_len // block)``."""
        seq_len = check_int(seq_len, "seq_len")
        if seq_len < 0 or seq_len % self.block != 0:
            raise ValueError(
                f"seq_len must be a non-negative multiple of block = {self.block}, got {seq_len}"
            )
        nb = seq_len // self.block
        return np.zeros((self.num_heads, nb, nb), dtype=np.int64)

    def check_and_propagate_first_head_layout(self, layout: np.ndarray) -> np.ndarray:
        """Copy head 0 to every head unless ``different_layout_per_head``."""
        if not self.different_layout_per_head:
            layout[1:] = layout[0]
        return layout

    def _rng(self) -> Any:
        return _random if self.seed is None else _random.Random(self.seed)

    # public API -------------------------------------------------------------------------------
    def make_layout(self, seq_len: int) -> np.ndarray:
        """The int64 0/1 block layout ``(num_heads, nb, nb)``, equal to DeepSpeed's."""
        raise NotImplementedError

    def to_pattern(self, seq_len: int) -> Pattern:
        """Token-level Pattern of ``make_layout(seq_len)`` (see the module docstring)."""
        layout = self.make_layout(seq_len).astype(bool)
        heads = layout if self.num_layout_heads > 1 else layout[0]
        return Pattern.from_block_layout(heads, self.block, n_q=seq_len, n_k=seq_len)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "num_layout_heads")
        return f"{type(self).__name__}({args})"


def _fill_windows(layout: np.ndarray, windows: list[tuple[int, int]], unidirectional: bool) -> None:
    """Dense square per window ``[s, e)`` of blocks, lower-triangular if unidirectional."""
    for s, e in windows:
        if e > s:
            square = np.ones((e - s, e - s), dtype=np.int64)
            layout[s:e, s:e] |= np.tril(square) if unidirectional else square


def _band(nb: int, half: int, unidirectional: bool = False) -> np.ndarray:
    """``max(0, r - half) <= c < min(r + half + 1, nb)`` (``c <= r`` if unidirectional)."""
    r = np.arange(nb)[:, None]
    c = np.arange(nb)[None, :]
    band = (c >= r - half) & (c <= (r if unidirectional else r + half))
    return band.astype(np.int64)


def _check_global(
    starts: Any, ends: Any, name: str = "global_block_indices"
) -> tuple[list[int], list[int] | None]:
    starts = _int_list(starts, name)
    if ends is None:
        return starts, None
    ends = _int_list(ends, "global_block_end_indices")
    if len(starts) != len(ends):
        raise ValueError(
            f"global_block_end_indices must have the length of global_block_indices "
            f"({len(starts)}), got {len(ends)}"
        )
    for s, e in zip(starts, ends, strict=True):
        if s >= e:
            raise ValueError(
                f"global_block_end_indices: start {s} must be smaller than end {e} "
                "(global_block_indices[t] < global_block_end_indices[t])"
            )
    return starts, ends


def _global_spans(
    starts: list[int], ends: list[int] | None, nb: int
) -> list[tuple[int, int | None]]:
    """Block slices ``[g0:g1]`` of the global blocks that DeepSpeed sets (those starting ``< nb``).

    Single indices keep Python's indexing (``-1`` is the last block; below ``-nb`` DeepSpeed fails
    with an IndexError, here a ValueError); ranges are clipped like slices.
    """
    if ends is None:
        spans: list[tuple[int, int | None]] = []
        for g in starts:
            if g < -nb:
                raise ValueError(
                    f"global_block_indices: {g} is out of range for {nb} blocks (seq_len // block)"
                )
            if g < nb:
                spans.append((g, g + 1 if g != -1 else None))
        return spans
    return [(s, min(e, nb)) for s, e in zip(starts, ends, strict=True) if s < nb]


class DenseSparsityConfig(SparsityConfig):
    """Every block (DeepSpeed's ``DenseSparsityConfig``, kept for comparison)."""

    def make_layout(self, seq_len: int) -> np.ndarray:
        layout = self.setup_layout(seq_len)
        layout[:] = 1
        return layout


class FixedSparsityConfig(SparsityConfig):
    """Sparse Transformer "fixed" pattern as customised by DeepSpeed (Child et al. 2019).

    Rule per head ``h`` (blocks): local windows ``[w * L, (w + 1) * L)`` of ``L =
    num_local_blocks`` blocks attend within themselves (lower-triangular if unidirectional); in each
    full window the ``G = num_global_blocks`` blocks starting at ``L - (1 + h %
    num_different_global_patterns) * G`` are global columns (rows ``>=`` their start if
    unidirectional) and, with ``horizontal_global_attention``, global rows; a short last window
    places its global blocks at ``min(window_start + that offset, nb - G)``.

    Args: as DeepSpeed: ``num_heads``, ``block=16``, ``different_layout_per_head=False``,
    ``num_local_blocks=4``, ``num_global_blocks=1``, ``attention="bidirectional"``,
    ``horizontal_global_attention=False``, ``num_different_global_patterns=1``; plus ``seed``
    (unused, no randomness).

    Example:
        >>> FixedSparsityConfig(1, block=1, num_local_blocks=2).make_layout(4)[0].tolist()
        [[1, 1, 0, 1], [1, 1, 0, 1], [0, 1, 1, 1], [0, 1, 1, 1]]
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_local_blocks: int = 4,
        num_global_blocks: int = 1,
        attention: str = "bidirectional",
        horizontal_global_attention: bool = False,
        num_different_global_patterns: int = 1,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        self.num_local_blocks = check_pos_int(num_local_blocks, "num_local_blocks")
        self.num_global_blocks = check_pos_int(num_global_blocks, "num_global_blocks")
        if self.num_local_blocks % self.num_global_blocks != 0:
            raise ValueError(
                f"num_local_blocks ({self.num_local_blocks}) must be divisible by "
                f"num_global_blocks ({self.num_global_blocks})"
            )
        self.attention = check_choice(attention, "attention", _ATTENTION)
        self.horizontal_global_attention = check_bool(
            horizontal_global_attention, "horizontal_global_attention"
        )
        if self.horizontal_global_attention and self.attention != "bidirectional":
            raise ValueError("horizontal_global_attention=True needs attention='bidirectional'")
        self.num_different_global_patterns = check_pos_int(
            num_different_global_patterns, "num_different_global_patterns"
        )
        if self.num_different_global_patterns > 1 and not self.different_layout_per_head:
            raise ValueError(
                "num_different_global_patterns > 1 needs different_layout_per_head=True"
            )
        limit = self.num_local_blocks // self.num_global_blocks
        if self.num_different_global_patterns > limit:
            raise ValueError(
                f"num_different_global_patterns ({self.num_different_global_patterns}) must be <= "
                f"num_local_blocks // num_global_blocks = {limit}"
            )

    def make_layout(self, seq_len: int) -> np.ndarray:
        layout = self.setup_layout(seq_len)
        nb = layout.shape[1]
        L, G = self.num_local_blocks, self.num_global_blocks
        uni = self.attention == "unidirectional"
        for h in range(self.num_layout_heads):
            lay = layout[h]
            _fill_windows(lay, [(s, min(s + L, nb)) for s in range(0, nb, L)], uni)
            offset = L - (1 + h % self.num_different_global_patterns) * G
            full = nb - nb % L  # blocks covered by full windows
            spans = [(g, g + G) for g in range(offset, full, L)]
            if full < nb:  # short last window
                g = min(full + offset, nb - G)
                spans.append((g, g + G))
            for g0, g1 in spans:
                lay[g0 if uni else 0 :, g0:g1] = 1
                if self.horizontal_global_attention:
                    lay[g0:g1, :] = 1
        return self.check_and_propagate_first_head_layout(layout)


class VariableSparsityConfig(SparsityConfig):
    """DeepSpeed's ``Variable`` layout: random blocks, variable local windows, global blocks.

    Rule per head (blocks): each row first gets ``num_random_blocks`` blocks from
    ``random.sample(range(nb), num_random_blocks)`` (any column, also when unidirectional, as in
    DeepSpeed); local windows have the sizes ``local_window_blocks`` in order, the last size
    repeating to the end (lower-triangular if unidirectional); global blocks are the indices
    ``global_block_indices`` (or the ranges ``[start, end)`` with ``global_block_end_indices``),
    skipped when ``>= nb``: global columns (from their own row on if unidirectional) and, with
    ``horizontal_global_attention``, global rows. ``different_layout_per_head`` only changes the
    random blocks.

    Args: as DeepSpeed: ``num_heads``, ``block=16``, ``different_layout_per_head=False``,
    ``num_random_blocks=0``, ``local_window_blocks=[4]``, ``global_block_indices=[0]``,
    ``global_block_end_indices=None``, ``attention="bidirectional"``,
    ``horizontal_global_attention=False``; plus ``seed`` (see the module docstring).

    Example:
        >>> cfg = VariableSparsityConfig(1, block=1, local_window_blocks=[1, 2])
        >>> cfg.make_layout(4)[0].tolist()
        [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 1]]
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_random_blocks: int = 0,
        local_window_blocks: Sequence[int] = (4,),
        global_block_indices: Sequence[int] = (0,),
        global_block_end_indices: Sequence[int] | None = None,
        attention: str = "bidirectional",
        horizontal_global_attention: bool = False,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        self.num_random_blocks = check_nonneg_int(num_random_blocks, "num_random_blocks")
        self.local_window_blocks = _int_list(
            local_window_blocks, "local_window_blocks", positive=True
        )
        if not self.local_window_blocks:
            raise ValueError("local_window_blocks must hold at least one window size")
        self.global_block_indices, self.global_block_end_indices = _check_global(
            global_block_indices, global_block_end_indices
        )
        self.attention = check_choice(attention, "attention", _ATTENTION)
        self.horizontal_global_attention = check_bool(
            horizontal_global_attention, "horizontal_global_attention"
        )
        if self.horizontal_global_attention and self.attention != "bidirectional":
            raise ValueError("horizontal_global_attention=True needs attention='bidirectional'")

    def make_layout(self, seq_len: int) -> np.ndarray:
        layout = self.setup_layout(seq_len)
        nb = layout.shape[1]
        uni = self.attention == "unidirectional"
        if nb < self.num_random_blocks:
            raise ValueError(
                f"num_random_blocks ({self.num_random_blocks}) must be <= the number of blocks "
                f"{nb} (seq_len // block)"
            )
        rng = self._rng()
        windows, start = [], 0
        for size in self.local_window_blocks:
            windows.append((start, min(start + size, nb)))
            start += size
        last = self.local_window_blocks[-1]
        windows += [(s, min(s + last, nb)) for s in range(start, nb, last)]
        spans = _global_spans(self.global_block_indices, self.global_block_end_indices, nb)
        for h in range(self.num_layout_heads):
            lay = layout[h]
            for row in range(nb):
                lay[row, rng.sample(range(nb), self.num_random_blocks)] = 1
            _fill_windows(lay, windows, uni)
            for g0, g1 in spans:
                if self.horizontal_global_attention:
                    lay[g0:g1, :] = 1
                lay[g0 if uni else 0 :, g0:g1] = 1
        return self.check_and_propagate_first_head_layout(layout)


class BigBirdSparsityConfig(SparsityConfig):
    """DeepSpeed's BigBird layout (Zaheer et al. 2020): random, sliding-window and global blocks.

    Rule per head (blocks): each row ``r`` gets ``random.sample(range(nb), num_random_blocks)``
    (``range(r + 1)`` if unidirectional); then ``|r - c| <= num_sliding_window_blocks // 2``; then
    the first ``num_global_blocks`` rows and columns; unidirectional keeps the lower triangle
    (``c <= r``) of the result. DeepSpeed's checks apply: ``nb`` must be at least
    ``num_random_blocks``, ``num_sliding_window_blocks`` and ``num_global_blocks``; unidirectional
    needs ``num_random_blocks <= 1`` (DeepSpeed fails sampling for row 0 otherwise).
    :func:`sparse_ref.patterns.bigbird` is the library's own BigBird (random blocks disjoint from
    window and global blocks, numpy RNG).

    Args: as DeepSpeed: ``num_heads``, ``block=16``, ``different_layout_per_head=False``,
    ``num_random_blocks=1``, ``num_sliding_window_blocks=3``, ``num_global_blocks=1``,
    ``attention="bidirectional"``; plus ``seed`` (see the module docstring).

    Example:
        >>> cfg = BigBirdSparsityConfig(1, block=1, num_random_blocks=0)
        >>> cfg.make_layout(4)[0].tolist()
        [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 1, 1]]
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_random_blocks: int = 1,
        num_sliding_window_blocks: int = 3,
        num_global_blocks: int = 1,
        attention: str = "bidirectional",
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        self.num_random_blocks = check_nonneg_int(num_random_blocks, "num_random_blocks")
        self.num_sliding_window_blocks = check_nonneg_int(
            num_sliding_window_blocks, "num_sliding_window_blocks"
        )
        self.num_global_blocks = check_nonneg_int(num_global_blocks, "num_global_blocks")
        self.attention = check_choice(attention, "attention", _ATTENTION)
        if self.attention == "unidirectional" and self.num_random_blocks > 1:
            raise ValueError(
                "num_random_blocks must be <= 1 with attention='unidirectional' (DeepSpeed "
                f"samples row 0's random blocks from range(1)), got {self.num_random_blocks}"
            )

    def make_layout(self, seq_len: int) -> np.ndarray:
        layout = self.setup_layout(seq_len)
        nb = layout.shape[1]
        for name in ("num_random_blocks", "num_sliding_window_blocks", "num_global_blocks"):
            if nb < getattr(self, name):
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be <= the number of blocks {nb} "
                    "(seq_len // block)"
                )
        uni = self.attention == "unidirectional"
        rng = self._rng()
        window = _band(nb, self.num_sliding_window_blocks // 2)
        G = self.num_global_blocks
        for h in range(self.num_layout_heads):
            lay = layout[h]
            for row in range(nb):
                population = range(row + 1) if uni else range(nb)
                lay[row, rng.sample(population, self.num_random_blocks)] = 1
            lay |= window
            lay[:G, :] = 1
            lay[:, :G] = 1
            if uni:
                lay[:] = np.tril(lay)
        return self.check_and_propagate_first_head_layout(layout)


class BSLongformerSparsityConfig(SparsityConfig):
    """DeepSpeed's block-sparse Longformer (Beltagy et al. 2020): sliding window plus global blocks.

    Rule per head (blocks): ``|r - c| <= num_sliding_window_blocks // 2``; global blocks (the
    indices ``global_block_indices``, or the ranges ``[start, end)`` with
    ``global_block_end_indices``; skipped when ``>= nb``) are full rows and full columns;
    unidirectional keeps the lower triangle of the result. ``nb`` must be at least
    ``num_sliding_window_blocks``.

    Args: as DeepSpeed: ``num_heads``, ``block=16``, ``different_layout_per_head=False``,
    ``num_sliding_window_blocks=3``, ``global_block_indices=[0]``,
    ``global_block_end_indices=None``, ``attention="bidirectional"``; plus ``seed`` (unused).

    Example:
        >>> BSLongformerSparsityConfig(1, block=1).make_layout(4)[0].tolist()
        [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 1, 1]]
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        different_layout_per_head: bool = False,
        num_sliding_window_blocks: int = 3,
        global_block_indices: Sequence[int] = (0,),
        global_block_end_indices: Sequence[int] | None = None,
        attention: str = "bidirectional",
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, different_layout_per_head, seed=seed)
        self.num_sliding_window_blocks = check_nonneg_int(
            num_sliding_window_blocks, "num_sliding_window_blocks"
        )
        self.global_block_indices, self.global_block_end_indices = _check_global(
            global_block_indices, global_block_end_indices
        )
        self.attention = check_choice(attention, "attention", _ATTENTION)

    def make_layout(self, seq_len: int) -> np.ndarray:
        layout = self.setup_layout(seq_len)
        nb = layout.shape[1]
        if nb < self.num_sliding_window_blocks:
            raise ValueError(
                f"num_sliding_window_blocks ({self.num_sliding_window_blocks}) must be <= the "
                f"number of blocks {nb} (seq_len // block)"
            )
        spans = _global_spans(self.global_block_indices, self.global_block_end_indices, nb)
        window = _band(nb, self.num_sliding_window_blocks // 2)
        for h in range(self.num_layout_heads):
            lay = layout[h]
            lay |= window
            for g0, g1 in spans:
                lay[g0:g1, :] = 1
                lay[:, g0:g1] = 1
            if self.attention == "unidirectional":
                lay[:] = np.tril(lay)
        return self.check_and_propagate_first_head_layout(layout)


class LocalSlidingWindowSparsityConfig(SparsityConfig):
    """DeepSpeed's purely local sliding window of blocks.

    Rule (blocks): ``r - num_sliding_window_blocks // 2 <= c``, and ``c <= r`` if unidirectional
    (the default), else ``c <= r + num_sliding_window_blocks // 2``. One layout for all heads (no
    ``different_layout_per_head`` in DeepSpeed's signature). ``nb`` must be at least
    ``num_sliding_window_blocks``.

    Args: as DeepSpeed: ``num_heads``, ``block=16``, ``num_sliding_window_blocks=3``,
    ``attention="unidirectional"``; plus ``seed`` (unused).
    """

    def __init__(
        self,
        num_heads: int,
        block: int = 16,
        num_sliding_window_blocks: int = 3,
        attention: str = "unidirectional",
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_heads, block, seed=seed)
        self.num_sliding_window_blocks = check_nonneg_int(
            num_sliding_window_blocks, "num_sliding_window_blocks"
        )
        self.attention = check_choice(attention, "attention", _ATTENTION)

    def make_layout(self, seq_len: int) -> np.ndarray:
        layout = self.setup_layout(seq_len)
        nb = layout.shape[1]
        if nb < self.num_sliding_window_blocks:
            raise ValueError(
                f"num_sliding_window_blocks ({self.num_sliding_window_blocks}) must be <= the "
                f"number of blocks {nb} (seq_len // block)"
            )
        uni = self.attention == "unidirectional"
        layout[0] = _band(nb, self.num_sliding_window_blocks // 2, unidirectional=uni)
        return self.check_and_propagate_first_head_layout(layout)
