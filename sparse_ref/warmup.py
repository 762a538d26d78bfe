"""Compile the Numba kernels into their on-disk cache ahead of time.

:func:`steps` lists one call per kernel on tiny inputs: CSR and BSR forward and backward through
:func:`sparse_ref.attention` (``form="csr"`` and ``form="block"``), the form rule of ``form="auto"``,
and the CSR forward with int64 indices, which patterns above 2**31 nonzeros use (read-only inputs,
as the Numba backend passes them: the one specialization per dtype that
:mod:`sparse_ref.kernels._views` describes). :func:`warmup` runs them for one dtype. Later
processes then load machine code from Numba's cache (``cache=True``) instead of compiling for
15-30 s per kernel. ``sparse-ref warmup [--dtype float32 --dtype float64]`` runs it from the
shell with a progress bar; ``make test`` runs it once per dtype, in parallel, before pytest:
compiling under coverage tracing takes about twice as long.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from . import patterns
from .api import attention, attention_backward
from .kernels._views import readonly
from .kernels.csr_forward import csr_forward
from .pattern import Pattern

__all__ = ["DTYPES", "steps", "warmup"]

#: the dtypes the CPU kernels are compiled for
DTYPES = ("float32", "float64")

#: tiny inputs: the shapes do not change the compiled code, only the argument types do
_N, _D = 40, 8


def _check(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def steps(dtype: str) -> list[tuple[str, Callable[[], object]]]:
    """``(label, call)`` per kernel for ``dtype`` (``"float32"`` or ``"float64"``): each call
    compiles its kernel on first use (or loads it from the cache) and runs it on tiny inputs.

    Example:
        >>> [label for label, _ in steps("float64")][:2]
        ['CSR forward', 'CSR backward']
    """
    _check(dtype)
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 2, _N, _D)).astype(dtype) for _ in range(4))
    token_csr = patterns.causal_sliding_window(_N, 7)  # no block form of its own
    block_form = patterns.causal(_N, block=16)  # the BSR kernels: one signature per dtype

    def forward(pattern: Pattern, form: str) -> Callable[[], object]:
        return lambda: [attention(q, k, v, pattern, softcap=cap, form=form) for cap in (None, 2.0)]

    def backward(pattern: Pattern, form: str) -> Callable[[], object]:
        return lambda: [
            attention_backward(q, k, v, pattern, dout, softcap=cap, form=form)
            for cap in (None, 2.0)
        ]

    def forward_int64() -> object:
        csr = patterns.random(_N, per_row=5).stacked_csr()
        ct = np.dtype(dtype).type
        out = np.empty_like(q)
        lse = np.empty(q.shape[:3], dtype=dtype)
        qc, kc, vc, indptr, indices = (
            readonly(a) for a in (q, k, v, csr.indptr, csr.indices.astype(np.int64))
        )
        return csr_forward(qc, kc, vc, indptr, indices, ct(1 / math.sqrt(_D)), ct(0), out, lse)

    return [
        ("CSR forward", forward(token_csr, "csr")),
        ("CSR backward", backward(token_csr, "csr")),
        ("BSR forward", forward(block_form, "block")),
        ("BSR backward", backward(block_form, "block")),
        ("form rule", forward(token_csr, "auto")),
        ("CSR forward, int64 indices", forward_int64),
    ]


def warmup(dtype: str) -> float:
    """Compile every kernel for ``dtype`` (``"float32"`` or ``"float64"``); returns seconds."""
    start = time.perf_counter()
    for _, call in steps(dtype):
        call()
    return time.perf_counter() - start
