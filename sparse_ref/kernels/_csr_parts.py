"""Per-row pieces of the token-CSR backward (:mod:`.csr_backward`), shared by its paths.

* gather path: dot products and ``y += w x`` accumulations through a CSR index array, four
  entries at a time (any sorted row);
* the softmax gradient of one row from its scores and ``dp`` (:func:`row_grad`), and the finite
  checks used to flag rows without gradient.

Same conventions as the kernels: one float dtype (float32 or float64) that is also the
accumulation dtype; ``fastmath`` only ``reassoc``/``contract``/``arcp``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._exp import fast_exp

__all__ = [
    "run_bounds",
    "gather_scores",
    "gather_accumulate",
    "gather_accumulate_perm",
    "axpy4",
    "axpy",
    "all_finite",
    "row_grad",
]

#: IEEE-preserving fast-math (as in :mod:`.csr_backward`): never ``nnan``/``ninf``.
_FASTMATH = {"reassoc", "contract", "arcp"}

_BIG = np.int64(1) << 62


@numba.njit(cache=True, inline="always")
def run_bounds(ptr, idx, r0, rn, skip):  # type: ignore[no-untyped-def]
    """Rows ``r0 .. r0 + rn - 1`` of a CSR less their first ``skip`` entries:
    ``(one_run, lo, hi, core_lo, core_hi, total)``. ``one_run``: every row is non-empty and one
    run of consecutive indices; ``[lo, hi)`` and ``[core_lo, core_hi)`` are the union and the
    intersection of the rows' index ranges (``core_hi >= core_lo``); ``total`` their entries."""
    one_run = True
    lo = _BIG
    hi = -_BIG
    core_lo = -_BIG
    core_hi = _BIG
    total = 0
    for r in range(rn):
        start = ptr[r0 + r] + skip
        n = ptr[r0 + r + 1] - start
        if n <= 0:
            one_run = False
            continue
        a = np.int64(idx[start])
        z = np.int64(idx[start + n - 1]) + 1
        one_run = one_run and z - a == n
        lo = min(lo, a)
        hi = max(hi, z)
        core_lo = max(core_lo, a)
        core_hi = min(core_hi, z)
        total += n
    return one_run, lo, hi, core_lo, max(core_lo, core_hi), total


# ----------------------------------------------------------------------------- gather path
@numba.njit(cache=True, fastmath=_FASTMATH, inline="always")
def _dot(a, b):  # type: ignore[no-untyped-def]
    acc = a.dtype.type(0)
    for c in range(a.shape[0]):
        acc += a[c] * b[c]
    return acc


@numba.njit(cache=True, fastmath=_FASTMATH, inline="always")
def _dot4(a, b0, b1, b2, b3):  # type: ignore[no-untyped-def]
    """``(a . b0, a . b1, a . b2, a . b3)`` in one pass over ``a``."""
    s0 = s1 = s2 = s3 = a.dtype.type(0)
    for c in range(a.shape[0]):
        x = a[c]
        s0 += x * b0[c]
        s1 += x * b1[c]
        s2 += x * b2[c]
        s3 += x * b3[c]
    return s0, s1, s2, s3


@numba.njit(cache=True, fastmath=_FASTMATH, inline="always")
def axpy(y, w, x):  # type: ignore[no-untyped-def]
    for c in range(y.shape[0]):
        y[c] += w * x[c]


@numba.njit(cache=True, fastmath=_FASTMATH, inline="always")
def axpy4(y, w0, x0, w1, x1, w2, x2, w3, x3):  # type: ignore[no-untyped-def]
    """``y += (w0 x0 + w1 x1) + (w2 x2 + w3 x3)`` in one pass over ``y``."""
    for c in range(y.shape[0]):
        y[c] += (w0 * x0[c] + w1 * x1[c]) + (w2 * x2[c] + w3 * x3[c])


@numba.njit(cache=True, fastmath=_FASTMATH)
def gather_scores(a, rows_a, b, rows_b, idx, start, n, scale, out_a, out_b):  # type: ignore[no-untyped-def]
    """``out_a[u] = scale * a . rows_a[idx[start + u]]`` and ``out_b[u] = b . rows_b[...]``."""
    u = 0
    while u + 4 <= n:
        j0, j1, j2, j3 = idx[start + u], idx[start + u + 1], idx[start + u + 2], idx[start + u + 3]
        s0, s1, s2, s3 = _dot4(a, rows_a[j0], rows_a[j1], rows_a[j2], rows_a[j3])
        out_a[u], out_a[u + 1], out_a[u + 2], out_a[u + 3] = (
            s0 * scale,
            s1 * scale,
            s2 * scale,
            s3 * scale,
        )
        out_b[u], out_b[u + 1], out_b[u + 2], out_b[u + 3] = _dot4(
            b, rows_b[j0], rows_b[j1], rows_b[j2], rows_b[j3]
        )
        u += 4
    while u < n:
        j = idx[start + u]
        out_a[u] = _dot(a, rows_a[j]) * scale
        out_b[u] = _dot(b, rows_b[j])
        u += 1


