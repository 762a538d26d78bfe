"""Useful flops of one attention call: the one formula every benchmark and report uses.

Imports nothing but the standard library: the CuPy backend (on a GPU machine without Numba) and
the analysis tables import it as well as the CPU benchmarks.
"""

from __future__ import annotations

import operator

__all__ = ["useful_flops"]


def _count(value: object, name: str, least: int) -> int:
    """``value`` as an int >= ``least`` (NumPy integers accepted, bools refused)."""
    if isinstance(value, bool):  # the old positional ``backward`` of useful_flops(nnz, d, backward)
        raise TypeError(f"{name} must be an int, got bool {value!r} (pass backward=True)")
    try:
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if count < least:
        raise ValueError(f"{name} must be >= {least}, got {count}")
    return count


def useful_flops(nnz: int, d: int, dv: int | None = None, *, backward: bool = False) -> int:
    """Useful flops of one attention call over ``nnz`` allowed (query, key) pairs.

    ``d`` is the query/key head dimension, ``dv`` the value dimension (default ``d``); ``nnz`` is
    summed over batch and heads. Only the products the pattern requires are counted, a multiply
    and an add each; softmax is not counted. Dense peers and the oracle are credited with the same
    useful flops, whatever they compute.

    - Forward: ``2 * nnz * d`` for ``Q K^T`` plus ``2 * nnz * dv`` for ``P V``: ``4 * nnz * d``
      when ``dv == d`` (DESIGN §12).
    - Backward: ``dP = dO V^T`` and ``dV = P^T dO`` (``2 * nnz * dv`` each), ``dQ = dS K`` and
      ``dK = dS^T Q`` (``2 * nnz * d`` each): ``8 * nnz * d`` when ``dv == d``, twice the forward.
      Recomputing ``S = Q K^T`` (our kernels and FlashAttention-2 do, ``10 * nnz * d`` in all) is
      not useful work and is not counted.

    Raises:
        TypeError: an argument is not an int (a bool third argument is the old positional
            ``backward``: pass ``backward=True``).
        ValueError: ``nnz < 0`` or a dimension ``< 1``.

    Example:
        >>> useful_flops(1000, 64), useful_flops(1000, 64, backward=True)
        (256000, 512000)
        >>> useful_flops(1000, 64, 32)  # d_v = 32
        192000
    """
    nnz = _count(nnz, "nnz", 0)
    d = _count(d, "d", 1)
    dv = d if dv is None else _count(dv, "dv", 1)
    return (4 if backward else 2) * nnz * (d + dv)
