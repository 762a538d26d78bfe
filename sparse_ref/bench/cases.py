"""The benchmark patterns (named by strings) and their inputs.

``causal_window_<w>``: row ``i`` attends keys ``max(0, i - w + 1) .. i``, in the block form of
:data:`BSR_BLOCK`-blocks or as token CSR; ``bigbird_<b>``: :func:`sparse_ref.patterns.bigbird` of
``b``-blocks (3 window blocks, the first and last block global, 3 random blocks per row, seed 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .flops import useful_flops

__all__ = [
    "BSR_BLOCK",
    "window_of",
    "expected_nnz",
    "build_pattern",
    "make_inputs",
    "Case",
    "make_case",
]

#: block of the causal windows' block form (BigBird keeps its own blocks)
BSR_BLOCK = 128


def window_of(pattern: str) -> int | None:
    """The window of ``causal_window_<w>``, None for other benchmark patterns."""
    return int(pattern.rsplit("_", 1)[1]) if pattern.startswith("causal_window_") else None


def expected_nnz(pattern: str, n: int) -> int:
    """Nonzeros of a benchmark pattern without building it (BigBird: an upper bound)."""
    w = window_of(pattern)
    if w is not None:
        w = min(w, n)
        return w * n - w * (w - 1) // 2
    block = int(pattern.rsplit("_", 1)[1])  # bigbird_<block>: 3 window + 3 random + 2 global
    return min(n * n, 8 * block * n + 2 * block * n)


def build_pattern(pattern: str, n: int, form: str = "bsr") -> Any:
    """The benchmark pattern as a :class:`sparse_ref.Pattern`: with its block form (``"bsr"``: the
    Numba backend runs the BSR kernels) or as token CSR only (``"csr"``: the CSR kernels)."""
    from .. import patterns
    from ..pattern import Pattern

    if form not in ("bsr", "csr"):
        raise ValueError(f"form must be 'bsr' or 'csr', got {form!r}")
    w = window_of(pattern)
    if w is not None:
        return patterns.causal_sliding_window(n, w, block=BSR_BLOCK if form == "bsr" else None)
    if pattern.startswith("bigbird_"):
        p = patterns.bigbird(n, int(pattern.rsplit("_", 1)[1]))
        if form == "bsr":
            return p
        csr = p.stacked_csr()  # the same structure as token CSR only (no block form)
        return Pattern.from_csr((csr.indptr[0], csr.indices, p.shape))
    raise ValueError(f"unknown benchmark pattern {pattern!r}")


def make_inputs(n: int, d: int, dtype: str, count: int = 3, seed: int = 0) -> list[np.ndarray]:
    """``count`` standard-normal arrays ``(1, 1, n, d)`` (B = H = 1) of ``dtype``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 1, n, d), dtype=np.dtype(dtype).type) for _ in range(count)]


class Case(NamedTuple):
    """A benchmark case: the pattern, its inputs and the useful flops of one call."""

    pattern: Any  #: the :class:`sparse_ref.Pattern`
    inputs: tuple[np.ndarray, ...]  #: q, k, v (and dout), ``(1, 1, n, d)``
    flops: int  #: useful flops of one call (:func:`useful_flops`)

    @property
    def qkv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first three inputs."""
        q, k, v = self.inputs[:3]
        return q, k, v

    @property
    def dout(self) -> np.ndarray:
        """The fourth input (``count=4``): the output gradient."""
        return self.inputs[3]


def make_case(
    pattern: str,
    n: int,
    d: int,
    dtype: str = "float32",
    *,
    form: str = "bsr",
    count: int = 3,
    backward: bool = False,
) -> Case:
    """:func:`build_pattern` in ``form``, ``count`` inputs of ``dtype`` (:func:`make_inputs`) and
    the useful flops of a forward (``backward=False``) or backward call."""
    p = build_pattern(pattern, n, form)
    return Case(
        p, tuple(make_inputs(n, d, dtype, count)), useful_flops(p.nnz, d, backward=backward)
    )
