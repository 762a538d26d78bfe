"""Kernel metadata of a :class:`~sparse_ref.Pattern`: built once, cached on the pattern.

What the kernels consume besides q, k and v, in the role of JAX splash attention's ``mask_info``:

- :func:`csr`: the forward and the backward row pass: all heads as one flat CSR
  (:class:`StackedCSR`: ``indptr (P, n_q + 1)`` int64 absolute offsets, ``indices``);
- :func:`csr_transpose`: the backward column pass: the key-major pattern and ``perm``
  (:class:`CSRTranspose`);
- :func:`blocks`: the block form (:class:`StackedBSR`: ``block``, ``indptr (P, nbq + 1)``,
  ``indices``, ``mask_index``, ``masks``);
- :func:`block_transpose`: the backward column tasks: the stored blocks of each key block column
  (:class:`BlockTranspose`);
- :func:`block_row_layout`: the backward row tasks: where each stored block's keys sit in its
  block row, and the masks key-major (:class:`BlockRowLayout`, built by :mod:`.row_layout`);
- :func:`kernel_pattern`: the form the kernels run on (``form="auto" | "csr" | "block"``, the rule
  below).

Every array is C-contiguous and read-only (one Numba specialization per dtype, see
:mod:`sparse_ref.kernels._views`) and host-side (NumPy). Each piece is built on first request and
kept in the pattern's own cache (patterns are immutable, so it never goes stale, and it lives
exactly as long as the pattern: a training loop that reuses its pattern builds each piece once).
:func:`cached` is that cache, for other modules too (the CuPy backend keeps its device copies
there).
The CSR transpose costs 12 bytes per nonzero (int32 rows, int64 ``perm``) for as long as the
pattern lives. Numba is imported on the first build, never at import, so the CuPy backend may use
this module: it copies these arrays to the device once and caches the device copies itself.

All transposes, token or block, CPU or analysis, are one counting sort: :func:`transpose_csr`.

**The form rule** (``form="auto"``, the default of :func:`sparse_ref.attention` and
:func:`sparse_ref.attention_backward`): a pattern that holds a block form runs on it. A token-CSR
pattern runs on square blocks of 128 if its stored 128-blocks are at least 75% full (``nnz`` over
the area of the blocks holding an entry, over all heads: :func:`block_fill`), else of 64 if those
are at least 12.5% full (:data:`AUTO_RULE`); that block form is derived once and cached here.
Otherwise it runs on token CSR. docs/kernels.md gives the measurements behind the numbers.
``form="csr"`` and ``form="block"`` force a form. For a given pattern and form the choice, and so
the bits, are always the same.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import NamedTuple, TypeVar

import numpy as np

from ..blocks import MASK_LIMIT, BlockSparse, StackedBSR
from ..pattern import Pattern, StackedCSR
from .row_layout import BlockRowLayout, row_layout_of

__all__ = [
    "AUTO_RULE",
    "FORMS",
    "BlockRowLayout",
    "BlockTranspose",
    "CSRTranspose",
    "StackedBSR",
    "StackedCSR",
    "auto_block",
    "block_fill",
    "block_row_layout",
    "block_transpose",
    "blocks",
    "cached",
    "csr",
    "csr_transpose",
    "kernel_pattern",
    "transpose_csr",
]

#: the form rule: ``(block, fill)`` pairs tried in order; a token-CSR pattern runs on square blocks
#: of the first size whose stored blocks are at least ``fill`` full (docs/kernels.md, "Which form
#: runs": on 2 threads, float32, d = 64, n = 16384, the block kernels beat token CSR in forward and
#: backward down to a 64-block fill of about 0.09; 128-blocks beat 64-blocks from a fill of about
#: 0.8 on: 2.23 s against 2.78 s for the causal window 4096 at n = 65536)
AUTO_RULE = ((128, 0.75), (64, 0.125))
#: the values of ``form``
FORMS = ("auto", "csr", "block")

_T = TypeVar("_T")


class CSRTranspose(NamedTuple):
    """The key-major pattern of a stacked CSR and where each of its entries sits in the CSR.

    ``indptr (P, n_k + 1)`` int64 absolute offsets; ``indices`` the queries of each key,
    ascending (the CSR's index dtype): together ``Pattern.transpose().stacked_csr()``. ``perm``
    int64: transposed position -> CSR position of the same entry.
    """

    indptr: np.ndarray
    indices: np.ndarray
    perm: np.ndarray


class BlockTranspose(NamedTuple):
    """The stored blocks of each key block column: for head ``p`` and column ``bj``, entries
    ``indptr[p, bj]:indptr[p, bj + 1]`` (absolute offsets, int64) give their block ``rows``
    (ascending, int64) and their storage position ``pos`` in the block form (int64)."""

    indptr: np.ndarray
    rows: np.ndarray
    pos: np.ndarray


def _readonly(a: np.ndarray) -> np.ndarray:
    view = np.ascontiguousarray(a).view()
    view.flags.writeable = False
    return view


def cached(pattern: Pattern, key: Hashable, build: Callable[[], _T]) -> _T:
    """The value ``build()`` gives, built on the first call for ``pattern`` and ``key`` and kept
    in the pattern's kernel-metadata cache; later calls return that same object.

    The cache lives exactly as long as the pattern, which is immutable, so a value derived from
    the pattern alone never goes stale (one derived from anything else must put that in ``key``).
    Keys are shared by everything cached on the pattern: this module uses plain strings and
    tuples whose first item is a string (``"blocks"``, ``("block_form", 64)``); another module
    uses tuples that start with its own name (the CuPy backend: ``("cupy", device, kind,
    ...)``). Two threads may both build on a first call; the first stored value wins, so every
    caller sees one object.

    Example:
        >>> from sparse_ref import patterns
        >>> p = patterns.causal(8)
        >>> a = cached(p, ("doc-example", "rows"), lambda: p.shape[0])
        >>> a, cached(p, ("doc-example", "rows"), lambda: -1)
        (8, 8)
    """
    cache = pattern._kernel_metadata
    if key not in cache:
        cache.setdefault(key, build())
    return cache[key]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ transposes
def transpose_csr(
    indptr: np.ndarray, indices: np.ndarray, n_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t_indptr (P, n_cols + 1), t_indices, perm)``: the transpose of a stacked CSR
    (``indptr (P, n_rows + 1)``, absolute offsets into ``indices``, sorted rows), per head.

    ``t_indptr`` holds absolute offsets (head ``p``'s entries stay where they were), ``t_indices``
    the rows of each column, ascending, in ``indices``' dtype, and ``perm`` (int64) the CSR
    position of each transposed position (``indices[perm]`` is the column of each transposed
    entry). A counting sort, O(nnz + n_cols) per head, one head per thread; read-only arrays.

    Example:
        >>> import numpy as np
        >>> t_indptr, t_indices, perm = transpose_csr(np.array([[0, 2, 3]]), np.array([0, 1, 1]), 2)
        >>> t_indptr.tolist(), t_indices.tolist(), perm.tolist()
        ([[0, 1, 3]], [0, 0, 1], [0, 1, 2])
    """
    from ._loops import transpose_counting_sort

    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices)
    out = (
        np.empty((indptr.shape[0], n_cols + 1), dtype=np.int64),
        np.empty(len(indices), dtype=indices.dtype),
        np.empty(len(indices), dtype=np.int64),
    )
    transpose_counting_sort(_readonly(indptr), _readonly(indices), n_cols, *out)
    return tuple(_readonly(a) for a in out)  # type: ignore[return-value]


