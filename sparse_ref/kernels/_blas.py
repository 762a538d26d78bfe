"""BLAS inside Numba kernels: :func:`gemm`, and keeping BLAS single-threaded meanwhile.

:func:`gemm` is ``sgemm``/``dgemm`` of scipy's BLAS, callable from Numba code. The kernels that
call it (or ``np.dot``) run in parallel Numba regions, inside :func:`single_threaded_blas`
(:mod:`._blas_threads`, which needs no Numba: golden generation uses it too).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (numba_xxgemm calls this BLAS: load it first)
from numba import types
from numba.extending import overload

from ._blas_threads import single_threaded_blas

__all__ = ["gemm", "single_threaded_blas"]


def gemm(a, ta, b, tb, c, alpha, beta):  # type: ignore[no-untyped-def]
    """``c = alpha * op(a) @ op(b) + beta * c`` (``op`` transposes when ``ta``/``tb``) for
    C-contiguous 2-D float arrays, inside Numba code: BLAS ``sgemm``/``dgemm`` through Numba's
    own ``numba_xxgemm`` (the symbol ``np.dot`` uses, so kernels calling it stay cacheable).
    Unlike ``np.dot``, ``beta = 1`` accumulates into ``c`` without a temporary and ``alpha``
    folds a scale in."""
    raise NotImplementedError("gemm is only callable from Numba-compiled code")


@overload(gemm)
def _gemm_impl(a, ta, b, tb, c, alpha, beta):  # type: ignore[no-untyped-def]
    if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" for x in (a, b, c)):
        return None
    if c.dtype not in (types.float32, types.float64) or not a.dtype == b.dtype == c.dtype:
        return None
    ptr = types.CPointer(c.dtype)
    xxgemm = types.ExternalFunction(
        "numba_xxgemm",
        types.intc(
            types.char,
            types.char,
            types.char,
            types.intp,
            types.intp,
            types.intp,
            ptr,
            ptr,
            types.intp,
            ptr,
            types.intp,
            ptr,
            ptr,
            types.intp,
        ),
    )
    kind = ord("s") if c.dtype == types.float32 else ord("d")
    trans, notrans = ord("t"), ord("n")

    def impl(a, ta, b, tb, c, alpha, beta):  # type: ignore[no-untyped-def]
        # row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: pass B first
        m, n = c.shape
        k = a.shape[0] if ta else a.shape[1]
        if m == 0 or n == 0:
            return
        coef = np.empty(2, dtype=c.dtype)
        coef[0] = alpha
        coef[1] = beta
        xxgemm(
            kind,
            trans if tb else notrans,
            trans if ta else notrans,
            n,
            m,
            k,
            coef[0:].ctypes,
            b.ctypes,
            max(1, b.shape[1]),
            a.ctypes,
            max(1, a.shape[1]),
            coef[1:].ctypes,
            c.ctypes,
            n,
        )

    return impl
