"""PyTorch interop: FlexAttention ``BlockMask`` and torch sparse CSR, to and from ``Pattern``.

torch is optional (``pip install 'sparse-ref[torch]'``); it is imported when a function here is
called, not when ``sparse_ref`` is imported.

FlexAttention (``torch.nn.attention.flex_attention``) describes a mask by blocks of ``(Q_BLOCK,
KV_BLOCK)`` tokens: per query block row, ``full_kv_num_blocks``/``full_kv_indices`` list the blocks
where every entry is allowed (no ``mask_mod`` call), ``kv_num_blocks``/``kv_indices`` the *partial*
blocks, whose entries ``mask_mod(b, h, q_idx, kv_idx)`` decides, and every other block is skipped.
:func:`to_flex_block_mask` builds exactly that from the pattern's block form (full and partial
blocks from :meth:`Pattern.to_bsr`, a ``mask_mod`` that looks up the pattern's deduplicated
partial-block masks); the ``mask_mod`` is also right on full and empty blocks, so eager (unfused)
FlexAttention, which evaluates ``mask_mod`` everywhere, gives the same result as the compiled
kernel.

Example:
    >>> import torch
    >>> from torch.nn.attention.flex_attention import flex_attention
    >>> from sparse_ref import patterns
    >>> p = patterns.causal_sliding_window(256, 48)
    >>> bm = to_flex_block_mask(p, block=64)
    >>> q = k = v = torch.randn(1, 1, 256, 16)
    >>> out = flex_attention(q, k, v, block_mask=bm)  # doctest: +SKIP
    >>> from_flex_block_mask(bm) == p
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..blocks import BlockSparse, check_block
from ..checks import check_compressed, check_nonneg_int, check_pos_int
from ..pattern import Pattern

__all__ = [
    "attention",
    "from_flex_block_mask",
    "from_mask_mod",
    "from_torch_sparse_csr",
    "require_torch",
    "to_flex_block_mask",
    "to_torch_sparse_csr",
]


def require_torch() -> Any:
    """Import torch, or raise ``ImportError`` naming the extra to install."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "this function needs PyTorch, which is not installed; install the torch extra: "
            "pip install 'sparse-ref[torch]' (or pip install torch)"
        ) from err
    return torch


def _flex() -> Any:
    require_torch()
    try:
        from torch.nn.attention import flex_attention
    except ImportError as err:
        raise ImportError(
            "FlexAttention (torch.nn.attention.flex_attention) needs torch >= 2.5; pip install "
            "'sparse-ref[torch]' installs a recent one"
        ) from err
    return flex_attention


# ------------------------------------------------------------------- differentiable attention
def attention(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern | Sequence[Pattern],
    *,
    scale: float | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
) -> Any:
    """Sparse attention on torch tensors, differentiable: a ``torch.autograd`` op.

    Computes :func:`sparse_ref.attention` (same rule, shapes, GQA and empty-row conventions) and
    its gradients with :func:`sparse_ref.attention_backward`: CPU tensors through the Numba
    kernels, CUDA tensors through the CuPy kernels (zero-copy via DLPack, on torch's current
    stream). Tensors that require grad are accepted; the gradient also flows through ``lse``
    (not with a softcap). Under ``torch.compile`` (``fullgraph=True`` too) each call is one opaque
    custom op, ``sparse_ref::attention``, with its backward ``sparse_ref::attention_backward``.

    Args:
        q: ``(B, H, n_q, d)``, or ``(H, n_q, d)`` / ``(n_q, d)``; float64, float32, float16 or
            bfloat16 (16-bit inputs are computed in float32, except float16 on CUDA).
        k, v: ``(B, H_kv, n_k, d)``, ``(B, H_kv, n_k, d_v)``, same rank, dtype and device;
            ``H % H_kv == 0``.
        pattern: a :class:`~sparse_ref.Pattern` of shape ``(n_q, n_k)``, or a sequence of ``B``
            patterns, one per batch element. The ops find it by its fingerprint in a registry of
            the last 256 patterns used.
        scale: default ``1/sqrt(d)``. softcap: ``s = softcap * tanh(s / softcap)`` if set.
        return_lse: also return ``lse (..., n_q)``: float64 for float64 inputs, else float32.

    Returns:
        ``out (..., n_q, d_v)`` in q's dtype and device (and ``lse``).

    Example:
        >>> import torch
        >>> from sparse_ref import patterns
        >>> q = torch.randn(1, 2, 64, 16, dtype=torch.float64, requires_grad=True)
        >>> out = attention(q, q, q, patterns.causal_sliding_window(64, 8))
        >>> out.sum().backward()
        >>> q.grad.shape
        torch.Size([1, 2, 64, 16])
    """
    require_torch()
    from . import _torch_op

    return _torch_op.attention(
        q, k, v, pattern, scale=scale, softcap=softcap, return_lse=return_lse
    )


