"""The torch peers: FlexAttention on the CPU (compiled) and SDPA with a boolean mask.

torch is imported lazily (:func:`.process.import_torch`); without it the runners raise
:class:`.process.PeerUnavailable` with the reason (a ``NotImplementedError``: asv reports the
benchmark as skipped; ``sparse-ref bench`` prints the reason in the peer's row).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .cases import window_of
from .process import import_torch

__all__ = [
    "flex_mask_mod",
    "flex_block_mask",
    "flex_runner",
    "dense_mask",
    "sdpa_runner",
    "sdpa_backward_runner",
]


def flex_mask_mod(pattern: str, p: Any) -> Any:
    """FlexAttention ``mask_mod`` of benchmark pattern ``pattern`` (``p``: the built Pattern; for
    BigBird it must hold its block form, whose layout the mask looks up)."""
    w = window_of(pattern)
    if w is not None:

        def window_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (q_idx >= kv_idx) & (q_idx - kv_idx < w)

        return window_mod
    torch = import_torch()
    bs = p.to_bsr()
    layout = np.zeros(bs.grid, dtype=bool)
    layout[bs.block_rows(), bs.indices] = True
    layout_t = torch.from_numpy(layout)
    block = bs.block[0]

    def layout_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return layout_t[q_idx // block, kv_idx // block]

    return layout_mod


def flex_block_mask(kind: str, p: Any, mask_mod: Any) -> Any:
    """FlexAttention ``BlockMask`` for pattern ``p``.

    ``"create_block_mask"``: FlexAttention's own (default 128-blocks; ``_compile=True`` evaluates
    the mask block by block instead of materialising n x n entries), what a user writes.
    ``"exact_blocks"``: our block form handed over (full blocks as ``full_kv_*``, which skip
    ``mask_mod``; partial blocks as ``kv_*``), FlexAttention's best case for the structure."""
    torch = import_torch()
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    n = p.shape[0]
    if kind == "create_block_mask":
        with warnings.catch_warnings():  # _compile is deprecated but avoids n x n mask entries
            warnings.simplefilter("ignore")
            return create_block_mask(
                mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu", _compile=True
            )
    if kind != "exact_blocks":
        raise ValueError(f"unknown FlexAttention mask kind {kind!r}")
    bs = p.to_bsr()
    nbq, nbk = bs.grid
    rows = bs.block_rows()

    def table(sel: np.ndarray) -> tuple[Any, Any]:
        counts = np.bincount(rows[sel], minlength=nbq).astype(np.int32)
        indices = np.zeros((nbq, nbk), dtype=np.int32)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(int(sel.sum())) - np.repeat(start, counts)
        indices[rows[sel], slot] = bs.indices[sel]
        return torch.from_numpy(counts)[None, None], torch.from_numpy(indices)[None, None]

    kv_num, kv_idx = table(~bs.full)
    full_num, full_idx = table(bs.full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=bs.block,
        mask_mod=mask_mod,
        seq_lengths=p.shape,
    )


def flex_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, block_mask: Any) -> Callable[[], Any]:
    """FlexAttention on the CPU, ``torch.compile(flex_attention, dynamic=False)``, no grad. The
    first call compiles (warm it, and time it with :func:`first_call_s` for the compile time);
    dynamo recompiles for every new shape and gives up after its ``cache_size_limit``, so a
    process that compiles many cases calls ``torch._dynamo.reset()`` between them."""
    torch = import_torch()
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])

    def run() -> Any:
        with torch.no_grad():
            return flex(qt, kt, vt, block_mask=block_mask, scale=scale)

    return run


def dense_mask(p: Any) -> Any:
    """The pattern as an ``(n_q, n_k)`` torch bool tensor (SDPA: True = attend)."""
    torch = import_torch()
    return torch.from_numpy(p.mask_rows(np.arange(p.shape[0])))


def sdpa_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Any) -> Callable[[], Any]:
    """torch ``scaled_dot_product_attention`` with a dense boolean mask, forward, no grad."""
    torch = import_torch()
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])

    def run() -> Any:
        with torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(
                qt, kt, vt, attn_mask=mask, scale=scale
            )

    return run


def sdpa_backward_runner(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, dout: np.ndarray, mask: Any
) -> Callable[[], Any]:
    """SDPA's backward alone: the forward runs here, once; each call is
    ``out.backward(dout, retain_graph=True)``."""
    torch = import_torch()
    qt, kt, vt = (torch.from_numpy(x).requires_grad_(True) for x in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    dout_t = torch.from_numpy(dout)

    def run() -> Any:
        for t in (qt, kt, vt):
            t.grad = None
        out.backward(dout_t, retain_graph=True)
        return qt.grad

    return run
