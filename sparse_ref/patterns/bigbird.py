"""BigBird: block-level window + global + random attention (i query, j key; bi = i // block)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import blocks as _blocks
from ..checks import check_index_list, check_nonneg_int, check_pos_int
from ..pattern import Pattern

__all__ = ["bigbird"]


def bigbird(
    n: int,
    block: int,
    num_window_blocks: int = 3,
    global_blocks: Any = (0, -1),
    num_random_blocks: int = 3,
    seed: int = 0,
    num_heads: int = 1,
) -> Pattern:
    """Block level: ``bi`` or ``bj`` global, or ``|bi - bj| <= num_window_blocks // 2``, or random.

    BigBird (Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences"), ITC variant, at
    block level. With ``nb = ceil(n / block)`` blocks (the last one may be partial) and ``G`` the
    global block set, block ``(bi, bj)`` of head ``h`` is allowed when

    * ``bi in G`` or ``bj in G`` (global rows attend everything, everything attends global columns);
    * ``|bi - bj| <= num_window_blocks // 2`` (sliding window of blocks; 0 and 1 both mean the
      diagonal block only);
    * ``bj`` is one of the random blocks of row ``bi``: each non-global block row draws
      ``min(num_random_blocks, |C|)`` distinct blocks uniformly from ``C``, the blocks outside its
      window and outside ``G`` (so random blocks never duplicate window or global blocks).

    Token ``(i, j)`` is allowed iff its block is. The pattern is built in block form (block size
    ``block``, every stored block full, so the BSR kernels run; token CSR is made on demand).
    Randomness, per head: head ``h`` draws from
    ``numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence(seed, spawn_key=(h,))))``,
    i.e. the ``h``-th child of ``SeedSequence(seed).spawn(...)``; so head ``h`` does not depend on
    ``num_heads`` and heads are independent streams. Within a head, the draws use Floyd's
    algorithm: step ``s`` in ``0 .. num_random_blocks - 1`` makes one ``rng.integers`` call
    vectorised over the non-global block rows in ascending order. ``bigbird_layout`` returns the
    block layout itself.

    Args:
        n (int >= 1): number of tokens (square pattern).
        block (int >= 1): block size in tokens.
        num_window_blocks (int >= 0): width of the block window; its half is ``// 2``.
        global_blocks (sequence of int): global block indices in ``[-nb, nb)``, negative counting
            from the end (default: first and last block); duplicates merge.
        num_random_blocks (int >= 0): random blocks per non-global block row.
        seed (int >= 0): root seed of the per-head generators.
        num_heads (int >= 1): heads, each with its own random blocks.

    Example:
        >>> p = bigbird(10, 2, num_window_blocks=3, global_blocks=[0], num_random_blocks=1)
        >>> p.shape, p.num_heads
        ((10, 10), 1)
        >>> bigbird_layout(10, 2, 3, [0], 0)[0].astype(int).tolist()[2]
        [1, 1, 1, 1, 0]
    """
    params, nb, keys = _block_keys(
        n, block, num_window_blocks, global_blocks, num_random_blocks, seed, num_heads
    )
    indptr = np.stack([_indptr(k // max(nb, 1), nb) for k in keys])
    indices = np.concatenate(keys) % max(nb, 1)
    n, block = params["n"], params["block"]
    blocks = _blocks.BlockSparse.from_arrays(indptr, indices, block, (n, n))
    return Pattern._new(None, blocks=blocks, family="bigbird", params=params)


def bigbird_layout(
    n: int,
    block: int,
    num_window_blocks: int = 3,
    global_blocks: Any = (0, -1),
    num_random_blocks: int = 3,
    seed: int = 0,
    num_heads: int = 1,
) -> np.ndarray:
    """The bool block layout ``(num_heads, nb, nb)`` of :func:`bigbird` (same arguments, rule)."""
    _, nb, keys = _block_keys(
        n, block, num_window_blocks, global_blocks, num_random_blocks, seed, num_heads
    )
    layout = np.zeros((len(keys), nb * nb), dtype=bool)
    for h, k in enumerate(keys):
        layout[h, k] = True
    return layout.reshape(len(keys), nb, nb)


def _indptr(rows: np.ndarray, nb: int) -> np.ndarray:
    out = np.zeros(nb + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=nb), out=out[1:])
    return out


def _block_keys(
    n: Any,
    block: Any,
    num_window_blocks: Any,
    global_blocks: Any,
    num_random_blocks: Any,
    seed: Any,
    num_heads: Any,
) -> tuple[dict[str, Any], int, list[np.ndarray]]:
    """Validated params, ``nb``, and per head the sorted allowed blocks as keys ``bi * nb + bj``.

    Works on block lists, never on a dense ``nb x nb`` layout, so memory is O(allowed blocks).
    """
    n = check_pos_int(n, "n")
    block = check_pos_int(block, "block")
    num_window_blocks = check_nonneg_int(num_window_blocks, "num_window_blocks")
    nb = -(-n // block)
    glob = check_index_list(global_blocks, "global_blocks", nb)
    num_random_blocks = check_nonneg_int(num_random_blocks, "num_random_blocks")
    seed = check_nonneg_int(seed, "seed")
    num_heads = check_pos_int(num_heads, "num_heads")
    params = {
        "n": n,
        "block": block,
        "num_window_blocks": num_window_blocks,
        "global_blocks": [int(g) for g in np.asarray(global_blocks, dtype=np.int64).ravel()],
        "num_random_blocks": num_random_blocks,
        "seed": seed,
        "num_heads": num_heads,
    }

    half = min(num_window_blocks // 2, nb)
    is_global = np.zeros(nb, dtype=bool)
    is_global[glob] = True
    rows = np.flatnonzero(~is_global)  # the non-global block rows; global rows are full
    cand = rows  # random blocks come from the non-global blocks too
    offsets = np.arange(-half, half + 1, dtype=np.int64)
    win_r = np.repeat(rows, len(offsets))
    win_c = (rows[:, None] + offsets[None, :]).ravel()
    inside = (win_c >= 0) & (win_c < nb)
    base = np.concatenate(
        [
            win_r[inside] * nb + win_c[inside],  # window
            (rows[:, None] * nb + glob[None, :]).ravel(),  # global columns
            (glob[:, None] * nb + np.arange(nb)[None, :]).ravel(),  # global rows
        ]
    )
    base.sort()
    if len(base) > 1:
        base = base[np.concatenate(([True], base[1:] != base[:-1]))]

    # Candidates of row bi: the non-global blocks C (sorted) minus the window [bi-half, bi+half],
    # which is one contiguous slice C[a:z]; rank r maps to C[r] below a and C[r + z - a] above.
    a = np.searchsorted(cand, rows - half, side="left")
    z = np.searchsorted(cand, rows + half, side="right")
    size = len(cand) - (z - a)

    keys = []
    for h in range(num_heads):
        if num_random_blocks == 0 or len(rows) == 0:
            keys.append(base)
            continue
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(h,))))
        ranks = _floyd_sample(rng, size, num_random_blocks)
        valid = ranks >= 0
        picked = cand[np.where(ranks < a[:, None], ranks, ranks + (z - a)[:, None])[valid]]
        owner = np.broadcast_to(rows[:, None], ranks.shape)[valid]
        keys.append(np.sort(np.concatenate([base, owner * nb + picked])))  # disjoint from base
    return params, nb, keys


def _floyd_sample(rng: np.random.Generator, size: np.ndarray, k: int) -> np.ndarray:
    """Per row a uniform ``k``-subset of ``[0, size)`` (Floyd's algorithm); ``(rows, k)``, -1 pads.

    Step ``s`` draws ``t`` uniform in ``[0, size - k + s]`` for every row with one ``rng.integers``
    call and keeps ``t``, or ``size - k + s`` if ``t`` was already chosen. Rows with
    ``size <= k`` take all of ``[0, size)`` (their draws are discarded, the stream is unchanged).
    """
    chosen = np.full((len(size), k), -1, dtype=np.int64)
    for s in range(k):
        top = size - k + s
        t = rng.integers(0, np.maximum(top + 1, 1))
        dup = (chosen[:, :s] == t[:, None]).any(axis=1)
        chosen[:, s] = np.where(dup, top, t)
    short = size <= k
    slots = np.arange(k, dtype=np.int64)
    chosen[short] = np.where(slots[None, :] < size[short, None], slots[None, :], -1)
    return chosen
