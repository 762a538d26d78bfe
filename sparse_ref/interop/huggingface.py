"""Hugging Face BigBird: the exact pattern of ``BigBirdBlockSparseAttention`` from its random plan.

Hugging Face's ``transformers`` BigBird (``modeling_big_bird.py``,
``attention_type="block_sparse"``, ITC) cuts a sequence into ``nb = seq_len / block_size`` blocks
and attends, per head ``h`` and query block ``qb``:

| query block | key blocks |
|---|---|
| ``0`` and ``nb - 1`` | all (global rows) |
| ``1`` | ``0, 1, 2, nb - 1`` and ``rand_attn[h, 0]`` |
| ``2 .. nb - 3`` | ``0, qb - 1, qb, qb + 1, nb - 1`` and ``rand_attn[h, qb - 1]`` |
| ``nb - 2`` | ``0, nb - 3, nb - 2, nb - 1`` and ``rand_attn[h, nb - 3]`` |

``rand_attn`` is the random plan, ``(num_heads, nb - 2, num_random_blocks)`` block indices (row
``t`` belongs to query block ``t + 1``), drawn with NumPy's global RNG by
``_bigbird_block_rand_mask`` (sequence lengths 1024, 3072, 4096) or
``_bigbird_block_rand_mask_with_head`` (other lengths). Hugging Face concatenates the key blocks
listed above and takes one softmax, so a random block that repeats a window or global block (the
1024/3072/4096 plans allow it near the ends) is counted *twice*; no set of allowed keys reproduces
that, and :func:`from_hf_bigbird_rand_attn` refuses such a plan unless ``duplicates="merge"``.
Padding (``attention_mask``) is not part of the plan; the pattern assumes none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_nonneg_int, check_pos_int
from ..pattern import Pattern

__all__ = ["hf_bigbird_layout", "from_hf_bigbird_rand_attn"]


def _plan(rand_attn: Any) -> np.ndarray:
    plan = np.asarray(rand_attn)
    if plan.dtype == bool or not np.issubdtype(plan.dtype, np.integer):
        raise TypeError(f"rand_attn must hold integer block indices, got dtype {plan.dtype}")
    if plan.ndim == 2:
        plan = plan[None]
    elif plan.ndim == 4:  # (batch, heads, nb - 2, r): Hugging Face repeats one plan per batch
        if not (plan == plan[:1]).all():
            raise ValueError("rand_attn differs between batch elements; pass one batch element")
        plan = plan[0]
    if plan.ndim != 3:
        raise ValueError(
            f"rand_attn must be (nb - 2, r), (heads, nb - 2, r) or (batch, heads, nb - 2, r), got "
            f"shape {np.asarray(rand_attn).shape}"
        )
    return plan.astype(np.int64)


def hf_bigbird_layout(rand_attn: Any, *, duplicates: str = "error") -> np.ndarray:
    """The bool block layout ``(num_heads, nb, nb)`` of Hugging Face BigBird for a random plan
    (see the module docstring); :func:`from_hf_bigbird_rand_attn` wraps it in a Pattern.

    Example:
        >>> plan = [[[3], [4], [1], [2]]]  # one head, nb = 6 blocks, one random block per row
        >>> hf_bigbird_layout(plan)[0].astype(int).tolist()[1]  # query block 1: 0, 1, 2, 5 and 3
        [1, 1, 1, 1, 0, 1]
    """
    if duplicates not in ("error", "merge"):
        raise ValueError(f"duplicates must be 'error' or 'merge', got {duplicates!r}")
    plan = _plan(rand_attn)
    heads, rows, r = plan.shape
    nb = rows + 2
    if nb < 4:
        raise ValueError(f"Hugging Face BigBird needs at least 4 blocks, the plan has nb = {nb}")
    if plan.size and (plan.min() < 0 or plan.max() >= nb):
        raise ValueError(f"rand_attn block indices must be in [0, nb = {nb})")
    qb = np.arange(1, nb - 1)  # query blocks with a random row
    # fixed key blocks of each query block 1 .. nb - 2: first, window (clipped as HF does), last
    fixed = np.stack([np.zeros_like(qb), qb - 1, qb, qb + 1, np.full_like(qb, nb - 1)], axis=1)
    fixed[0] = [0, 0, 1, 2, nb - 1]  # query block 1: 0, 1, 2, last
    fixed[-1] = [0, nb - 3, nb - 2, nb - 1, nb - 1]  # query block nb - 2: 0, nb-3, nb-2, last
    if duplicates == "error" and r:
        srt = np.sort(plan, axis=-1)
        repeat = (
            (srt[..., 1:] == srt[..., :-1]).any(axis=-1) if r > 1 else np.zeros((heads, rows), bool)
        )
        clash = (plan[..., :, None] == fixed[None, :, None, :]).any(axis=(-1, -2))
        bad = repeat | clash
        if bad.any():
            h, t = np.argwhere(bad)[0]
            raise ValueError(
                f"rand_attn[{h}, {t}] = {plan[h, t].tolist()} repeats a key block of query block "
                f"{t + 1} (fixed blocks {sorted(set(fixed[t].tolist()))}); Hugging Face then "
                "counts that block twice in the softmax, which no pattern can express. Pass "
                "duplicates='merge' to take the union anyway."
            )
    layout = np.zeros((heads, nb, nb), dtype=bool)
    layout[:, [0, nb - 1], :] = True
    h_idx = np.arange(heads)[:, None, None]
    layout[h_idx, qb[None, :, None], fixed[None, :, :]] = True
    if r:
        layout[h_idx, qb[None, :, None], plan] = True
    return layout


def from_hf_bigbird_rand_attn(
    rand_attn: Any, block_size: int, seq_len: int | None = None, *, duplicates: str = "error"
) -> Pattern:
    """The pattern Hugging Face's ``BigBirdBlockSparseAttention`` computes for a random plan.

    Args:
        rand_attn: the plan, ``(num_heads, nb - 2, num_random_blocks)`` (what
            ``_bigbird_block_rand_mask_with_head`` returns, stacked), ``(nb - 2, r)`` for one head,
            or ``(batch, num_heads, nb - 2, r)`` as inside the forward pass.
        block_size: tokens per block (``config.block_size``).
        seq_len: optional check: must equal ``nb * block_size`` (Hugging Face pads to it).
        duplicates: ``"error"`` (default) refuses a random block that repeats a window/global
            block or another random block of the same row (Hugging Face would count it twice);
            ``"merge"`` takes the union.

    Returns:
        A block-form Pattern (family ``block_sparse``) of shape ``(nb * block_size,) * 2`` with
        one head per plan head.
    """
    block_size = check_pos_int(block_size, "block_size")
    if seq_len is not None:
        seq_len = check_nonneg_int(seq_len, "seq_len")
    layout = hf_bigbird_layout(rand_attn, duplicates=duplicates)
    n = layout.shape[-1] * block_size
    if seq_len is not None and seq_len != n:
        raise ValueError(
            f"seq_len = {seq_len} does not match the plan: nb = {layout.shape[-1]} blocks of "
            f"{block_size} = {n} tokens"
        )
    return Pattern.from_block_layout(layout if len(layout) > 1 else layout[0], block_size)