@numba.njit(cache=True, fastmath=_FASTMATH)
def gather_accumulate(y, w, rows, idx, start, n):  # type: ignore[no-untyped-def]
    """``y += sum_u w[u] rows[idx[start + u]]``, four rows per pass over ``y``."""
    u = 0
    while u + 4 <= n:
        axpy4(
            y,
            w[u],
            rows[idx[start + u]],
            w[u + 1],
            rows[idx[start + u + 1]],
            w[u + 2],
            rows[idx[start + u + 2]],
            w[u + 3],
            rows[idx[start + u + 3]],
        )
        u += 4
    while u < n:
        axpy(y, w[u], rows[idx[start + u]])
        u += 1


@numba.njit(cache=True, fastmath=_FASTMATH)
def gather_accumulate_perm(y, w, perm, base, rows, idx, start, n):  # type: ignore[no-untyped-def]
    """``y += sum_u w[perm[start + u] - base] rows[idx[start + u]]``: :func:`gather_accumulate`
    with the weights found through ``perm`` (the column pass reading the CSR-ordered scratch)."""
    u = 0
    while u + 4 <= n:
        t = start + u
        axpy4(
            y,
            w[perm[t] - base],
            rows[idx[t]],
            w[perm[t + 1] - base],
            rows[idx[t + 1]],
            w[perm[t + 2] - base],
            rows[idx[t + 2]],
            w[perm[t + 3] - base],
            rows[idx[t + 3]],
        )
        u += 4
    while u < n:
        t = start + u
        axpy(y, w[perm[t] - base], rows[idx[t]])
        u += 1


# ------------------------------------------------------------------------------ softmax parts
@numba.njit(cache=True, fastmath=_FASTMATH)
def _max_ignoring_nan(x, n):  # type: ignore[no-untyped-def]
    """``max(x[:n])`` over the non-NaN entries (``-inf`` if none), as eight interleaved chains."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x.dtype.type(-np.inf)
    u = 0
    while u + 8 <= n:
        m0 = x[u] if x[u] > m0 else m0
        m1 = x[u + 1] if x[u + 1] > m1 else m1
        m2 = x[u + 2] if x[u + 2] > m2 else m2
        m3 = x[u + 3] if x[u + 3] > m3 else m3
        m4 = x[u + 4] if x[u + 4] > m4 else m4
        m5 = x[u + 5] if x[u + 5] > m5 else m5
        m6 = x[u + 6] if x[u + 6] > m6 else m6
        m7 = x[u + 7] if x[u + 7] > m7 else m7
        u += 8
    while u < n:
        m0 = x[u] if x[u] > m0 else m0
        u += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


@numba.njit(cache=True, fastmath=_FASTMATH)
def _any_nan(x, n):  # type: ignore[no-untyped-def]
    for u in range(n):
        if x[u] != x[u]:
            return True
    return False


@numba.njit(cache=True, fastmath=_FASTMATH)
def all_finite(x):  # type: ignore[no-untyped-def]
    for c in range(x.shape[0]):
        if not abs(x[c]) < np.inf:  # False for NaN too
            return False
    return True


@numba.njit(cache=True, fastmath=_FASTMATH)
def _softcap(s, f, n, softcap):  # type: ignore[no-untyped-def]
    """``s = softcap * tanh(s / softcap)`` and ``f = 1 - tanh**2`` (the softcap's derivative)."""
    one = s.dtype.type(1)
    for u in range(n):
        t = math.tanh(s[u] / softcap)
        s[u] = softcap * t
        f[u] = one - t * t


@numba.njit(cache=True, fastmath=_FASTMATH)
def row_grad(s, dp, f, n, softcap):  # type: ignore[no-untyped-def]
    """One query row: scores ``s`` and ``dp = dout . v`` of its ``n`` keys in; ``p`` (in ``s``) and
    ``ds`` (in ``dp``) out. Returns False for a row without keys or with only ``-inf`` scores,
    which gets no gradient (``s`` and ``dp`` are then left unspecified)."""
    zero = s.dtype.type(0)
    if softcap != zero:
        _softcap(s, f, n, softcap)
    m = _max_ignoring_nan(s, n)
    if m == -np.inf:
        if not _any_nan(s, n):
            return False
        m = zero  # only NaN and -inf scores: any finite shift lets the NaN through
    total = zero
    dl = zero
    for u in range(n):  # vectorised
        e = fast_exp(s[u] - m)
        s[u] = e
        total += e
        dl += e * dp[u]
    r = s.dtype.type(1) / total
    dl *= r
    if softcap != zero:
        for u in range(n):
            p = s[u] * r
            s[u] = p
            dp[u] = p * (dp[u] - dl) * f[u]
    else:
        for u in range(n):
            p = s[u] * r
            s[u] = p
            dp[u] = p * (dp[u] - dl)
    return True
