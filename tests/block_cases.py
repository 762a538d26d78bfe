"""Block-form test patterns shared by the BSR forward and backward kernel tests: every structure
the block constructors build, with ragged shapes for every block size in ``BLOCKS`` (inputs for
them: ``helpers.pattern_inputs``)."""

from __future__ import annotations

import numpy as np

from sparse_ref import Pattern, blocks, patterns


def layout_pattern(n_q: int, n_k: int, block) -> Pattern:
    """Random block layout (all blocks full) with a ragged last block and two empty block rows."""
    bq, bk = blocks.check_block(block)
    nbq, nbk = -(-n_q // bq), -(-n_k // bk)
    layout = np.random.default_rng(1).random((nbq, nbk)) < 0.4
    layout[min(1, nbq - 1)] = False
    layout[-1] = False
    return Pattern.from_block_layout(layout, block, n_q=n_q, n_k=n_k)


def all_partial(n_q: int, n_k: int, block) -> Pattern:
    """Unstructured token pattern given a block form: (almost) every stored block is partial."""
    mask = np.random.default_rng(2).random((n_q, n_k)) < 0.15
    return Pattern.from_dense(mask).with_block_form(block)


# name -> (builder(block) -> Pattern); shapes are ragged for every block size below
STRUCTURES = {
    "causal_sliding_window": lambda b: Pattern.from_bsr(
        patterns.causal_sliding_window(300, 45, block=b).block_form
    ),
    "sliding_window": lambda b: Pattern.from_bsr(
        patterns.sliding_window(300, 20, 7, block=b).block_form
    ),
    "causal_bottom_right_nq<nk": lambda b: Pattern.from_bsr(
        patterns.causal(150, 300, "bottom_right", block=b).block_form
    ),
    "causal_top_left_nq>nk": lambda b: Pattern.from_bsr(
        patterns.causal(300, 200, block=b).block_form
    ),
    "sinks": lambda b: Pattern.from_bsr(patterns.sinks(300, 4, 40, block=b).block_form),
    "global_local": lambda b: Pattern.from_bsr(
        patterns.global_local(300, 10, 10, [0, 1, 150, -1], block=b).block_form
    ),
    "prefix_lm": lambda b: Pattern.from_bsr(patterns.prefix_lm(300, 70, block=b).block_form),
    "dense_all_full": lambda b: Pattern.from_bsr(patterns.dense(100, 170, block=b).block_form),
    "layout_empty_rows": lambda b: layout_pattern(290, 250, b),
    "all_partial": lambda b: all_partial(200, 230, b),
}
BLOCKS = [16, 32, 64, 128]
