"""Numba CPU backend: fused online-softmax kernels over the pattern's CSR rows or BSR block rows.

Form rule for ``forward``: a pattern that holds a block form (``pattern.block is not None``: built
by ``Pattern.from_bsr``, ``Pattern.from_block_layout``, ``patterns.block_sparse``, a catalog family
called with ``block=``, or ``pattern.with_block_form(block)``) runs the BSR kernel of
:mod:`..kernels.bsr_forward` over that block form; any other pattern runs the CSR kernel of
:mod:`..kernels.csr_forward`. The rule depends only on how the pattern was built.

``backward`` follows the same rule: :mod:`..kernels.bsr_backward` (dq over block rows, dk/dv over key
block columns) for a block form, else :mod:`..kernels.csr_backward`: dq over the pattern's rows,
dk/dv over its transpose (kept in a small cache, see :func:`transposed`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ..kernels._views import readonly
from ..kernels.bsr_backward import bsr_backward
from ..kernels.bsr_forward import bsr_forward
from ..kernels.csr_backward import csr_backward, transpose_csr
from ..kernels.csr_forward import csr_forward
from ..pattern import Pattern
from ..validation import compute_dtype


class Transposed(NamedTuple):
    """The key-major pattern (``Pattern.transpose().stacked_csr()``) plus ``perm``: the CSR
    position of each transposed position."""

    indptr: np.ndarray
    indices: np.ndarray
    perm: np.ndarray


#: transposes of the last few patterns used (most recent last), keyed by ``id``; each entry holds
#: the pattern itself so its id cannot be reused while cached
_TRANSPOSE_CACHE: OrderedDict[int, tuple[Pattern, Transposed]] = OrderedDict()
_TRANSPOSE_CACHE_SIZE = 2
_TRANSPOSE_LOCK = threading.Lock()


def _kernel_inputs(*arrays: np.ndarray) -> list[np.ndarray]:
    """Read-only C-contiguous views of the arrays a kernel only reads (see :mod:`..kernels._views`:
    one Numba specialization per dtype, so the same bits whatever ran before)."""
    return [readonly(np.ascontiguousarray(a)) for a in arrays]


def _block_form(
    pattern: Pattern,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """``(indptr, indices, mask_index, masks, bq, bk)`` of the pattern's block form, as the BSR
    kernels take them (:meth:`Pattern.stacked_bsr`, read-only contiguous arrays)."""
    bsr = pattern.stacked_bsr()
    indptr, indices, mask_index, masks = _kernel_inputs(
        bsr.indptr, bsr.indices, bsr.mask_index, bsr.masks
    )
    bq, bk = bsr.block
    return indptr, indices, mask_index, masks, bq, bk


def forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    scale: float,
    softcap: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(out, lse)``: out in q's dtype, lse in the compute dtype (float64 or float32).

    BSR kernel when the pattern holds a block form, else CSR (the form rule above).
    """
    ct = compute_dtype(q.dtype)
    qc, kc, vc = _kernel_inputs(*(np.asarray(x, dtype=ct) for x in (q, k, v)))
    B, H, n_q, _ = qc.shape
    out = np.empty((B, H, n_q, vc.shape[3]), dtype=ct)
    lse = np.empty((B, H, n_q), dtype=ct)
    if pattern.block is not None:
        bsr_forward(
            qc,
            kc,
            vc,
            *_block_form(pattern),
            ct(scale),
            ct(softcap or 0.0),
            out,
            lse,
        )
    else:
        csr = pattern.stacked_csr()
        indptr, indices = _kernel_inputs(csr.indptr, csr.indices)
        csr_forward(qc, kc, vc, indptr, indices, ct(scale), ct(softcap or 0.0), out, lse)
    return out.astype(q.dtype, copy=False), lse


def transposed(pattern: Pattern) -> Transposed:
    """The pattern's transpose for the backward kernels, cached for the last few patterns used.

    A counting sort (:func:`..kernels.csr_backward.transpose_csr`, O(nnz), about 15 ms for 4.2M
    entries; ``Pattern.transpose()`` through scipy takes 70 ms and gives no ``perm``). A training
    loop calls backward with the same pattern every step, so it is kept: the cache holds strong
    references to at most ``_TRANSPOSE_CACHE_SIZE`` patterns, found by identity (patterns are
    immutable, so identity implies the same structure).
    """
    with _TRANSPOSE_LOCK:
        hit = _TRANSPOSE_CACHE.get(id(pattern))
        if hit is not None and hit[0] is pattern:
            _TRANSPOSE_CACHE.move_to_end(id(pattern))
            return hit[1]
    csr = pattern.stacked_csr()
    t = Transposed(*transpose_csr(csr.indptr, csr.indices, pattern.shape[1]))
    with _TRANSPOSE_LOCK:
        _TRANSPOSE_CACHE[id(pattern)] = (pattern, t)
        _TRANSPOSE_CACHE.move_to_end(id(pattern))
        while len(_TRANSPOSE_CACHE) > _TRANSPOSE_CACHE_SIZE:
            _TRANSPOSE_CACHE.popitem(last=False)
    return t


def backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    dout: np.ndarray,
    out: np.ndarray | None,
    lse: np.ndarray | None,
    scale: float,
    softcap: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dq, dk, dv)`` in q's dtype, computed in the compute dtype (float64 or float32).

    Same form rule as :func:`forward`: a pattern that holds a block form runs
    :mod:`..kernels.bsr_backward` over its blocks (no token CSR is built, so it runs at n = 2**20),
    any other pattern the token-CSR kernels of :mod:`..kernels.csr_backward`.

    ``out`` and ``lse`` are not needed: the row pass re-derives each row's softmax statistics and
    ``delta`` from the scores it computes anyway (see :mod:`..kernels.csr_backward`), which is
    more accurate than taking them from a rounded forward and costs no forward pass.
    """
    ct = compute_dtype(q.dtype)
    qc, kc, vc, gc = _kernel_inputs(*(np.asarray(x, dtype=ct) for x in (q, k, v, dout)))
    dq, dk, dv = (np.empty(x.shape, dtype=ct) for x in (qc, kc, vc))
    if pattern.block is not None:
        bsr_backward(
            qc,
            kc,
            vc,
            gc,
            *_block_form(pattern),
            ct(scale),
            ct(softcap or 0.0),
            dq,
            dk,
            dv,
        )
        return tuple(g.astype(q.dtype, copy=False) for g in (dq, dk, dv))  # type: ignore[return-value]
    csr = pattern.stacked_csr()
    t = transposed(pattern)
    csr_backward(
        qc,
        kc,
        vc,
        gc,
        csr.indptr,
        csr.indices,
        t.indptr,
        t.indices,
        t.perm,
        ct(scale),
        ct(softcap or 0.0),
        dq,
        dk,
        dv,
    )
    return tuple(g.astype(q.dtype, copy=False) for g in (dq, dk, dv))  # type: ignore[return-value]
