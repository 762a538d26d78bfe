"""Parameter checks shared by the catalog builders.

Every check names the parameter it rejects. Wrong types raise ``TypeError`` (``bool`` is not
accepted where an int is expected, nor a float even when integral); wrong values raise
``ValueError``. Each returns the value normalised to plain Python types so that
``Pattern.params`` stays JSON-able.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_index_list",
    "check_int",
    "check_nonneg_int",
    "check_pos_int",
    "resolve_n_k",
]


def check_int(value: Any, name: str) -> int:
    """``value`` as a plain ``int``; ``TypeError`` for bools, floats and other non-integers."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
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


def check_index_list(values: Any, name: str, n: int) -> np.ndarray:
    """A sequence of token indices in ``[-n, n)`` -> sorted unique int64 array in ``[0, n)``.

    Negative indices count from the end, as in Python; duplicates are merged.
    """
    if isinstance(values, str | bytes) or np.ndim(values) != 1:
        raise TypeError(f"{name} must be a 1-D sequence of ints, got {values!r}")
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold ints, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
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
