"""Numba CPU backend: fused online-softmax kernels over the pattern's CSR rows or BSR block rows.

Form rule: a pattern that holds a block form (``pattern.block is not None``) runs the BSR kernels
of :mod:`..kernels.bsr_forward` and :mod:`..kernels.bsr_backward` over it (dq over block rows,
dk/dv over key block columns); any other pattern runs the token-CSR kernels of
:mod:`..kernels.csr_forward` and :mod:`..kernels.csr_backward` (dq over the pattern's rows, dk/dv
over its transpose). ``sparse_ref.attention`` first maps the pattern through
:func:`sparse_ref.metadata.kernel_pattern` (``form="auto"`` derives a block form for token-CSR
patterns whose blocks are dense enough), so by here the form is decided.

Everything the kernels take from the pattern (stacked CSR, block form, transposes) comes from
:mod:`sparse_ref.metadata`, built once and cached on the pattern.
"""

from __future__ import annotations

import numpy as np

from .. import metadata
from ..kernels import _compile_notice
from ..kernels._views import readonly
from ..kernels.bsr_backward import bsr_backward
from ..kernels.bsr_forward import bsr_forward
from ..kernels.csr_backward import csr_backward
from ..kernels.csr_forward import csr_forward
from ..pattern import Pattern
from ..validation import compute_dtype

_compile_notice.install()  # one line on stderr when a kernel compiles, none on a cache load


def _kernel_inputs(*arrays: np.ndarray) -> list[np.ndarray]:
    """Read-only C-contiguous views of the arrays a kernel only reads (see :mod:`..kernels._views`:
    one Numba specialization per dtype, so the same bits whatever ran before)."""
    return [readonly(np.ascontiguousarray(a)) for a in arrays]


@_compile_notice.tells("the forward kernels")
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
        (bq, bk), indptr, indices, mask_index, masks = metadata.blocks(pattern)
        bsr_forward(
            qc,
            kc,
            vc,
            indptr,
            indices,
            mask_index,
            masks,
            bq,
            bk,
            ct(scale),
            ct(softcap or 0.0),
            out,
            lse,
        )
    else:
        csr = metadata.csr(pattern)
        csr_forward(qc, kc, vc, csr.indptr, csr.indices, ct(scale), ct(softcap or 0.0), out, lse)
    return out.astype(q.dtype, copy=False), lse


@_compile_notice.tells("the backward kernels")
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
        (bq, bk), indptr, indices, mask_index, _ = metadata.blocks(pattern)
        by_column = metadata.block_transpose(pattern)
        bsr_backward(
            qc,
            kc,
            vc,
            gc,
            indptr,
            indices,
            mask_index,
            metadata.block_row_layout(pattern),
            bq,
            bk,
            by_column.indptr,
            by_column.rows,
            by_column.pos,
            ct(scale),
            ct(softcap or 0.0),
            dq,
            dk,
            dv,
        )
    else:
        csr = metadata.csr(pattern)
        by_key = metadata.csr_transpose(pattern)
        csr_backward(
            qc,
            kc,
            vc,
            gc,
            csr.indptr,
            csr.indices,
            by_key.indptr,
            by_key.indices,
            by_key.perm,
            ct(scale),
            ct(softcap or 0.0),
            dq,
            dk,
            dv,
        )
    return tuple(g.astype(q.dtype, copy=False) for g in (dq, dk, dv))  # type: ignore[return-value]