# ---------------------------------------------------------------------- per-pattern pieces
def csr(pattern: Pattern) -> StackedCSR:
    """All heads' token CSR in one flat form (:class:`StackedCSR`), read-only and contiguous.

    A block-only pattern materialises its token CSR (refused above ``CSR_LIMIT``)."""
    return cached(pattern, "csr", lambda: StackedCSR(*map(_readonly, pattern.stacked_csr())))


def csr_transpose(pattern: Pattern) -> CSRTranspose:
    """The key-major pattern and ``perm`` (:class:`CSRTranspose`) for the backward column pass.

    About 15 ms for 4.2M entries (``Pattern.transpose()`` through scipy: 70 ms, and no ``perm``).
    """

    def build() -> CSRTranspose:
        stacked = csr(pattern)
        return CSRTranspose(*transpose_csr(stacked.indptr, stacked.indices, pattern.shape[1]))

    return cached(pattern, "csr_transpose", build)


def blocks(pattern: Pattern) -> StackedBSR:
    """The pattern's own block form (:class:`StackedBSR`), read-only and contiguous (int64
    ``indptr``, int32 ``indices`` and ``mask_index``, bool ``masks``); ``ValueError`` if the
    pattern holds none (see :func:`kernel_pattern`)."""

    def build() -> StackedBSR:
        if pattern.block is None:
            raise ValueError("this pattern holds no block form; see metadata.kernel_pattern")
        form = pattern.stacked_bsr()
        return StackedBSR(form.block, *map(_readonly, form[1:]))

    return cached(pattern, "blocks", build)