# ----------------------------------------------------------------------------- FlexAttention
def _padded_lists(
    counts: np.ndarray, cols: np.ndarray, rows: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per (head, block row): the number of listed blocks and their columns padded with 0."""
    heads, nbq, nbk = shape
    num = counts.reshape(heads, nbq).astype(np.int32)
    idx = np.zeros((heads, nbq, nbk), dtype=np.int32)
    if len(cols):
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(len(cols)) - np.repeat(starts, counts)
        idx.reshape(heads * nbq, nbk)[rows, slot] = cols
    return num, idx


def to_flex_block_mask(pattern: Pattern, block: Any = 128, *, device: Any = "cpu") -> Any:
    """The FlexAttention ``BlockMask`` of ``pattern``, blocks of ``block = (Q_BLOCK, KV_BLOCK)``.

    Full blocks go to ``full_kv_num_blocks``/``full_kv_indices``, partial blocks to
    ``kv_num_blocks``/``kv_indices`` (ascending block columns), and ``mask_mod(b, h, q_idx,
    kv_idx)`` reads the pattern's partial-block masks through a ``(H, nbq, nbk)`` table of mask ids
    (it is exact on every block, so eager FlexAttention agrees with the compiled kernel). The batch
    dimension is 1 (broadcast); the head dimension is the pattern's number of heads (1 broadcasts
    to every head). ``seq_lengths`` is the pattern's shape, so lengths need not be multiples of the
    block.

    Memory: ``kv_indices`` and the mask-id table hold ``H * nbq * nbk`` int32, as FlexAttention's
    own ``create_block_mask`` does.

    Args:
        pattern: any pattern (block form or token CSR; converted with :meth:`Pattern.to_bsr`).
        block: an int or ``(Q_BLOCK, KV_BLOCK)``; FlexAttention's default is 128.
        device: where the tensors live.
    """
    _check_pattern(pattern)
    torch = require_torch()
    fa = _flex()
    bq, bk = check_block(block)
    bsr = pattern.to_bsr((bq, bk))
    heads = bsr.num_heads
    nbq, nbk = bsr.grid
    rows = bsr.block_rows() + np.repeat(
        np.arange(heads) * nbq, np.diff(bsr.indptr[:, [0, -1]], axis=1).ravel()
    )
    cols = bsr.indices
    full = bsr.full
    lists = []
    for sel in (~full, full):
        counts = np.bincount(rows[sel], minlength=heads * nbq)
        lists.append(_padded_lists(counts, cols[sel], rows[sel], (heads, nbq, nbk)))
    (kv_num, kv_idx), (full_num, full_idx) = lists
    # mask ids: partial blocks -> their mask, then one all-False (empty) and one all-True (full)
    n_masks = len(bsr.mask_table)
    lut = np.full((heads * nbq, nbk), n_masks, dtype=np.int32)
    lut[rows, cols] = np.where(full, n_masks + 1, bsr.mask_index)
    table = np.concatenate(
        [bsr.mask_table, np.zeros((1, bq, bk), dtype=bool), np.ones((1, bq, bk), dtype=bool)]
    )
    lut_t = torch.from_numpy(lut.reshape(heads, nbq, nbk)).to(device)
    table_t = torch.from_numpy(table).to(device)
    mask_mod = _lookup_mask_mod(lut_t, table_t, bq, bk, heads)

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a)[None]).to(device)

    return fa.BlockMask.from_kv_blocks(
        t(kv_num),
        t(kv_idx),
        t(full_num),
        t(full_idx),
        BLOCK_SIZE=(bq, bk),
        mask_mod=mask_mod,
        seq_lengths=pattern.shape,
    )


def _lookup_mask_mod(lut: Any, table: Any, bq: int, bk: int, heads: int) -> Any:
    """``mask_mod`` reading ``table[lut[h, q // bq, kv // bk], q % bq, kv % bk]``."""

    def sparse_ref_mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        hh = h if heads > 1 else 0
        mid = lut[hh, q_idx // bq, kv_idx // bk]
        return table[mid, q_idx % bq, kv_idx % bk]

    return sparse_ref_mask_mod


def _eval_mask_mod(mask_mod: Any, b: int, h: int, q: Any, kv: Any) -> Any:
    """``mask_mod`` on 1-D index tensors, elementwise: broadcasting first, ``torch.vmap`` if that
    fails (mask_mods written for scalars)."""
    torch = require_torch()
    bt = torch.full_like(q, b)
    ht = torch.full_like(q, h)
    try:
        out = mask_mod(bt, ht, q, kv)
        return torch.broadcast_to(torch.as_tensor(out, dtype=torch.bool), q.shape)
    except Exception:  # noqa: BLE001 - fall back to the evaluation FlexAttention itself uses
        pass
    try:
        from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex
    except ImportError:  # pragma: no cover
        from contextlib import nullcontext as TransformGetItemToIndex  # type: ignore[assignment]
    with TransformGetItemToIndex():
        out = torch.vmap(mask_mod, in_dims=(0, 0, 0, 0))(bt, ht, q, kv)
    return out.to(torch.bool)


def from_flex_block_mask(
    bm: Any, *, batch: int | None = None, per_batch: bool = False, max_entries: int = 1 << 24
) -> Pattern | list[Pattern]:
    """The pattern a FlexAttention ``BlockMask`` allows, for every batch element.

    Full blocks (``full_kv_*``) are allowed entirely; partial blocks (``kv_*``) entry by entry as
    ``bm.mask_mod`` decides, evaluated on their entries only (about ``max_entries`` at a time);
    unlisted blocks are masked. Entries beyond ``bm.seq_lengths`` are dropped. The result holds
    the block form with blocks ``bm.BLOCK_SIZE``; its heads are the mask's heads (1 broadcasts).

    Args:
        bm: a ``BlockMask`` with batch dimension ``B`` (its tensors are ``(B, H, ...)``).
        batch: convert only batch element ``batch`` (one Pattern).
        per_batch: return a list of ``B`` patterns, one per batch element, as
            :func:`sparse_ref.attention` takes them.
        max_entries: mask_mod evaluations per call.

    Returns:
        With neither ``batch`` nor ``per_batch``: one Pattern when every batch element has the same
        mask (always for ``B = 1``); a ``ValueError`` naming the first element that differs
        otherwise (never batch 0 silently).
    """
    torch = require_torch()
    if not all(hasattr(bm, a) for a in ("BLOCK_SIZE", "kv_num_blocks", "kv_indices", "mask_mod")):
        raise TypeError(
            f"bm must be a FlexAttention BlockMask (with BLOCK_SIZE, kv_num_blocks, kv_indices "
            f"and mask_mod), got {type(bm).__name__}"
        )
    max_entries = check_pos_int(max_entries, "max_entries")
    if not isinstance(per_batch, bool):
        raise TypeError(f"per_batch must be a bool, got {type(per_batch).__name__}")
    kv_num = bm.kv_num_blocks
    if kv_num.ndim != 3:
        raise ValueError(f"expected kv_num_blocks of shape (B, H, nbq), got {tuple(kv_num.shape)}")
    B = int(kv_num.shape[0])
    if batch is not None:
        batch = check_nonneg_int(batch, "batch")
        if per_batch:
            raise ValueError("pass batch (one element) or per_batch=True (all of them), not both")
        if not batch < B:
            raise ValueError(f"batch must be in [0, {B}), got {batch}")
        return _flex_batch_pattern(torch, bm, batch, max_entries)
    found = [_flex_batch_pattern(torch, bm, b, max_entries) for b in range(B)]
    if per_batch:
        return found
    for b in range(1, B):
        if found[b] != found[0]:
            raise ValueError(
                f"the BlockMask's batch elements have different masks (batch {b} differs from "
                "batch 0): pass per_batch=True for one pattern per batch element (attention "
                "accepts the list), or batch=b for one of them"
            )
    return found[0]


def _flex_batch_pattern(torch: Any, bm: Any, batch: int, max_entries: int) -> Pattern:
    """The pattern of batch element ``batch`` of ``bm`` (see :func:`from_flex_block_mask`)."""
    block = bm.BLOCK_SIZE
    bq, bk = (int(block), int(block)) if isinstance(block, int) else (int(x) for x in block)
    kv_num = bm.kv_num_blocks.detach().cpu()
    lengths = getattr(bm, "seq_lengths", None)  # torch < 2.6: whole blocks
    if lengths is None:
        lengths = (kv_num.shape[-1] * bq, bm.kv_indices.shape[-1] * bk)
    n_q, n_k = (int(x) for x in lengths)
    heads = kv_num.shape[1]
    nbq, nbk = -(-n_q // bq), -(-n_k // bk)

    def listed(num: Any, idx: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if num is None:
            return (np.zeros(0, dtype=np.int64),) * 3
        num = num.detach().cpu()[batch].numpy().astype(np.int64)[:, :nbq]
        idx = idx.detach().cpu()[batch].numpy().astype(np.int64)[:, :nbq]
        slot = np.arange(idx.shape[-1])
        keep = slot[None, None, :] < num[:, :, None]
        h, bi, _ = np.nonzero(keep)
        bj = idx[keep]
        ok = bj < nbk
        return h[ok], bi[ok], bj[ok]

    fh, fbi, fbj = listed(bm.full_kv_num_blocks, bm.full_kv_indices)
    ph, pbi, pbj = listed(bm.kv_num_blocks, bm.kv_indices)
    # evaluate mask_mod on the in-range entries of the partial blocks (mask_mods may index
    # per-token tensors, so never past the sequence lengths)
    masks = np.zeros((len(ph), bq, bk), dtype=bool)
    u = np.repeat(np.arange(bq), bk)
    w = np.tile(np.arange(bk), bq)
    per = max(1, max_entries // (bq * bk))
    for s in range(0, len(ph), per):
        e = min(s + per, len(ph))
        for h in np.unique(ph[s:e]):
            sel = np.flatnonzero(ph[s:e] == h) + s
            q = (pbi[sel, None] * bq + u[None, :]).ravel()
            kv = (pbj[sel, None] * bk + w[None, :]).ravel()
            inside = (q < n_q) & (kv < n_k)
            vals = np.zeros(len(q), dtype=bool)
            if inside.any():
                got = _eval_mask_mod(
                    bm.mask_mod,
                    batch,
                    int(h),
                    torch.from_numpy(q[inside]),
                    torch.from_numpy(kv[inside]),
                )
                vals[inside] = got.cpu().numpy()
            masks[sel] = vals.reshape(len(sel), bq, bk)
    h = np.concatenate([fh, ph])
    bi = np.concatenate([fbi, pbi])
    bj = np.concatenate([fbj, pbj])
    is_full = np.concatenate([np.ones(len(fh), dtype=bool), np.zeros(len(ph), dtype=bool)])
    order = np.lexsort((bj, bi, h))
    h, bi, bj, is_full = h[order], bi[order], bj[order], is_full[order]
    part_order = order[order >= len(fh)] - len(fh)  # partial blocks in storage order
    counts = np.bincount(h * nbq + bi, minlength=heads * nbq).reshape(heads, nbq)
    indptr = np.zeros((heads, nbq + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=indptr[:, 1:])
    bsr = BlockSparse.from_arrays(
        indptr, bj, (bq, bk), (n_q, n_k), full=is_full, masks=masks[part_order], sort=True
    )
    return Pattern.from_bsr(bsr)


def from_mask_mod(
    mask_mod: Any,
    n_q: int,
    n_k: int | None = None,
    *,
    heads: int = 1,
    batch: int | None = None,
    tile: int = 2048,
) -> Pattern | list[Pattern]:
    """The pattern of a FlexAttention / attention-gym ``mask_mod(b, h, q_idx, kv_idx) -> bool``.

    ``mask_mod`` is evaluated on torch int64 index tensors a ``tile x tile`` tile at a time (never
    ``n_q x n_k`` at once: memory O(tile**2 + nnz)), first with broadcast indices ``q_idx[:,
    None]``, ``kv_idx[None, :]`` and 0-d ``b``, ``h`` (the attention-gym mask_mods are written
    with tensor ops and accept them), and, if that raises, elementwise under ``torch.vmap`` as
    FlexAttention itself calls it.

    Args:
        mask_mod: the function; True allows ``(q_idx, kv_idx)``.
        n_q, n_k: query and key lengths (``n_k`` defaults to ``n_q``).
        heads: evaluate ``h = 0 .. heads - 1`` and return a pattern with that many heads (1: the
            pattern of ``h = 0``, shared by every head).
        batch: ``None`` gives the pattern of ``b = 0``; an int ``B`` gives a list of ``B``
            patterns (``b = 0 .. B - 1``), one per batch element, as :func:`sparse_ref.attention`
            takes them.
        tile: side of the evaluated tiles.

    Example:
        >>> def sliding_window(b, h, q_idx, kv_idx):
        ...     return (q_idx >= kv_idx) & (q_idx - kv_idx < 4)
        >>> from sparse_ref import patterns
        >>> from_mask_mod(sliding_window, 64) == patterns.causal_sliding_window(64, 4)
        True
    """
    torch = require_torch()
    if not callable(mask_mod):
        raise TypeError(
            f"mask_mod must be callable mask_mod(b, h, q_idx, kv_idx), got {mask_mod!r}"
        )
    n_q = check_nonneg_int(n_q, "n_q")
    n_k = n_q if n_k is None else check_nonneg_int(n_k, "n_k")
    heads = check_pos_int(heads, "heads")
    tile = check_pos_int(tile, "tile")
    count = 1 if batch is None else check_pos_int(batch, "batch")

    def one(b: int) -> Pattern:
        per_head = [
            Pattern.from_predicate(_torch_predicate(torch, mask_mod, b, h), n_q, n_k, tile=tile)
            for h in range(heads)
        ]
        return per_head[0] if heads == 1 else Pattern.stack(per_head)

    found = [one(b) for b in range(count)]
    return found[0] if batch is None else found


def _torch_predicate(torch: Any, mask_mod: Any, b: int, h: int) -> Any:
    """``fn(q_idx, k_idx)`` for :meth:`Pattern.from_predicate`: ``mask_mod`` at fixed ``b, h`` on
    torch tensors, broadcast first, elementwise under ``torch.vmap`` if that fails."""
    bt, ht = torch.tensor(b), torch.tensor(h)

    def fn(q_idx: np.ndarray, k_idx: np.ndarray) -> np.ndarray:
        q, k = torch.from_numpy(q_idx), torch.from_numpy(k_idx)
        shape = (q.shape[0], k.shape[1])
        with torch.no_grad():
            try:
                got = torch.as_tensor(mask_mod(bt, ht, q, k))
                return torch.broadcast_to(got, shape).to(torch.bool).numpy()
            except Exception:  # noqa: BLE001 - scalar-only mask_mods: FlexAttention's own way
                qq, kk = (torch.broadcast_to(x, shape).reshape(-1) for x in (q, k))
                return _eval_mask_mod(mask_mod, b, h, qq, kk).reshape(shape).numpy()

    return fn


# ----------------------------------------------------------------------------- sparse CSR
def _check_pattern(pattern: Any) -> None:
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a sparse_ref.Pattern, got {type(pattern).__name__}")


def _check_csr(
    crow: np.ndarray, col: np.ndarray, shape: tuple[int, int], batch: int | None
) -> None:
    """torch builds CSR tensors without checks (``check_invariants=False``): check one (batch
    element's) ``crow_indices``/``col_indices`` with :func:`~sparse_ref.checks.check_compressed`
    before using them (unsorted rows allowed: ``Pattern.from_csr`` sorts). Errors name ``t`` (and
    the batch) and say that ``indptr``/``indices`` are its ``crow_indices()``/``col_indices()``."""
    at = "" if batch is None else f" (batch {batch})"
    if len(crow) != shape[0] + 1:
        raise ValueError(
            f"t.crow_indices(){at} must have length n_q + 1 = {shape[0] + 1}, got {len(crow)}"
        )
    names = "indptr = crow_indices(), indices = col_indices()"
    where = f"t ({names}): " if batch is None else f"t (batch {batch}; {names}): "
    check_compressed(crow.astype(np.int64)[None], col, shape[1], require_sorted=False, where=where)


def to_torch_sparse_csr(pattern: Pattern, head: int | None = None, *, dtype: Any = None) -> Any:
    """The pattern as a torch sparse CSR tensor with ones (``dtype``, default ``torch.bool``).

    ``head=None`` gives every head: a 2-D ``(n_q, n_k)`` tensor for a one-head pattern, a batched
    ``(H, n_q, n_k)`` tensor otherwise (torch needs the same ``nnz`` in every batch; pass ``head``
    otherwise). Index dtype: int32 when it fits, else int64 (torch needs ``crow_indices`` and
    ``col_indices`` of one dtype).

    Example:
        >>> from sparse_ref import patterns
        >>> t = to_torch_sparse_csr(patterns.causal(3))
        >>> t.to_dense().int().tolist()
        [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    _check_pattern(pattern)
    torch = require_torch()
    dtype = torch.bool if dtype is None else dtype
    heads = range(pattern.num_heads) if head is None else [head]
    csrs = [pattern.to_csr(h) for h in heads]
    if len({c.nnz for c in csrs}) > 1:
        raise ValueError(
            "heads have different nnz; a batched torch sparse CSR tensor needs the same nnz per "
            "batch: pass head=h for one head at a time"
        )
    idx = np.int32 if max(pattern.shape[1], csrs[0].nnz) < 2**31 - 1 else np.int64
    crow = np.stack([np.asarray(c.indptr, dtype=idx) for c in csrs])
    col = np.stack([np.asarray(c.indices, dtype=idx) for c in csrs])
    values = torch.ones(col.shape, dtype=dtype)
    shape: tuple[int, ...] = (len(csrs), *pattern.shape)
    if len(csrs) == 1:
        crow, col, values, shape = crow[0], col[0], values[0], pattern.shape
    return torch.sparse_csr_tensor(
        torch.from_numpy(crow.copy()),
        torch.from_numpy(col.copy()),
        values,
        size=shape,
        check_invariants=False,  # canonical by construction
    )


def from_torch_sparse_csr(t: Any) -> Pattern:
    """The pattern of a torch sparse tensor: every stored entry whose value is nonzero (``True``).

    Accepts sparse CSR (2-D, or batched 3-D giving one head per batch), sparse COO or a strided
    bool/numeric tensor (converted with ``to_sparse_csr``). Column order within a row does not
    matter; duplicates merge.

    Example:
        >>> import torch
        >>> from_torch_sparse_csr(torch.eye(3).to_sparse_csr()).nnz
        3
    """
    torch = require_torch()
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim not in (2, 3):
        raise ValueError(f"t must be a 2-D or batched 3-D tensor, got {t.ndim}-D")
    if t.layout != torch.sparse_csr:
        t = (
            t.to_sparse_csr()
            if t.layout == torch.strided or t.ndim == 2
            else t.to_dense().to_sparse_csr()
        )
    t = t.detach().cpu()
    crow = t.crow_indices().numpy()
    col = t.col_indices().numpy()
    vals = t.values()
    nonzero = (vals != 0).numpy() if vals.dtype != torch.bool else vals.numpy()
    shape = (int(t.shape[-2]), int(t.shape[-1]))
    if t.ndim == 2:
        crow, col, nonzero = crow[None], col[None], nonzero[None]
    heads = []
    for b in range(crow.shape[0]):
        _check_csr(crow[b], col[b], shape, b if t.ndim == 3 else None)
        keep = nonzero[b].astype(bool)
        rows = np.repeat(np.arange(shape[0]), np.diff(crow[b]))[keep]
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
        heads.append(Pattern.from_csr((indptr, col[b][keep].astype(np.int64), shape), sort=True))
    return heads[0] if len(heads) == 1 else Pattern.stack(heads)
