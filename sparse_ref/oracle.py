"""The exact dense oracle: the definition of sparse attention, in plain NumPy.

For each query row ``i`` of head ``h`` with allowed keys ``K_i`` (the pattern's row):

    s_ij   = scale * q_i . k_j            (then softcap * tanh(s_ij / softcap) if softcap)
    m_i    = max_{j in K_i} s_ij
    p_ij   = exp(s_ij - m_i)              for j in K_i; keys outside K_i are excluded, not zeroed
    out_i  = sum_j p_ij v_j / sum_j p_ij
    lse_i  = m_i + log(sum_j p_ij)

A row with no allowed keys (or only ``-inf`` scores) gives ``out_i = 0`` and ``lse_i = -inf``. A NaN
allowed score makes the row NaN. The computation is a dense masked softmax in ``compute_dtype``,
row-chunked so peak memory is O(chunk * n_k). It is the definition, not a fast path.

Gradients (:func:`attention_backward`) differentiate exactly that definition. With ``g_i = dout_i``
and ``t_ij = tanh(s_raw_ij / softcap)`` (``s_raw = scale * q_i . k_j``):

    P_ij   = p_ij / sum_l p_il        (0 on excluded keys and on rows with no keys)
    dv_j   = sum_i P_ij g_i
    dP_ij  = g_i . v_j
    dS_ij  = P_ij (dP_ij - sum_l P_il dP_il)        (times 1 - t_ij**2 if softcap)
    dq_i   = scale * sum_j dS_ij k_j,     dk_j = scale * sum_i dS_ij q_i

summing over allowed pairs only (an excluded key contributes nothing, even if a value is infinite);
for GQA, dk/dv of a kv head sum over the query heads of its group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from .pattern import Pattern
from .per_batch import as_pattern_list, run_per_batch
from .validation import prepare

__all__ = [
    "attention",
    "attention_backward",
    "attention_rows",
    "auto_chunk",
    "backward",
    "forward",
]

_CHUNK_BYTES = 256 << 20


def auto_chunk(n_k: int, itemsize: int) -> int:
    """Rows per chunk so the few ``(chunk, n_k)`` temporaries stay under ~256 MiB."""
    return max(1, _CHUNK_BYTES // max(1, 4 * n_k * itemsize))


def _row_block(
    q_rows: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    scale: Any,
    softcap: Any,
    v_finite: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward for a block of query rows against all keys of one (batch, head); see module doc."""
    s = (q_rows @ k.T) * scale
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=1, initial=-np.inf)  # NaN propagates; empty rows give -inf
    m_safe = np.where(m == -np.inf, 0, m).astype(s.dtype)
    p = np.exp(s - m_safe[:, None])
    total = p.sum(axis=1)
    if v_finite:
        weighted = p @ v
    else:  # p_ij = 0 on excluded keys, but 0 * inf is NaN: sum over the allowed keys only
        weighted = np.stack([p[r, mask[r]] @ v[mask[r]] for r in range(len(p))])
        weighted = weighted.reshape(len(p), v.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total[:, None] == 0, 0, weighted / total[:, None]).astype(s.dtype)
        lse = np.where(total == 0, -np.inf, m_safe + np.log(total)).astype(s.dtype)
    return out, lse


def forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    scale: float,
    softcap: float | None,
    *,
    compute_dtype: Any = np.float64,
    chunk: int | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Oracle on validated 4-D arrays (q ``(B, H, n_q, d)``, k/v ``(B, H_kv, n_k, d|d_v)``).

    Returns ``out (B, H, R, d_v)`` and ``lse (B, H, R)`` in ``compute_dtype``, where ``R`` is
    ``len(rows)`` (default: all ``n_q`` rows).
    """
    ct = np.dtype(compute_dtype)
    B, H, n_q, _ = q.shape
    H_kv, n_k, d_v = v.shape[1], v.shape[2], v.shape[3]
    rows = np.arange(n_q, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    chunk = chunk or auto_chunk(n_k, ct.itemsize)
    scale_c = ct.type(scale)
    softcap_c = None if softcap is None else ct.type(softcap)
    out = np.zeros((B, H, len(rows), d_v), dtype=ct)
    lse = np.full((B, H, len(rows)), -np.inf, dtype=ct)
    group = H // H_kv
    for b in range(B):
        for h in range(H):
            k_bh = k[b, h // group].astype(ct)
            v_bh = v[b, h // group].astype(ct)
            v_finite = bool(np.isfinite(v_bh).all())
            for r0 in range(0, len(rows), chunk):
                sel = rows[r0 : r0 + chunk]
                mask = pattern.mask_rows(sel, head=h)
                out[b, h, r0 : r0 + chunk], lse[b, h, r0 : r0 + chunk] = _row_block(
                    q[b, h, sel].astype(ct), k_bh, v_bh, mask, scale_c, softcap_c, v_finite
                )
    return out, lse


def attention(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern | Sequence[Pattern],
    *,
    scale: float | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    compute_dtype: Any = np.float64,
    chunk: int | None = None,
    check_finite: bool = True,
) -> Any:
    """Exact sparse attention by a dense masked softmax in ``compute_dtype`` (default float64).

    Shapes as :func:`sparse_ref.attention`: q ``(..., n_q, d)``, k ``(..., n_k, d)``, v ``(..., n_k,
    d_v)`` with the same rank (2, 3 or 4). Returns ``out (..., n_q, d_v)`` and, if ``return_lse``,
    ``lse (..., n_q)``, both in ``compute_dtype`` (the oracle does not round its result back).
    ``pattern`` may be a sequence of ``B`` patterns, one per batch element (4-D inputs).

    Example:
        >>> import numpy as np
        >>> from sparse_ref import patterns
        >>> q = k = v = np.eye(3)
        >>> attention(q, k, v, patterns.causal(3))[0]
        array([1., 0., 0.])
    """
    per_batch = as_pattern_list(pattern)
    if per_batch is not None:
        return run_per_batch(
            lambda p, **qkv: attention(
                **qkv, pattern=p, scale=scale, softcap=softcap, return_lse=return_lse,
                compute_dtype=compute_dtype, chunk=chunk, check_finite=check_finite,
            ),
            per_batch, {"q": q, "k": k, "v": v},
        )  # fmt: skip
    pattern = cast(Pattern, pattern)  # one pattern from here on
    prep = prepare(q, k, v, pattern, scale=scale, softcap=softcap, check_finite=check_finite)
    out, lse = forward(
        prep.q,
        prep.k,
        prep.v,
        pattern,
        prep.scale,
        prep.softcap,
        compute_dtype=_check_compute_dtype(compute_dtype),
        chunk=_check_chunk(chunk),
    )
    return (prep.restore(out), prep.restore(lse)) if return_lse else prep.restore(out)


def attention_rows(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern | Sequence[Pattern],
    rows: Any,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    compute_dtype: Any = np.float64,
    check_finite: bool = True,
) -> Any:
    """The oracle for selected query rows only (for huge ``n``): ``out (..., len(rows), d_v)``.

    ``pattern`` may be a sequence of ``B`` patterns, one per batch element (4-D inputs).
    """
    per_batch = as_pattern_list(pattern)
    if per_batch is not None:
        return run_per_batch(
            lambda p, **qkv: attention_rows(
                **qkv, pattern=p, rows=rows, scale=scale, softcap=softcap,
                return_lse=return_lse, compute_dtype=compute_dtype, check_finite=check_finite,
            ),
            per_batch, {"q": q, "k": k, "v": v},
        )  # fmt: skip
    pattern = cast(Pattern, pattern)  # one pattern from here on
    prep = prepare(q, k, v, pattern, scale=scale, softcap=softcap, check_finite=check_finite)
    n_q = prep.q.shape[2]
    rows_arr = np.asarray(rows)
    if rows_arr.ndim != 1 or not np.issubdtype(rows_arr.dtype, np.integer):
        raise TypeError(f"rows must be a 1-D integer array, got {rows_arr.dtype} {rows_arr.shape}")
    if rows_arr.size and (rows_arr.min() < 0 or rows_arr.max() >= n_q):
        raise ValueError(f"rows must lie in [0, n_q = {n_q})")
    out, lse = forward(
        prep.q,
        prep.k,
        prep.v,
        pattern,
        prep.scale,
        prep.softcap,
        compute_dtype=_check_compute_dtype(compute_dtype),
        rows=rows_arr,
    )
    return (prep.restore(out), prep.restore(lse)) if return_lse else prep.restore(out)


def _check_compute_dtype(compute_dtype: Any) -> np.dtype:
    """The compute dtype as a NumPy float dtype (float16 .. longdouble), or a clear error."""
    try:
        ct = np.dtype(compute_dtype)
    except TypeError:
        raise TypeError(
            f"compute_dtype must be a NumPy floating dtype, got {compute_dtype!r}"
        ) from None
    if not np.issubdtype(ct, np.floating):
        raise TypeError(f"compute_dtype must be a NumPy floating dtype, got {ct}")
    return ct


def _check_chunk(chunk: Any) -> int | None:
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
    return int(chunk)


# ---------------------------------------------------------------------------------------- gradients
def sum_allowed(
    w: np.ndarray,
    allowed: np.ndarray,
    x: np.ndarray,
    matmul: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.matmul,
) -> np.ndarray:
    """``sum_j w[r, j] x[j]`` over the allowed ``j`` of each row ``r`` only.

    ``w`` is zero on excluded entries, so ``w @ x`` is exact when ``x`` is finite; otherwise
    ``0 * inf`` would leak NaN from an excluded row of ``x``, so sum over the allowed entries alone.
    ``matmul`` computes the products (the tolerance baseline passes a fixed-order one).
    """
    if np.isfinite(x).all():
        return matmul(w, x)
    out = np.zeros((w.shape[0], x.shape[1]), dtype=w.dtype)
    for r in range(w.shape[0]):
        out[r] = matmul(w[r, allowed[r]], x[allowed[r]])
    return out


def _row_block_backward(
    q_rows: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    dout_rows: np.ndarray,
    mask: np.ndarray,
    scale: Any,
    softcap: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a block of query rows of one (batch, head): ``(dq_rows, dk_part, dv_part)``.

    ``dk_part``/``dv_part`` are this block's contributions to every key; see the module doc.
    """
    with np.errstate(invalid="ignore"):  # NaN from non-finite excluded keys is masked out below
        s = (q_rows @ k.T) * scale
        dp_all = dout_rows @ v.T
    if softcap is not None:
        t = np.tanh(s / softcap)
        s = softcap * t
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=1, initial=-np.inf)
    m_safe = np.where(m == -np.inf, 0, m).astype(s.dtype)
    e = np.exp(s - m_safe[:, None])
    total = e.sum(axis=1)
    live = mask & (total != 0)[:, None]  # allowed pairs of rows that have keys
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(live, e / total[:, None], 0).astype(s.dtype)
    dp = np.where(live, dp_all, 0).astype(s.dtype)  # excluded v_j may be inf: dropped
    delta = (p * dp).sum(axis=1)
    ds = p * (dp - delta[:, None])
    if softcap is not None:
        ds = ds * (1 - t * t)
    ds = np.where(live, ds, 0).astype(s.dtype)  # a NaN delta must not reach excluded keys
    dq_rows = sum_allowed(ds, live, k) * scale
    dk_part = sum_allowed(ds.T, live.T, q_rows) * scale
    dv_part = sum_allowed(p.T, live.T, dout_rows)
    return dq_rows, dk_part, dv_part


def backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    dout: np.ndarray,
    scale: float,
    softcap: float | None,
    *,
    compute_dtype: Any = np.float64,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oracle gradients on validated 4-D arrays (q ``(B, H, n_q, d)``, k/v ``(B, H_kv, n_k,
    d|d_v)``, dout ``(B, H, n_q, d_v)``).

    Returns ``dq (B, H, n_q, d)``, ``dk (B, H_kv, n_k, d)``, ``dv (B, H_kv, n_k, d_v)`` in
    ``compute_dtype``. dk/dv of kv head ``g`` sum over query heads ``h`` with ``h // (H // H_kv) ==
    g``, in increasing ``h``.
    """
    ct = np.dtype(compute_dtype)
    B, H, n_q, _ = q.shape
    H_kv, n_k = k.shape[1], k.shape[2]
    # about twice the forward's temporaries per row: halve the forward's automatic chunk
    chunk = chunk or max(1, auto_chunk(n_k, ct.itemsize) // 2)
    scale_c = ct.type(scale)
    softcap_c = None if softcap is None else ct.type(softcap)
    dq = np.zeros(q.shape, dtype=ct)
    dk = np.zeros(k.shape, dtype=ct)
    dv = np.zeros(v.shape, dtype=ct)
    group = H // H_kv
    for b in range(B):
        for h in range(H):
            g = h // group
            k_bh = k[b, g].astype(ct)
            v_bh = v[b, g].astype(ct)
            for r0 in range(0, n_q, chunk):
                rows = np.arange(r0, min(r0 + chunk, n_q))
                mask = pattern.mask_rows(rows, head=h)
                dq[b, h, rows], dk_part, dv_part = _row_block_backward(
                    q[b, h, rows].astype(ct),
                    k_bh,
                    v_bh,
                    dout[b, h, rows].astype(ct),
                    mask,
                    scale_c,
                    softcap_c,
                )
                dk[b, g] += dk_part
                dv[b, g] += dv_part
    return dq, dk, dv


def attention_backward(
    q: Any,
    k: Any,
    v: Any,
    pattern: Pattern | Sequence[Pattern],
    dout: Any,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    compute_dtype: Any = np.float64,
    chunk: int | None = None,
    check_finite: bool = True,
) -> tuple[Any, Any, Any]:
    """Exact gradients of :func:`attention` with respect to ``q``, ``k`` and ``v``.

    ``dout`` is the gradient of the loss with respect to ``out``, shaped like ``out`` ``(..., n_q,
    d_v)``. Shapes, dtypes and checks as :func:`attention`. Returns ``(dq, dk, dv)`` shaped like
    ``(q, k, v)``, in ``compute_dtype`` (not rounded back). Rows with no allowed keys get ``dq = 0``
    and contribute nothing to ``dk``/``dv``; for GQA, ``dk``/``dv`` sum over the query heads that
    share a kv head. ``pattern`` may be a sequence of ``B`` patterns, one per batch element (4-D
    inputs). See the module doc for the formulas.

    Example:
        >>> import numpy as np
        >>> from sparse_ref import Pattern
        >>> q = k = v = np.eye(2)
        >>> dq, dk, dv = attention_backward(q, k, v, Pattern.from_dense(np.eye(2, dtype=bool)), v)
        >>> dv  # each key is the only key of its row: dv_j = dout_j
        array([[1., 0.],
               [0., 1.]])
    """
    per_batch = as_pattern_list(pattern)
    if per_batch is not None:
        return run_per_batch(
            lambda p, **arrays: attention_backward(
                **arrays, pattern=p, scale=scale, softcap=softcap,
                compute_dtype=compute_dtype, chunk=chunk, check_finite=check_finite,
            ),
            per_batch, {"q": q, "k": k, "v": v, "dout": dout},
        )  # fmt: skip
    pattern = cast(Pattern, pattern)  # one pattern from here on
    prep = prepare(
        q,
        k,
        v,
        pattern,
        scale=scale,
        softcap=softcap,
        check_finite=check_finite,
        extra={"dout": dout},
    )
    dq, dk, dv = backward(
        prep.q,
        prep.k,
        prep.v,
        pattern,
        prep.extra["dout"],
        prep.scale,
        prep.softcap,
        compute_dtype=_check_compute_dtype(compute_dtype),
        chunk=_check_chunk(chunk),
    )
    return prep.restore(dq), prep.restore(dk), prep.restore(dv)
