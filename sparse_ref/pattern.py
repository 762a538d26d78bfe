"""The ``Pattern`` type: which keys each query may attend to, as token CSR and/or a block form.

A pattern has shape ``(n_q, n_k)`` and one or more heads. It holds one or both of two forms:

- **token CSR**: per head a canonical ``scipy.sparse.csr_array`` of bools: indices sorted within
  each row, no duplicates, no explicit ``False`` entries, and int32 index arrays unless ``nnz`` or
  ``n_k`` needs int64. Built by ``from_dense``, ``from_csr``, ``from_predicate`` and most of the
  catalog.
- **block form**: a :class:`~sparse_ref.blocks.BlockSparse` (stored ``(bq, bk)`` blocks, full or
  with a bool mask), built *directly* by ``from_bsr``, ``from_block_layout``,
  ``patterns.block_sparse`` and the catalog's structured families called with ``block=``, without
  ever materialising token CSR: a causal window of 4096 at n = 2**20 is 4.3e9 token nonzeros but
  270k blocks of 128 and two distinct masks. ``block`` names its block size.

A pattern with one head means "the same for every head". Every method works on either form: token
CSR of a block-only pattern is materialised on demand (``to_csr``, ``stacked_csr``, algebra between
different forms) and refused above ``CSR_LIMIT`` nonzeros; ``mask_rows``, ``nnz``, ``fingerprint``,
``==``, ``transpose`` and algebra between block forms of the same block size work blockwise at any
size. ``to_bsr(block)`` converts CSR to a block form (cached per block); ``with_block_form(block)``
returns the pattern holding both.

**Form rule (which kernel runs):** a pattern that holds a block form (``pattern.block is not None``)
runs the BSR kernels over that block form; otherwise the CSR kernels. The rule depends only on how
the pattern was built, never on what was cached by earlier calls.

Patterns are immutable and hashable; equality is structural (same shape, same number of heads, same
nonzeros per head), whatever the forms held. ``bool(pattern)`` raises so ``p or q`` fails loudly;
use ``p | q``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from . import blocks as _blocks
from .blocks import BlockSparse, StackedBSR
from .checks import (
    block_param,
    check_block,
    check_bool,
    check_compressed,
    check_shape,
    integer_array,
    is_int,
)

__all__ = ["Pattern", "StackedCSR", "StackedBSR", "BlockSparse", "DENSE_LIMIT", "CSR_LIMIT"]

#: ``to_dense`` refuses to build more than this many bools per call unless ``force=True``.
DENSE_LIMIT = 1 << 28

#: Token CSR materialised from a block form is refused above this many nonzeros per head.
CSR_LIMIT = 1 << 31

_INT32_MAX = np.iinfo(np.int32).max


class StackedCSR(NamedTuple):
    """All heads of a pattern in the flat form the kernels consume.

    ``indptr``: ``(P, n_q + 1)`` int64, absolute offsets into ``indices``; head ``p`` row ``i`` owns
    ``indices[indptr[p, i]:indptr[p, i + 1]]``. ``indices``: ``(nnz,)`` int32 or int64, sorted
    within each row, all in ``[0, n_k)``.
    """

    indptr: np.ndarray
    indices: np.ndarray


def index_dtype(nnz: int, n_k: int) -> type[np.signedinteger]:
    """The canonical index dtype: int32 unless ``nnz`` or ``n_k`` does not fit."""
    return np.int32 if max(nnz, n_k) <= _INT32_MAX else np.int64


def csr_from_arrays(
    indptr: np.ndarray, indices: np.ndarray, shape: tuple[int, int]
) -> sp.csr_array:
    """Wrap trusted canonical ``(indptr, indices)`` in a bool ``csr_array`` without copying checks.

    The caller guarantees: ``indptr`` monotone with ``indptr[0] == 0`` and ``indptr[-1] ==
    len(indices)``, indices sorted and unique within each row and in ``[0, shape[1])``. Catalog
    builders use this; user input goes through :meth:`Pattern.from_csr`, which validates.
    """
    dtype = index_dtype(len(indices), shape[1])
    indptr = np.asarray(indptr, dtype=dtype)
    indices = np.asarray(indices, dtype=dtype)
    data = np.ones(len(indices), dtype=bool)
    csr = sp.csr_array((data, indices, indptr), shape=shape, copy=False)
    csr.has_sorted_indices = True
    csr.has_canonical_format = True
    return csr


def _canonicalize(csr: sp.sparray | sp.spmatrix) -> sp.csr_array:
    """Any scipy sparse matrix -> canonical bool csr_array (explicit zeros dropped)."""
    csr = sp.csr_array(csr)
    csr.sum_duplicates()  # also sorts indices
    csr.eliminate_zeros()
    return csr_from_arrays(csr.indptr, csr.indices, csr.shape)


def _validated_csr(
    indptr: Any, indices: Any, shape: Any, *, sort: bool, where: str = ""
) -> sp.csr_array:
    """Validate user CSR structure (:func:`~sparse_ref.checks.check_compressed`, full check);
    errors name the broken rule and the first offending row. ``sort=True`` sorts and deduplicates
    rows that are not strictly increasing."""
    n_q, n_k = check_shape(shape)
    ip = integer_array(indptr, f"{where}indptr")
    ix = integer_array(indices, f"{where}indices")
    if len(ip) != n_q + 1:
        raise ValueError(f"{where}indptr must have length n_q + 1 = {n_q + 1}, got {len(ip)}")
    if not check_compressed(ip[None], ix, n_k, require_sorted=not sort, where=where):
        rows = np.repeat(np.arange(n_q, dtype=np.int64), np.diff(ip))
        order = np.lexsort((ix, rows))  # by row, then key; rows are already ascending
        ix = ix[order]
        keep = np.ones(len(ix), dtype=bool)
        keep[1:] = (rows[1:] != rows[:-1]) | (ix[1:] != ix[:-1])
        new_ptr = np.zeros(n_q + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[keep], minlength=n_q), out=new_ptr[1:])
        return csr_from_arrays(new_ptr, ix[keep], (n_q, n_k))
    return csr_from_arrays(ip, ix, (n_q, n_k))


def _causal_offset(n_q: int, n_k: int, align: str) -> int:
    """Key ``j`` is allowed for query ``i`` when ``j <= i + offset``."""
    if align == "top_left":
        return 0
    if align == "bottom_right":
        return n_k - n_q
    raise ValueError(f"align must be 'top_left' or 'bottom_right', got {align!r}")


def _row_of_each_entry(csr: sp.csr_array) -> np.ndarray:
    return np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))


class Pattern:
    """An immutable sparse attention pattern: per head, which keys each query attends to.

    Build one with the catalog (``sparse_ref.patterns``) or the constructors ``from_dense``,
    ``from_csr``, ``from_predicate``, ``from_bsr``, ``from_block_layout`` and ``stack``. Query ``i``
    in ``[0, n_q)`` may attend key ``j`` in ``[0, n_k)`` of head ``h`` exactly when ``to_csr(h)``
    has an entry at ``(i, j)``.

    Example:
        >>> import numpy as np
        >>> p = Pattern.from_dense(np.tril(np.ones((3, 3), dtype=bool)))
        >>> p.nnz, p.shape
        (6, (3, 3))
        >>> b = Pattern.from_block_layout([[True, False], [True, True]], block=2, n_q=3, n_k=3)
        >>> expected = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1]], dtype=bool)
        >>> b.block, b.nnz, b == Pattern.from_dense(expected)
        ((2, 2), 7, True)
    """

    __slots__ = ("_heads", "_bsr", "_shape", "_family", "_params", "__dict__")
    _heads: tuple[sp.csr_array, ...] | None  # token CSR per stored head, or None (block form only)
    _bsr: BlockSparse | None  # the block form it was built with, or None
    _shape: tuple[int, int]
    _family: str
    _params: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "Pattern is not built directly; use sparse_ref.patterns.* or Pattern.from_dense / "
            "from_csr / from_predicate / stack"
        )

    @classmethod
    def _new(
        cls,
        heads: Sequence[sp.csr_array] | None,
        *,
        family: str = "custom",
        params: dict[str, Any] | None = None,
        blocks: BlockSparse | None = None,
    ) -> Pattern:
        """Internal constructor from canonical per-head csr_arrays (see ``csr_from_arrays``) and/or
        a canonical block form (``heads=None`` for a block-only pattern)."""
        heads = tuple(heads) if heads is not None else ()
        if not heads and blocks is None:
            raise ValueError("a Pattern needs at least one head")
        shape = heads[0].shape if heads else blocks.shape  # type: ignore[union-attr]
        for h, head in enumerate(heads):
            if head.shape != shape:
                raise ValueError(f"head {h} has shape {head.shape}, head 0 has {shape}")
        if (
            blocks is not None
            and heads
            and (blocks.shape != shape or blocks.num_heads != len(heads))
        ):
            raise ValueError(
                f"block form {blocks.shape} with {blocks.num_heads} heads does not match the CSR "
                f"heads {shape} x {len(heads)}"
            )
        self = object.__new__(cls)
        object.__setattr__(self, "_heads", heads or None)
        object.__setattr__(self, "_bsr", blocks)
        object.__setattr__(self, "_shape", (int(shape[0]), int(shape[1])))
        object.__setattr__(self, "_family", family)
        object.__setattr__(self, "_params", dict(params or {}))
        for head in heads:  # the stored arrays are shared with users through to_csr: freeze them
            head.indptr.flags.writeable = False
            head.indices.flags.writeable = False
            head.data.flags.writeable = False
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Pattern is immutable")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, mask: Any) -> Pattern:
        """From a bool mask ``(n_q, n_k)`` (one head) or ``(H, n_q, n_k)`` (H heads)."""
        arr = np.asarray(mask)
        if arr.dtype != bool:
            raise TypeError(f"mask must be a bool array, got dtype {arr.dtype}")
        if arr.ndim not in (2, 3):
            raise ValueError(f"mask must be 2-D (n_q, n_k) or 3-D (H, n_q, n_k), got {arr.ndim}-D")
        stack = arr[None] if arr.ndim == 2 else arr
        if stack.shape[0] == 0:
            raise ValueError("mask must have at least one head")
        return cls._new([_canonicalize(sp.csr_array(m)) for m in stack])

    @classmethod
    def from_csr(cls, csr: Any, *, sort: bool = False) -> Pattern:
        """From a scipy sparse matrix/array or a tuple ``(indptr, indices, shape)``; one head.

        Every stored entry counts as allowed except explicit zeros/False (scipy input). The
        structure is validated: indptr of length ``n_q + 1``, starting at 0, non-decreasing, ending
        at ``len(indices)``; integer dtypes; indices in ``[0, n_k)``; strictly increasing within
        each row unless ``sort=True``, which sorts and removes duplicates (scipy input, whose own
        format allows unsorted and duplicate storage, is always canonicalised).
        """
        sort = check_bool(sort, "sort")
        if sp.issparse(csr):
            m = sp.csr_array(csr, copy=True)
            m.eliminate_zeros()  # explicit False/0 entries are not allowed keys
            m.sum_duplicates()  # scipy allows unsorted/duplicate storage: canonicalise it
            return cls._new([_validated_csr(m.indptr, m.indices, m.shape, sort=sort)])
        if isinstance(csr, tuple) and len(csr) == 3:
            indptr, indices, shape = csr
            return cls._new([_validated_csr(indptr, indices, shape, sort=sort)])
        raise TypeError(
            "csr must be a scipy sparse matrix/array or a tuple (indptr, indices, shape), got "
            f"{type(csr).__name__}"
        )

    @classmethod
    def from_predicate(
        cls,
        fn: Callable[[np.ndarray, np.ndarray], Any],
        n_q: int,
        n_k: int | None = None,
        *,
        tile: int = 4096,
    ) -> Pattern:
        """From ``fn(q_idx[:, None], k_idx[None, :]) -> bool array``, evaluated tile by tile.

        ``fn`` receives broadcastable int64 index arrays for one ``tile x tile`` block at a time, so
        peak memory is O(tile**2 + nnz) whatever the size.

        Example:
            >>> Pattern.from_predicate(lambda i, j: j <= i, 4).nnz
            10
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable fn(q_idx, k_idx) -> bool array, got {fn!r}")
        n_k = n_q if n_k is None else n_k
        for name, n in (("n_q", n_q), ("n_k", n_k)):
            if not is_int(n):
                raise TypeError(f"{name} must be an int, got {type(n).__name__} {n!r}")
            if n < 0:
                raise ValueError(f"{name} must be >= 0, got {n}")
        n_q, n_k = int(n_q), int(n_k)
        if not is_int(tile) or tile < 1:
            raise ValueError(f"tile must be a positive int, got {tile!r}")
        tile = int(tile)
        counts = np.zeros(n_q, dtype=np.int64)
        chunks: list[np.ndarray] = []
        for r0 in range(0, n_q, tile):
            r1 = min(r0 + tile, n_q)
            q_idx = np.arange(r0, r1, dtype=np.int64)[:, None]
            rows_parts, cols_parts = [], []
            for c0 in range(0, n_k, tile):
                c1 = min(c0 + tile, n_k)
                k_idx = np.arange(c0, c1, dtype=np.int64)[None, :]
                got = np.asarray(fn(q_idx, k_idx))
                if got.dtype != bool:
                    raise TypeError(f"fn must return a bool array, got dtype {got.dtype}")
                try:
                    block = np.broadcast_to(got, (r1 - r0, c1 - c0))
                except ValueError:
                    raise ValueError(
                        f"fn returned shape {got.shape}, not broadcastable to {(r1 - r0, c1 - c0)}"
                    ) from None
                r, c = np.nonzero(block)
                rows_parts.append(r)
                cols_parts.append(c + c0)
            rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, dtype=np.int64)
            cols = np.concatenate(cols_parts) if cols_parts else np.zeros(0, dtype=np.int64)
            order = np.argsort(rows, kind="stable")  # column tiles ascend, so keys stay sorted
            counts[r0:r1] = np.bincount(rows, minlength=r1 - r0)
            chunks.append(cols[order])
        indptr = np.zeros(n_q + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        return cls._new([csr_from_arrays(indptr, indices, (n_q, n_k))])

    @classmethod
    def from_bsr(cls, bsr: Any, *, shape: Any = None, sort: bool = False) -> Pattern:
        """From a :class:`~sparse_ref.blocks.BlockSparse`, or a scipy BSR array/matrix whose data
        are the bool masks of its blocks (one head). The pattern holds only the block form.

        ``shape`` (scipy input) is ``(n_q, n_k)`` when the last block row/column is ragged (scipy
        shapes are whole blocks); entries outside it must be ``False``. The structure is validated
        like ``from_csr``, with errors naming the rule and the block row: indptr of length
        ``nbq + 1``, from 0, non-decreasing; integer dtypes; block columns in ``[0, nbk)``, strictly
        increasing within each block row unless ``sort=True`` (which sorts and ORs duplicates).
        Blocks whose mask is all ``False`` are dropped; blocks allowing every entry become full.

        Example:
            >>> import scipy.sparse as sp, numpy as np
            >>> m = np.zeros((4, 4), dtype=bool)
            >>> m[:3, :3] = np.tril(np.ones((3, 3), dtype=bool))  # 3 x 3 inside 2 x 2 blocks
            >>> p = Pattern.from_bsr(sp.bsr_array(m, blocksize=(2, 2)), shape=(3, 3))
            >>> p.nnz, p.to_bsr().full.tolist()
            (6, [False, True, True])
        """
        sort = check_bool(sort, "sort")
        if isinstance(bsr, BlockSparse):
            if shape is not None and check_shape(shape) != bsr.shape:
                raise ValueError(f"shape {shape} differs from the block form's {bsr.shape}")
            return cls._new(None, blocks=bsr)
        if not (sp.issparse(bsr) and bsr.format == "bsr"):
            raise TypeError(
                f"bsr must be a BlockSparse or a scipy BSR array/matrix, got {type(bsr).__name__}"
            )
        bq, bk = bsr.blocksize
        n_q, n_k = bsr.shape if shape is None else check_shape(shape)
        nbq, nbk = bsr.shape[0] // bq, bsr.shape[1] // bk
        for name, n, nb, b in (("n_q", n_q, nbq, bq), ("n_k", n_k, nbk, bk)):
            if -(-n // b) != nb:
                raise ValueError(
                    f"shape: {name} = {n} does not fit the {nb} blocks of {b} of the BSR array: "
                    f"need {(nb - 1) * b} < {name} <= {nb * b}"
                )
        data = np.asarray(bsr.data)
        masks = data if data.dtype == bool else data != 0  # explicit zeros are not allowed keys
        blocks = BlockSparse.from_arrays(
            bsr.indptr,
            bsr.indices,
            (bq, bk),
            (n_q, n_k),
            full=np.zeros(len(bsr.indices), dtype=bool),
            masks=masks.reshape(-1, bq, bk),
            sort=sort,
        )
        return cls._new(None, blocks=blocks)

    @classmethod
    def from_block_layout(
        cls, layout: Any, block: Any, *, n_q: int | None = None, n_k: int | None = None
    ) -> Pattern:
        """Block layout: query ``i`` sees key ``j`` of head ``h`` iff ``layout[h, i//bq, j//bk]``.

        ``layout`` is bool ``(nbq, nbk)`` (one head) or ``(H, nbq, nbk)``; ``block`` an int or
        ``(bq, bk)``. ``n_q``/``n_k`` default to whole blocks; smaller values clip a ragged last
        block row/column (``(nbq - 1) * bq < n_q <= nbq * bq``). Family ``block_sparse``; the
        pattern holds only the block form (every stored block full).

        Example:
            >>> p = Pattern.from_block_layout([[True, False], [True, True]], 2, n_q=3)
            >>> p.to_dense().astype(int)
            array([[1, 1, 0, 0],
                   [1, 1, 0, 0],
                   [1, 1, 1, 1]])
        """
        blocks = _blocks.from_layout(layout, block, n_q, n_k)
        params = {
            "layout": np.asarray(layout).tolist(),
            "block": block_param(blocks.block),
            "n_q": blocks.shape[0],
            "n_k": blocks.shape[1],
        }
        return cls._new(None, blocks=blocks, family="block_sparse", params=params)

    @classmethod
    def stack(cls, heads: Iterable[Pattern]) -> Pattern:
        """Stack single-head patterns (or multi-head ones, head by head) into a multi-head pattern.

        The result keeps the block form when every part has one of the same block size, and the
        token CSR when every part has it.
        """
        heads = list(heads)
        if not heads:
            raise ValueError("heads must hold at least one Pattern")
        for i, p in enumerate(heads):
            if not isinstance(p, Pattern):
                raise TypeError(f"heads[{i}] must be a Pattern, got {type(p).__name__}")
            if p.shape != heads[0].shape:
                raise ValueError(f"heads[{i}] has shape {p.shape}, heads[0] has {heads[0].shape}")
        blocks = None
        if all(p._bsr is not None and p._bsr.block == heads[0].block for p in heads):
            blocks = _blocks.stack([p._bsr for p in heads])  # type: ignore[misc]
        if blocks is None or all(p._heads is not None for p in heads):
            csrs = [c for p in heads for c in p._csr_heads()]
        else:
            csrs = None
        return cls._new(
            csrs,
            family="stack",
            params={"heads": [p._spec() for p in heads]},
            blocks=blocks,
        )

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int]:
        """``(n_q, n_k)``."""
        return self._shape

    @property
    def num_heads(self) -> int:
        """Number of stored heads; 1 means the same pattern for every head."""
        if self._heads is not None:
            return len(self._heads)
        return self._bsr.num_heads  # type: ignore[union-attr]

    @property
    def block(self) -> tuple[int, int] | None:
        """``(bq, bk)`` of the block form this pattern was built with, else ``None``.

        Not ``None`` means the kernels run on blocks (the form rule in the module docstring).
        """
        return self._bsr.block if self._bsr is not None else None

    @property
    def block_form(self) -> BlockSparse | None:
        """The block form this pattern was built with (see :attr:`block`), else ``None``."""
        return self._bsr

    @cached_property
    def _kernel_metadata(self) -> dict[Any, Any]:
        """Kernel metadata derived from this pattern, built and keyed by :mod:`sparse_ref.metadata`
        (the pattern is immutable, so it never goes stale)."""
        return {}

    @cached_property
    def nnz(self) -> int:
        """Allowed (query, key) pairs, summed over the stored heads."""
        if self._heads is None:
            return self._bsr.nnz  # type: ignore[union-attr]
        return int(sum(h.nnz for h in self._heads))

    @property
    def density(self) -> float:
        """``nnz / (num_heads * n_q * n_k)``; 0.0 for an empty shape."""
        total = self.num_heads * self._shape[0] * self._shape[1]
        return self.nnz / total if total else 0.0

    @property
    def family(self) -> str:
        """Catalog family name (``"custom"`` for user structure, or the algebra that built it)."""
        return self._family

    @property
    def params(self) -> dict[str, Any]:
        """JSON-able parameters: ``patterns.build(family, **params)`` rebuilds this pattern."""
        return json.loads(json.dumps(self._params))

    def _spec(self) -> dict[str, Any]:
        return {"family": self._family, "params": self._params}

    def _head_index(self, h: Any, name: str = "h") -> int:
        """Validated head number: the stored head that query head ``h`` uses; errors say ``name``
        (the caller's argument name)."""
        if not isinstance(h, int | np.integer) or isinstance(h, bool | np.bool_):
            raise TypeError(f"{name} must be an int, got {type(h).__name__}")
        if self.num_heads == 1:
            return 0
        if not 0 <= h < self.num_heads:
            raise ValueError(f"{name} must be in [0, {self.num_heads}), got {h}")
        return int(h)

    def head(self, h: int) -> Pattern:
        """Head ``h`` as a one-head pattern (any ``h`` when the pattern has one head)."""
        p = self._head_index(h)
        if self.num_heads == 1:
            return self
        return Pattern._new(
            [self._heads[p]] if self._heads is not None else None,
            family="head",
            params={"h": p, "of": self._spec()},
            blocks=self._bsr.head(p) if self._bsr is not None else None,
        )

    # ------------------------------------------------------------------ conversions
    def check_format(self, full_check: bool = True) -> None:
        """Check the stored structure, as scipy's ``check_format``: every token-CSR head
        (:func:`~sparse_ref.checks.check_compressed`) and the block form
        (:meth:`BlockSparse.check_format`). Constructors check user structure fully; catalog
        builders make canonical arrays by construction, which this re-checks on request."""
        for h, csr in enumerate(self._heads or ()):
            indptr = np.asarray(csr.indptr, dtype=np.int64)[None]
            where = f"head {h}: " if self.num_heads > 1 else ""
            check_compressed(
                indptr, csr.indices, self._shape[1], full_check=full_check, where=where
            )
        if self._bsr is not None:
            self._bsr.check_format(full_check)

    def to_csr(self, head: int = 0) -> sp.csr_array:
        """The canonical bool ``csr_array`` of one head (read-only arrays, shared, not copied).

        A block-only pattern materialises it on first use (cached) and refuses above
        ``CSR_LIMIT`` nonzeros.
        """
        p = self._head_index(head, "head")
        return self._heads[p] if self._heads is not None else self._materialised(p)

    def _materialised(self, p: int) -> sp.csr_array:
        """Token CSR of stored head ``p`` of a block-only pattern (cached)."""
        cache = self.__dict__.setdefault("_csr_cache", {})
        if p not in cache:
            bsr = self._bsr
            nnz = int(bsr.nnz_per_head[p])  # type: ignore[union-attr]
            if nnz > CSR_LIMIT:
                raise ValueError(
                    f"token CSR of this block-form pattern would hold {nnz} nonzeros in head {p} "
                    f"(> CSR_LIMIT = {CSR_LIMIT}); use the block form (to_bsr, mask_rows, the BSR "
                    "kernels) instead"
                )
            indptr, indices = bsr.to_csr(p)  # type: ignore[union-attr]
            csr = csr_from_arrays(indptr, indices, self._shape)
            for a in (csr.indptr, csr.indices, csr.data):
                a.flags.writeable = False
            cache[p] = csr
        return cache[p]

    def _csr_heads(self) -> tuple[sp.csr_array, ...]:
        """Token CSR of every stored head (materialised for a block-only pattern)."""
        if self._heads is not None:
            return self._heads
        return tuple(self._materialised(p) for p in range(self.num_heads))

    def to_dense(self, *, force: bool = False) -> np.ndarray:
        """Bool mask ``(n_q, n_k)`` for one head, ``(H, n_q, n_k)`` for several.

        Refuses above ``DENSE_LIMIT`` elements unless ``force=True``.
        """
        size = self.num_heads * self._shape[0] * self._shape[1]
        if size > DENSE_LIMIT and not force:
            raise ValueError(
                f"to_dense would build {size} bools (> DENSE_LIMIT = {DENSE_LIMIT}); "
                "pass force=True"
            )
        if self._heads is not None:
            dense = np.stack([h.toarray() for h in self._heads])
        else:
            rows = np.arange(self._shape[0])
            bsr = self._bsr
            dense = np.stack([bsr.mask_rows(rows, p) for p in range(self.num_heads)])  # type: ignore[union-attr]
        return dense[0] if self.num_heads == 1 else dense

    def mask_rows(self, rows: np.ndarray, head: int = 0) -> np.ndarray:
        """Dense bool mask ``(len(rows), n_k)`` of the given query rows of one head.

        Works on either form without materialising the rest of the pattern.
        """
        p = self._head_index(head, "head")
        if self._heads is None:
            return self._bsr.mask_rows(rows, p)  # type: ignore[union-attr]
        return self._heads[p][np.asarray(rows, dtype=np.int64)].toarray()

    def stacked_csr(self) -> StackedCSR:
        """All heads in one flat CSR for the kernels (cached); see :class:`StackedCSR`."""
        return self._stacked

    @cached_property
    def _stacked(self) -> StackedCSR:
        heads = self._csr_heads()
        offsets = np.cumsum([0] + [h.nnz for h in heads])
        indptr = np.stack(
            [h.indptr.astype(np.int64) + off for h, off in zip(heads, offsets[:-1], strict=True)]
        )
        dtype = index_dtype(int(offsets[-1]), self._shape[1])
        if self.num_heads == 1:
            indices = heads[0].indices.astype(dtype, copy=False)
        else:
            indices = np.concatenate([h.indices.astype(dtype, copy=False) for h in heads])
        indptr.flags.writeable = False
        return StackedCSR(indptr, indices)

    def to_bsr(self, block: Any = None) -> BlockSparse:
        """The block form with blocks of ``block = (bq, bk)`` (or an int): a
        :class:`~sparse_ref.blocks.BlockSparse` with ``indptr``, ``indices``, ``full``, ``masks``
        and ``.to_scipy()``. ``block=None`` gives the pattern's own block form.

        Built from token CSR (vectorised) and cached per block; a pattern built from blocks returns
        its own form for its block size without conversion.
        """
        if block is None:
            if self._bsr is None:
                raise ValueError("this pattern has no block form of its own; pass block=(bq, bk)")
            return self._bsr
        block = check_block(block)
        if self._bsr is not None and self._bsr.block == block:
            return self._bsr
        cache = self.__dict__.setdefault("_bsr_cache", {})
        if block not in cache:
            heads = self._csr_heads()
            cache[block] = _blocks.from_csr(
                [(h.indptr, h.indices) for h in heads], self._shape, block
            )
        return cache[block]

    def stacked_bsr(self, block: Any = None) -> StackedBSR:
        """The block form in the flat layout the kernels consume: ``(block, indptr, indices,
        mask_index, masks)``; see :class:`~sparse_ref.blocks.StackedBSR` (``block=None``: own
        form)."""
        return self.to_bsr(block).kernel_form()

    def with_block_form(self, block: Any) -> Pattern:
        """This pattern also holding its block form of ``block``: the kernels then run on blocks."""
        return Pattern._new(
            self._heads, family=self._family, params=self._params, blocks=self.to_bsr(block)
        )

    def transpose(self) -> Pattern:
        """The key-major view: shape ``(n_k, n_q)``, entry ``(j, i)`` where this has ``(i, j)``.

        The block form (if any) is transposed blockwise: blocks ``(bk, bq)``.
        """
        return Pattern._new(
            [_canonicalize(h.T) for h in self._heads] if self._heads is not None else None,
            family="transpose",
            params={"of": self._spec()},
            blocks=self._bsr.transpose() if self._bsr is not None else None,
        )

    # ------------------------------------------------------------------ algebra
    def causal(self, align: str = "top_left") -> Pattern:
        """Keep only causal entries: ``j <= i`` (``"top_left"``) or ``j <= i + n_k - n_q``
        (``"bottom_right"``, FlashAttention >= 2.1)."""
        n_q, n_k = self._shape
        offset = _causal_offset(n_q, n_k, align)
        params = {"of": self._spec(), "align": align}
        if self._bsr is not None:  # blockwise, stays a block form
            tri = _blocks.from_terms([_blocks.Term(hi_d=offset)], self._shape, self._bsr.block)
            blocks = _blocks.combine(self._bsr, tri, "intersection")
            return Pattern._new(None, family="causal_of", params=params, blocks=blocks)
        heads = []
        for h in self._csr_heads():
            keep = h.indices <= _row_of_each_entry(h) + offset
            rows = _row_of_each_entry(h)[keep]
            indptr = np.zeros(self._shape[0] + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=self._shape[0]), out=indptr[1:])
            heads.append(csr_from_arrays(indptr, h.indices[keep], self._shape))
        return Pattern._new(heads, family="causal_of", params=params)

    def _binary(self, other: Any, op: str) -> Pattern:
        if not isinstance(other, Pattern):
            return NotImplemented
        if self._shape != other._shape:
            raise ValueError(f"shapes differ: {self._shape} vs {other._shape}")
        n1, n2 = self.num_heads, other.num_heads
        if n1 != n2 and 1 not in (n1, n2):
            raise ValueError(f"head counts differ: {n1} vs {n2} (one of them may be 1)")
        params = {"of": [self._spec(), other._spec()]}
        if self._bsr is not None and other._bsr is not None and self.block == other.block:
            blocks = _blocks.combine(self._bsr, other._bsr, op)  # blockwise, stays a block form
            return Pattern._new(None, family=op, params=params, blocks=blocks)
        mine, theirs = self._csr_heads(), other._csr_heads()
        heads = []
        for h in range(max(n1, n2)):
            a = mine[h if n1 > 1 else 0].astype(np.int8)
            b = theirs[h if n2 > 1 else 0].astype(np.int8)
            if op == "union":
                c = a + b
            elif op == "intersection":
                c = a.multiply(b)
            else:
                c = a - a.multiply(b)
            heads.append(_canonicalize(c))
        return Pattern._new(heads, family=op, params=params)

    def __or__(self, other: Any) -> Pattern:
        return self._binary(other, "union")

    def __and__(self, other: Any) -> Pattern:
        return self._binary(other, "intersection")

    def __sub__(self, other: Any) -> Pattern:
        return self._binary(other, "difference")

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a Pattern is ambiguous; use p | q, p & q, or p.nnz")

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """sha256 hex of the canonical structure (shape, heads, per-row keys); cached."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        header = {"format": "sparse-ref-pattern-v1", "shape": self._shape, "heads": self.num_heads}
        digest.update(json.dumps(header, sort_keys=True).encode())
        if self._heads is not None:
            for h in self._heads:
                digest.update(np.diff(h.indptr).astype("<i8").tobytes())
                for start in range(0, h.nnz, 1 << 24):  # stream: bounded extra memory
                    digest.update(h.indices[start : start + (1 << 24)].astype("<i8").tobytes())
            return digest.hexdigest()
        # the same bytes from the block form, streamed by chunks of block rows
        bsr = self._bsr
        for p in range(self.num_heads):
            for counts in bsr.iter_row_counts(p):  # type: ignore[union-attr]
                digest.update(counts.astype("<i8").tobytes())
            for _, _, indices in bsr.iter_csr(p):  # type: ignore[union-attr]
                digest.update(indices.astype("<i8").tobytes())
        return digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pattern):
            return NotImplemented
        if self._shape != other._shape or self.num_heads != other.num_heads:
            return False
        if self._heads is not None and other._heads is not None:
            return all(
                np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
                for a, b in zip(self._heads, other._heads, strict=True)
            )
        if self._bsr is not None and other._bsr is not None and self.block == other.block:
            return self._bsr == other._bsr  # canonical block forms
        if self.nnz != other.nnz:
            return False
        if all(int(x) <= CSR_LIMIT for p in (self, other) for x in p._nnz_per_head()):
            return all(
                np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
                for a, b in zip(self._csr_heads(), other._csr_heads(), strict=True)
            )
        return self.fingerprint() == other.fingerprint()

    def _nnz_per_head(self) -> list[int]:
        if self._heads is not None:
            return [h.nnz for h in self._heads]
        return [int(x) for x in self._bsr.nnz_per_head]  # type: ignore[union-attr]

    def __hash__(self) -> int:
        # consistent with structural ==, and cheap for block forms of any size
        return hash((self._shape, self.num_heads, self.nnz))

    def _repr_png_(self) -> bytes | None:
        """The density picture of head 0 (:func:`sparse_ref.viz.plot`) as PNG bytes, which
        notebooks (IPython/Jupyter) show; ``None`` without matplotlib, so they fall back to the
        text ``repr`` instead of printing an error."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            return None
        import io

        from . import viz

        fig = Figure(figsize=(4, 4))  # not pyplot: nothing is left open or shown twice
        viz.plot(self, fig.subplots(), max_pixels=256)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        return buf.getvalue()

    def __repr__(self) -> str:
        block = "" if self._bsr is None else f", block={self._bsr.block}"
        return (
            f"Pattern(family={self._family!r}, shape={self._shape}, heads={self.num_heads}, "
            f"nnz={self.nnz}, density={self.density:.4g}{block})"
        )
