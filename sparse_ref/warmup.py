"""Compile the Numba kernels into their on-disk cache ahead of time.

:func:`warmup` runs every kernel once on tiny inputs (CSR and BSR forward with int32 and int64
indices, CSR and BSR backward), so later processes load machine code from Numba's cache
(``cache=True``) instead of compiling. ``sparse-ref warmup [--dtype float32 --dtype float64]``
runs it from the shell; ``make test`` runs it once per dtype, in parallel, before pytest:
compiling under coverage tracing takes about twice as long.
"""

from __future__ import annotations

import time

import numpy as np

from . import patterns
from .api import attention, attention_backward
from .kernels.csr_forward import csr_forward

__all__ = ["DTYPES", "warmup"]

#: the dtypes the CPU kernels are compiled for
DTYPES = ("float32", "float64")


def warmup(dtype: str) -> float:
    """Compile every kernel for ``dtype`` (``"float32"`` or ``"float64"``); returns seconds."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((1, 2, 40, 8)).astype(dtype) for _ in range(4))
    # token CSR (CSR kernels) and a block form (BSR kernels; the BSR backward takes the same
    # argument types for every pattern and shape, so this one call compiles it for the dtype)
    for pattern in (patterns.causal_sliding_window(40, 7), patterns.causal(40, block=16)):
        for softcap in (None, 2.0):
            attention(q, k, v, pattern, softcap=softcap)
            attention_backward(q, k, v, pattern, dout, softcap=softcap)
    csr = patterns.random(40, per_row=5).stacked_csr()
    out = np.empty_like(q)
    lse = np.empty(q.shape[:3], dtype=dtype)
    ct = np.dtype(dtype).type
    csr_forward(q, k, v, csr.indptr, csr.indices.astype(np.int64), ct(0.3), ct(0), out, lse)
    return time.perf_counter() - start
