"""Useful FLOP counts: the one formula of :func:`sparse_ref.bench.flops.useful_flops`, re-exported
under the backend's old names."""

from __future__ import annotations

import warnings

from ...bench.flops import useful_flops

__all__ = ["useful_flops", "useful_backward_flops"]


def useful_backward_flops(nnz: int, d: int, dv: int | None = None) -> int:
    """Deprecated: ``useful_flops(nnz, d, dv, backward=True)`` (``8*nnz*d`` when ``d_v = d``)."""
    warnings.warn(
        "useful_backward_flops is deprecated; use sparse_ref.bench.flops.useful_flops(nnz, d, dv, "
        "backward=True)",
        DeprecationWarning,
        stacklevel=2,
    )
    return useful_flops(nnz, d, dv, backward=True)
