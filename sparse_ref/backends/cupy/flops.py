"""Useful FLOP counts of the forward and backward passes (what ``gpu/bench.py`` reports)."""

from __future__ import annotations

__all__ = ["useful_flops", "useful_backward_flops"]


def useful_flops(nnz: int, d: int, dv: int | None = None) -> float:
    """Forward FLOPs that the pattern requires: ``2*nnz*d + 2*nnz*d_v`` (``4*nnz*d`` when equal)."""
    return 2.0 * nnz * d + 2.0 * nnz * (d if dv is None else dv)


def useful_backward_flops(nnz: int, d: int, dv: int | None = None) -> float:
    """Backward FLOPs that the pattern requires: the products dP = dO V^T, dV = P^T dO, dQ = dS K
    and dK = dS^T Q, ``4*nnz*d + 4*nnz*d_v`` (``8*nnz*d`` when equal; recomputing S is not
    counted)."""
    return 4.0 * nnz * d + 4.0 * nnz * (d if dv is None else dv)