def block_transpose(pattern: Pattern) -> BlockTranspose:
    """The stored blocks of each key block column of the pattern's own block form
    (:class:`BlockTranspose`), for the backward column tasks; the same counting sort as
    :func:`csr_transpose`, over blocks."""

    def build() -> BlockTranspose:
        form = blocks(pattern)
        n_cols = -(-pattern.shape[1] // form.block[1])
        t_indptr, t_rows, t_pos = transpose_csr(form.indptr, form.indices, n_cols)
        return BlockTranspose(t_indptr, _readonly(t_rows.astype(np.int64)), t_pos)

    return cached(pattern, "block_transpose", build)


def block_row_layout(pattern: Pattern) -> BlockRowLayout:
    """The pattern's own block form as the backward's row tasks read it (:class:`BlockRowLayout`:
    block widths, where they start in their block row, keys per block row, masks key-major),
    read-only; built once per pattern, not on every backward call."""

    def build() -> BlockRowLayout:
        layout = row_layout_of(blocks(pattern), pattern.shape[1])
        return BlockRowLayout(*map(_readonly, layout))

    return cached(pattern, "block_row_layout", build)


# --------------------------------------------------------------------------------- the form
def _stored_blocks(pattern: Pattern, block: int) -> tuple[int, int]:
    """``(count, area)`` of the ``(block, block)`` blocks holding an entry, all heads (cached)."""

    def build() -> tuple[int, int]:
        from ._loops import stored_blocks

        stacked = csr(pattern)
        n_q, n_k = pattern.shape
        count, area = stored_blocks(stacked.indptr, stacked.indices, n_q, n_k, block, block)
        return int(count), int(area)

    return cached(pattern, ("stored_blocks", block), build)


def block_fill(pattern: Pattern, block: int) -> float:
    """``nnz`` over the area of the ``(block, block)`` blocks that hold an entry (clipped at the
    edges), over all heads: 1.0 when every stored block would be full; 0.0 for an empty pattern.
    Cached; from token CSR, walking each row block by block (a binary search per block), so a row
    costs O(blocks it touches x log(row length))."""
    area = _stored_blocks(pattern, block)[1]
    return pattern.nnz / area if area else 0.0


def auto_block(pattern: Pattern) -> int | None:
    """The block size the form rule picks for a token-CSR pattern: the first ``block`` of
    :data:`AUTO_RULE` whose :func:`block_fill` reaches its ``fill`` (and whose stored area stays
    under the block builders' ``MASK_LIMIT``), else ``None`` (token CSR)."""
    for block, min_fill in AUTO_RULE:
        fill = block_fill(pattern, block)
        if fill >= min_fill and pattern.nnz / fill <= MASK_LIMIT:
            return block
    return None


def _with_block_form(pattern: Pattern, block: int) -> Pattern:
    """The token-CSR pattern also holding its block form of ``(block, block)`` blocks (the same
    :class:`BlockSparse` as ``pattern.to_bsr(block)``), built by walking each row block by block
    as :func:`block_fill` does: O(blocks x log(row length)) per row plus the entries of partial
    blocks. (``Pattern.with_block_form`` bins every entry: 74 s against 4.3 s for the causal window
    4096 at n = 65536, 260M entries, on a loaded machine.)"""
    from ._loops import block_rows_of_csr, partial_block_masks

    stacked = csr(pattern)
    n_q, n_k = pattern.shape
    n_blocks = _stored_blocks(pattern, block)[0]
    b_indptr, b_indices, counts = block_rows_of_csr(
        stacked.indptr, stacked.indices, n_q, n_k, block, block, n_blocks
    )
    heads, nbq = b_indptr.shape[0], b_indptr.shape[1] - 1
    rows = np.repeat(np.tile(np.arange(nbq), heads), np.diff(b_indptr, axis=1).ravel())
    height = np.minimum(block, n_q - rows * block)
    width = np.minimum(block, n_k - b_indices.astype(np.int64) * block)
    full = counts == height * width
    mask_id = np.full(n_blocks, -1, dtype=np.int64)
    mask_id[~full] = np.arange(int((~full).sum()))
    masks = np.zeros((int((~full).sum()), block, block), dtype=bool)
    partial_block_masks(
        stacked.indptr, stacked.indices, n_q, n_k, block, block, b_indptr, b_indices, mask_id, masks
    )
    form = BlockSparse.from_arrays(
        b_indptr, b_indices, block, pattern.shape, full=full, masks=masks
    )
    heads_csr = [pattern.to_csr(h) for h in range(pattern.num_heads)]
    return Pattern._new(heads_csr, family=pattern.family, params=pattern.params, blocks=form)


def _token_csr_only(pattern: Pattern) -> Pattern:
    """The same structure as token CSR alone (no block form), sharing the pattern's CSR arrays."""
    heads = [pattern.to_csr(h) for h in range(pattern.num_heads)]
    return Pattern._new(heads, family=pattern.family, params=pattern.params)


def kernel_pattern(pattern: Pattern, form: str = "auto") -> Pattern:
    """The pattern the kernels run on: ``pattern`` itself or the same structure in the other form
    (derived once, cached on ``pattern``). The backends run the block kernels exactly when the
    returned pattern holds a block form.

    Args:
        pattern: any :class:`Pattern`.
        form: ``"auto"`` (the rule in the module docstring), ``"block"`` (the pattern's own block
            form, else the one :func:`auto_block` picks, else blocks of 64) or
            ``"csr"`` (token CSR, materialised for a block-only pattern: refused above
            ``CSR_LIMIT`` nonzeros per head).

    Example:
        >>> from sparse_ref import patterns
        >>> kernel_pattern(patterns.causal_sliding_window(4096, 1024)).block
        (128, 128)
        >>> kernel_pattern(patterns.causal_sliding_window(4096, 256)).block
        (64, 64)
        >>> kernel_pattern(patterns.random(1024, 1024, 8)).block is None
        True
    """
    if not isinstance(form, str) or form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "csr":
        if pattern.block is None:
            return pattern
        return cached(pattern, "csr_form", lambda: _token_csr_only(pattern))
    if pattern.block is not None:
        return pattern
    block = auto_block(pattern)
    if block is None:
        if form == "auto":
            return pattern
        block = AUTO_RULE[-1][0]
    return cached(pattern, ("block_form", block), lambda: _with_block_form(pattern, block))
