"""Checks of what users hand to the pattern layer: parameters, and the structure of CSR and blocks.

Two kinds of check, each naming what it rejects:

- **Parameters** (:func:`check_int`, :func:`check_nonneg_int`, :func:`check_pos_int`,
  :func:`check_bool`, :func:`check_choice`, :func:`check_index_list`, :func:`resolve_n_k`,
  :func:`check_block`, :func:`check_shape`): wrong types raise ``TypeError`` (``bool`` is not accepted
  where an int is expected, nor a float even when integral), wrong values ``ValueError``; each
  returns the value normalised to plain Python types so that ``Pattern.params`` stays JSON-able.
- **Compressed structure** (:func:`check_compressed`): the invariants that token CSR and the block
  form share, ``indptr`` from 0, non-decreasing, ending at ``len(indices)``, indices in range and
  strictly increasing within each row, as scipy's ``check_format``: cheap checks (lengths and
  endpoints, O(rows)) always, the O(nnz) ones with ``full_check=True``. Errors say which rule broke
  and where (head, row), in the words of the form (``row``/``key`` for CSR, ``block row``/``block
  column`` for the block form).

Used by ``sparse_ref.pattern`` (``Pattern.from_csr``), ``sparse_ref.blocks`` (``BlockSparse``), the
catalog and ``sparse_ref.interop``; :mod:`sparse_ref.validation` checks the arrays of an attention
call. Imports only NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CSR_WORDS",
    "BLOCK_WORDS",
    "Words",
    "block_param",
    "check_block",
    "check_bool",
    "check_choice",
    "check_compressed",
    "check_index_list",
    "check_int",
    "check_nonneg_int",
    "check_pos_int",
    "check_shape",
    "integer_array",
    "is_int",
    "resolve_n_k",
]


# ---------------------------------------------------------------------------------- parameters
def is_int(value: Any) -> bool:
    """``value`` is a Python or NumPy integer and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(value: Any, name: str) -> int:
    """``value`` as a plain ``int``; ``TypeError`` for bools, floats and other non-integers."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def check_nonneg_int(value: Any, name: str) -> int:
    """``value`` as a plain ``int >= 0``."""
    value = check_int(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_pos_int(value: Any, name: str) -> int:
    """``value`` as a plain ``int >= 1``."""
    value = check_int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a plain ``bool``; ints (even 0 and 1) are rejected so typos fail loudly."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def int_sequence(values: Any, name: str) -> np.ndarray:
    """A 1-D sequence of ints (not bools, not a string) -> int64 array; ``TypeError`` otherwise."""
    if isinstance(values, str | bytes) or np.ndim(values) != 1:
        raise TypeError(f"{name} must be a 1-D sequence of ints, got {values!r}")
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold ints, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_index_list(values: Any, name: str, n: int) -> np.ndarray:
    """A sequence of token indices in ``[-n, n)`` -> sorted unique int64 array in ``[0, n)``.

    Negative indices count from the end, as in Python; duplicates are merged.
    """
    arr = int_sequence(values, name)
    if arr.size == 0:
        return arr
    bad = (arr < -n) | (arr >= n)
    if bad.any():
        raise ValueError(
            f"{name} out of range: {int(arr[np.argmax(bad)])} is not in [-{n}, {n}) for n = {n}"
        )
    return np.unique(np.where(arr < 0, arr + n, arr))


def resolve_n_k(n_q: Any, n_k: Any) -> tuple[int, int]:
    """Validated ``(n_q, n_k)``; ``n_k=None`` means ``n_k = n_q``."""
    n_q = check_nonneg_int(n_q, "n_q")
    n_k = n_q if n_k is None else check_nonneg_int(n_k, "n_k")
    return n_q, n_k


def check_shape(shape: Any, name: str = "shape") -> tuple[int, int]:
    """``shape`` as ``(n_q, n_k)``, a pair of non-negative ints (``ValueError`` otherwise)."""
    try:
        n_q, n_k = shape
    except (TypeError, ValueError):
        n_q = n_k = None
    if not (is_int(n_q) and is_int(n_k) and n_q >= 0 and n_k >= 0):
        raise ValueError(f"{name} must be a pair (n_q, n_k) of non-negative ints, got {shape!r}")
    return int(n_q), int(n_k)


def check_block(block: Any, name: str = "block") -> tuple[int, int]:
    """``block`` as ``(bq, bk)``: an int ``b`` means ``(b, b)``; both sizes must be ints >= 1.

    Raises ``TypeError`` for non-integers (bools and floats included) and ``ValueError`` for sizes
    below 1, naming ``name``.
    """
    if isinstance(block, tuple | list) and len(block) == 2:
        return check_pos_int(block[0], f"{name}[0] (bq)"), check_pos_int(
            block[1], f"{name}[1] (bk)"
        )
    if isinstance(block, tuple | list):
        raise TypeError(f"{name} must be an int or a pair (bq, bk), got {block!r}")
    b = check_pos_int(block, name)
    return b, b


def block_param(block: Any) -> int | list[int]:
    """``block`` for JSON ``params``: ``b`` when square, else ``[bq, bk]`` (validated)."""
    bq, bk = check_block(block)
    return bq if bq == bk else [bq, bk]


def integer_array(x: Any, name: str, ndim: int = 1) -> np.ndarray:
    """``x`` as a fresh int64 array of ``ndim`` dimensions (``TypeError`` for non-integer dtypes).

    Empty input of any dtype is accepted (``[]`` is float64 to NumPy). uint64 values above the
    int64 range are refused rather than wrapped to negative numbers.
    """
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.size and arr.dtype == np.uint64 and int(arr.max()) > np.iinfo(np.int64).max:
        pos = int(np.argmax(arr.ravel() > np.iinfo(np.int64).max))
        raise ValueError(f"{name}[{pos}] = {int(arr.ravel()[pos])} is out of range (above int64)")
    return arr.astype(np.int64)  # a copy: callers freeze their arrays, never the caller's input


# ---------------------------------------------------------------------- compressed structure
class Words(NamedTuple):
    """How errors name the parts of a compressed structure (see :data:`CSR_WORDS`)."""

    decreasing: str  # indptr[p, r + 1] = v1 < indptr[p, r] = v
    out_of_range: str  # indices[pos] = col is outside [0, n) in row `row`
    unsorted: str  # a key of row `row` is not above the one before it
    sort_hint: str  # what sort=True does


CSR_WORDS = Words(
    "indptr must be non-decreasing: indptr[{at}{r1}] = {v1} < indptr[{at}{r}] = {v} ({head}row {r})",
    "indices out of range: row {row} has key {col}, expected 0 <= key < n_k = {n}",
    "indices must be strictly increasing within each row (sorted, no duplicates); row {row} is not",
    "sort and deduplicate",
)
BLOCK_WORDS = Words(
    "indptr must start at 0 and be non-decreasing (head {p}, block row {r}): indptr[{p}, {r1}] = "
    "{v1} < indptr[{p}, {r}] = {v}",
    "block column out of range: block row {row} has {col}, expected 0 <= block column < nbk = {n}",
    "block columns must be strictly increasing within each block row; block row {row} is not",
    "sort and merge duplicates",
)


def check_compressed(
    indptr: np.ndarray,
    indices: np.ndarray,
    n_cols: int,
    *,
    words: Words = CSR_WORDS,
    full_check: bool = True,
    require_sorted: bool = True,
    where: str = "",
) -> bool:
    """Check compressed rows stacked over heads: ``indptr (P, n_rows + 1)`` int64, absolute offsets
    (head ``p`` starts where head ``p - 1`` ends), and ``indices (nnz,)`` integers.

    Always (O(P)): ``indptr`` starts at 0, each head starts where the last one ended, and the last
    offset equals ``len(indices)``. With ``full_check`` (O(nnz)) also: ``indptr`` non-decreasing
    (checked before the last offset, the likelier cause), indices in ``[0, n_cols)``, and strictly
    increasing within each row. A row that is not strictly increasing raises when
    ``require_sorted``; otherwise the function returns ``False`` so that the caller sorts (and
    ``True`` when every row is sorted). Errors name the rule, the head (with several) and the row,
    in ``words``; ``where`` prefixes the names of the arrays.

    Example:
        >>> check_compressed(np.array([[0, 1, 3]]), np.array([2, 0, 1]), 3)
        True
    """
    heads, width = indptr.shape
    n_rows = width - 1
    flat = indptr.ravel()
    if flat[0] != 0:
        raise ValueError(f"{where}indptr[0] must be 0, got {flat[0]}")
    if heads > 1 and (indptr[1:, 0] != indptr[:-1, -1]).any():
        p = int(np.argmax(indptr[1:, 0] != indptr[:-1, -1])) + 1
        raise ValueError(
            f"{where}indptr of head {p} must start where head {p - 1} ends, at "
            f"{indptr[p - 1, -1]}, got {indptr[p, 0]}"
        )
    steps = np.diff(indptr, axis=1)
    if full_check and (steps < 0).any():
        p, r = (int(v) for v in np.argwhere(steps < 0)[0])
        message = words.decreasing.format(
            p=p,
            r=r,
            r1=r + 1,
            v=indptr[p, r],
            v1=indptr[p, r + 1],
            at=f"{p}, " if heads > 1 else "",
            head=f"head {p}, " if heads > 1 else "",
        )
        raise ValueError(f"{where}{message}")
    if flat[-1] != len(indices):
        raise ValueError(f"{where}indptr[-1] = {flat[-1]} must equal len(indices) = {len(indices)}")
    if not full_check:
        return True
    rows = np.repeat(np.tile(np.arange(n_rows, dtype=np.int64), heads), steps.ravel())
    bad = (indices < 0) | (indices >= n_cols)
    if bad.any():
        pos = int(np.argmax(bad))
        message = words.out_of_range.format(row=rows[pos], col=indices[pos], n=n_cols)
        raise ValueError(f"{where}{message}")
    if len(indices) < 2:
        return True
    # a new row starts at every indptr offset: a key may not exceed its successor elsewhere
    starts = np.zeros(len(indices), dtype=bool)
    starts[flat[(flat > 0) & (flat < len(indices))]] = True
    not_increasing = ~starts[1:] & (indices[1:] <= indices[:-1])
    if not not_increasing.any():
        return True
    if require_sorted:
        row = int(rows[1:][np.argmax(not_increasing)])
        raise ValueError(
            f"{where}{words.unsorted.format(row=row)}. Pass sort=True to {words.sort_hint}."
        )
    return False
