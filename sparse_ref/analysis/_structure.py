"""Helpers every analysis module shares: square check, union of heads, argument checks, dtypes."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..pattern import Pattern


def _square(pattern: Pattern, what: str) -> int:
    n_q, n_k = pattern.shape
    if n_q != n_k:
        raise ValueError(
            f"{what} needs a square pattern (token i of one layer is token i of the next); got "
            f"shape {pattern.shape}"
        )
    return n_q


def _union_csr(pattern: Pattern, dtype: Any = np.int8) -> sp.csr_array:
    """The union of a pattern's heads as a canonical csr_array with ``dtype`` ones."""
    heads = [pattern.to_csr(h) for h in range(pattern.num_heads)]
    if len(heads) == 1:
        h = heads[0]
        return sp.csr_array(
            (np.ones(h.nnz, dtype=dtype), h.indices, h.indptr), shape=h.shape, copy=False
        )
    acc = heads[0].astype(dtype)
    for h in heads[1:]:
        acc = acc + h.astype(dtype)
    acc = sp.csr_array(acc)
    acc.sum_duplicates()
    acc.data[:] = 1
    return acc


def _union_bool(p: Pattern) -> sp.csr_array:
    """Union of the heads as a bool csr_array (the stored arrays themselves for one head)."""
    if p.num_heads == 1:
        return p.to_csr(0)
    return sp.csr_array(_union_csr(p, np.int8) != 0)


def _pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _dtype_name(dtype: Any) -> str:
    return "bfloat16" if isinstance(dtype, str) and dtype == "bfloat16" else np.dtype(dtype).name


def _np_dtype(dtype: Any) -> Any:
    if isinstance(dtype, str) and dtype == "bfloat16":
        return np.float16  # same width; NumPy has no bfloat16
    return dtype
