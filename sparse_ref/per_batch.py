"""A different pattern per batch element: a sequence of patterns, one per element of ``B``.

``attention``, ``attention_backward`` and the oracle accept, in place of one :class:`Pattern`, a
sequence of ``B`` patterns (a list or tuple) for 4-D inputs ``(B, H, n, d)``: element ``b`` is
computed with ``pattern[b]``. All patterns must have the same shape ``(n_q, n_k)`` (the tensors
have one ``n_q`` and one ``n_k``); their head counts may differ (each 1 or ``H``). This module
checks that once and runs a single-pattern function on each batch element.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .pattern import Pattern
from .validation import as_cpu_array

__all__ = ["as_pattern_list", "run_per_batch"]


def as_pattern_list(pattern: Any) -> list[Pattern] | None:
    """``None`` for one :class:`Pattern`; the checked list for a sequence of patterns.

    Raises ``TypeError`` for anything else and ``ValueError`` for an empty sequence or patterns of
    different shapes (naming the first that differs).
    """
    if isinstance(pattern, Pattern):
        return None
    if not isinstance(pattern, Sequence) or isinstance(pattern, str | bytes):
        raise TypeError(
            f"pattern must be a sparse_ref.Pattern, got {type(pattern).__name__} (or a sequence of "
            "patterns, one per batch element)"
        )
    patterns = list(pattern)
    if not patterns:
        raise ValueError("pattern is an empty sequence; pass one pattern per batch element")
    for b, p in enumerate(patterns):
        if not isinstance(p, Pattern):
            raise TypeError(f"pattern[{b}] must be a sparse_ref.Pattern, got {type(p).__name__}")
        if p.shape != patterns[0].shape:
            raise ValueError(
                f"per-batch patterns must share one shape: pattern[0] is {patterns[0].shape} but "
                f"pattern[{b}] is {p.shape}"
            )
    return patterns


def run_per_batch(
    fn: Callable[..., Any],
    patterns: list[Pattern],
    arrays: dict[str, Any],
    xp: ModuleType = np,
) -> Any:
    """``fn(pattern[b], **arrays[b:b+1])`` for each batch element, outputs concatenated on axis 0.

    ``arrays`` maps keyword names to 4-D arrays with a batch axis of length ``len(patterns)`` (3-D
    for ``lse``); ``None`` values are passed through. ``fn`` returns an array or a tuple of arrays
    whose first axis is the batch.
    """
    views = {
        name: None if a is None else (as_cpu_array(a, name) if xp is np else xp.asarray(a))
        for name, a in arrays.items()
    }
    for name, a in views.items():
        want = 3 if name == "lse" else 4
        if a is not None and (a.ndim != want or a.shape[0] != len(patterns)):
            raise ValueError(
                f"a sequence of {len(patterns)} patterns needs {want}-D {name} with batch size "
                f"B = {len(patterns)} (one pattern per batch element), got shape {tuple(a.shape)}"
            )
    parts = [
        fn(p, **{name: None if a is None else a[b : b + 1] for name, a in views.items()})
        for b, p in enumerate(patterns)
    ]
    if not isinstance(parts[0], tuple):
        return xp.concatenate(parts, axis=0)
    return tuple(xp.concatenate(list(col), axis=0) for col in zip(*parts))
