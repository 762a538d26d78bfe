"""Legitimate same-precision formulations of sparse attention: the tolerance rule's baseline.

The tolerance rule (DESIGN §9, :mod:`sparse_ref.tolerance`) measures how far a straightforward
implementation in dtype ``T`` lands from the float64 oracle. Real kernels order the same arithmetic
differently, and each order rounds differently; the rule takes the worst of this small, documented
family, so that none of these legitimate choices is rejected:

==========================  =====================================================================
choice                      alternatives
==========================  =====================================================================
where the scale goes        ``s = (q . k) * scale`` or ``s = (q * scale)_T . k`` (FlashAttention's
                            ``attention_ref(reorder_ops=True)``, most kernels)
when P is normalised        ``out = (p_T . v) / l`` (online softmax) or ``out = (p / l)_T . v``
                            (SDPA's MATH backend, FlexAttention eager)
the backward's ``delta``    ``delta_i = sum_j P_ij dP_ij`` or ``rowsum(dout_i * out_i)``
                            (FlashAttention-2)
the backward's ``P``        kept from the forward or recomputed as ``exp(s - lse)`` (FlashAttention)
the exponential             ``exp(s - m)``, or ``exp2`` of scores scaled by ``scale * log2(e)`` with
                            the natural-log ``lse`` stored and multiplied back by ``log2(e)``
                            (FlashAttention-2, torch's CPU flash kernels)
how the keys are visited    the whole row at once, or an online softmax over blocks of
                            ``key_block`` keys: per block ``m' = max(m, rowmax(s_blk))``,
                            ``a = exp(m - m')``, ``l = l a + rowsum(p_blk)``,
                            ``acc = acc a + p_blk,T . v_blk``; finally ``out = acc / l``,
                            ``lse = m + log(l)`` (FlashAttention-2, torch's memory-efficient SDPA,
                            FlexAttention's Triton kernel)
==========================  =====================================================================

``x_T`` is ``x`` rounded to ``T``. For ``T`` = float16/bfloat16 every formulation computes in float32
and rounds where typical tensor-core kernels round: the inputs, ``P`` before ``P . V`` (and ``dS``
before ``dS . K``, ``dS^T . Q``), and the outputs (``lse`` stays float32). bfloat16 arrays are
``ml_dtypes.bfloat16``.

All functions take validated 4-D arrays (q ``(B, H, n_q, d)``, k/v ``(B, H_kv, n_k, d|d_v)``,
dout ``(B, H, n_q, d_v)``) and return arrays in the compute dtype holding values of ``T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from .oracle import auto_chunk, sum_allowed
from .pattern import Pattern

__all__ = [
    "Formulation",
    "FORWARD_FORMULATIONS",
    "BACKWARD_FORMULATIONS",
    "FLASH_KEY_BLOCKS",
    "HALF_DTYPES",
    "as_dtype",
    "compute_dtype",
    "forward",
    "backward",
    "gradient_magnitudes",
    "MaskCache",
    "fixed_order_matmul",
]

#: The 16-bit dtypes: computed in float32, rounded at the kernel's rounding points.
HALF_DTYPES = ("float16", "bfloat16")


def as_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype; ``"bfloat16"`` is ``ml_dtypes.bfloat16``."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def compute_dtype(dtype: Any) -> np.dtype:
    """float32 for the 16-bit dtypes, the dtype itself otherwise."""
    dt = as_dtype(dtype)
    return np.dtype(np.float32) if dt.name in HALF_DTYPES else dt


@dataclass(frozen=True)
class Formulation:
    """One legitimate order of the same arithmetic (see the module doc for each flag).

    ``key_block`` is the number of keys per block of the online softmax, 0 for the whole row at
    once; P can be normalised before P . V (``normalize_first``) only with the whole row.
    """

    name: str
    prescale_q: bool = False
    normalize_first: bool = False
    delta_from_out: bool = False
    p_from_lse: bool = False
    exp2: bool = False
    key_block: int = 0

    def __post_init__(self) -> None:
        if self.key_block < 0:
            raise ValueError(f"key_block must be >= 0 (0: the whole row), got {self.key_block}")
        if self.normalize_first and self.key_block:
            raise ValueError("normalize_first needs the whole row's sum: key_block must be 0")


#: Keys per block of the online-softmax forwards: the tile widths of FlashAttention-2's forward
#: (64 or 128 keys, by head dimension), torch's memory-efficient SDPA and FlexAttention's Triton
#: kernel (``BLOCK_N`` 64 or 128). Where the running maximum moves between blocks, the two widths
#: round differently, and neither is the worse on every case.
FLASH_KEY_BLOCKS = (64, 128)

#: The forward family: scale on scores or on q, times P normalised after or before P . V; the
#: exp2 form over the whole row; and FlashAttention-2's forward (exp2 with the scale folded,
#: online softmax over key blocks) for each width of :data:`FLASH_KEY_BLOCKS`.
FORWARD_FORMULATIONS = (
    Formulation("scores"),
    Formulation("q_prescaled", prescale_q=True),
    Formulation("p_normalized", normalize_first=True),
    Formulation("q_prescaled_p_normalized", prescale_q=True, normalize_first=True),
    Formulation("exp2", exp2=True),
    *(Formulation(f"flash2_bn{n}", exp2=True, key_block=n) for n in FLASH_KEY_BLOCKS),
)

#: The backward family: each choice alone, and FlashAttention-2's combination of all three.
BACKWARD_FORMULATIONS = (
    Formulation("scores"),
    Formulation("q_prescaled", prescale_q=True),
    Formulation("delta_from_out", delta_from_out=True),
    Formulation("p_from_lse", p_from_lse=True),
    Formulation("flash2", delta_from_out=True, p_from_lse=True, exp2=True),
    Formulation("flash2_q_prescaled", prescale_q=True, delta_from_out=True, p_from_lse=True),
)


_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


def fixed_order_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (``a`` of shape ``(m, k)`` or ``(k,)``, ``b`` ``(k, n)``) summed in an order that
    does not depend on the machine: NumPy's own einsum loop, not BLAS, whose kernels (picked per
    CPU) accumulate in different orders. Every product of the formulations goes through it, so the
    baseline errors, and the tolerances a suite stores, are the same wherever it is generated."""
    return np.einsum("...j,jk->...k", a, b, optimize=False)


def _sum_allowed(w: np.ndarray, allowed: np.ndarray, x: np.ndarray) -> np.ndarray:
    return sum_allowed(w, allowed, x, matmul=fixed_order_matmul)


class MaskCache:
    """Dense row masks of a pattern, built once per (head, rows) and shared by every formulation
    and dtype of one case (building them dominated the generation of small suites)."""

    def __init__(self, pattern: Pattern) -> None:
        self.pattern = pattern
        self._masks: dict[tuple[int, bytes], np.ndarray] = {}

    def rows(self, rows: np.ndarray, head: int) -> np.ndarray:
        key = (head if self.pattern.num_heads > 1 else 0, np.asarray(rows, np.int64).tobytes())
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = self.pattern.mask_rows(rows, head=head)
        return mask


def _masks(pattern: Pattern, masks: MaskCache | None) -> MaskCache:
    return masks if masks is not None and masks.pattern is pattern else MaskCache(pattern)


class _Precision:
    """Implementation dtype ``t`` computed in ``c``; ``store`` rounds a ``c`` array to ``t``."""

    def __init__(self, dtype: Any) -> None:
        self.t = as_dtype(dtype)
        self.c = compute_dtype(dtype)
        self.half = self.t != self.c

    def store(self, x: np.ndarray) -> np.ndarray:
        return x.astype(self.t).astype(self.c) if self.half else x.astype(self.c, copy=False)


def _scores(
    q_rows: np.ndarray, k: np.ndarray, scale: Any, softcap: Any, f: Formulation, pr: _Precision
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores of a row block (softcapped; in base 2 for ``exp2``) and ``tanh(s_raw / softcap)``."""
    log2e = pr.c.type(_LOG2E)
    with np.errstate(invalid="ignore", over="ignore"):
        if f.exp2 and softcap is None:  # the scale folded into one factor, as FlashAttention-2
            return fixed_order_matmul(q_rows, k.T) * (scale * log2e), None
        s = (
            fixed_order_matmul(pr.store(q_rows * scale), k.T)
            if f.prescale_q
            else fixed_order_matmul(q_rows, k.T) * scale
        )
        if softcap is None:
            return s, None
        t = np.tanh(s / softcap)
        return softcap * t * (log2e if f.exp2 else 1), t


def _shifted_exp(s: np.ndarray, m: np.ndarray, f: Formulation) -> tuple[np.ndarray, np.ndarray]:
    """``exp(s - m)`` per row (``exp2`` for base-2 scores) and the shift ``m``, 0 where ``m`` is
    ``-inf`` (rows without an allowed key so far). ``s (R, n)`` is ``-inf`` on excluded keys."""
    m_safe = np.where(m == -np.inf, 0, m).astype(s.dtype)
    return (np.exp2 if f.exp2 else np.exp)(s - m_safe[:, None]), m_safe


def _softmax_parts(
    s: np.ndarray, mask: np.ndarray, f: Formulation
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``p = exp(s - m)`` (``exp2`` for base-2 scores) over allowed keys (0 elsewhere), row sums
    ``l`` and safe row maxima ``m``."""
    s = np.where(mask, s, -np.inf)
    p, m_safe = _shifted_exp(s, s.max(axis=1, initial=-np.inf), f)
    return p, p.sum(axis=1), m_safe


def _lse(total: np.ndarray, m: np.ndarray, f: Formulation, pr: _Precision) -> np.ndarray:
    """The natural-log lse (``-inf`` for rows without keys) in the compute dtype."""
    with np.errstate(divide="ignore"):
        if f.exp2:
            lse = (m + np.log2(total)) * pr.c.type(_LN2)
        else:
            lse = m + np.log(total)
    return np.where(total == 0, -np.inf, lse).astype(pr.c)


def _out_lse(
    s: np.ndarray, mask: np.ndarray, v: np.ndarray, f: Formulation, pr: _Precision
) -> tuple[np.ndarray, np.ndarray]:
    """``out (R, d_v)`` and ``lse (R,)`` of a row block from its scores ``s (R, n_k)`` (base 2 for
    ``exp2``), ``mask (R, n_k)`` and ``v (n_k, d_v)``, all in the compute dtype.

    The online softmax over key blocks of ``f.key_block`` keys (one block of the whole row when
    0, which is the plain softmax: the running terms start at 0). P.V sums over the allowed keys
    only (an excluded key's non-finite ``v`` row must not leak through ``0 * inf``, as in the
    oracle).
    """
    s = np.where(mask, s, -np.inf)
    rows, n_k = s.shape
    m = np.full(rows, -np.inf, dtype=pr.c)
    total = np.zeros(rows, dtype=pr.c)
    acc = np.zeros((rows, v.shape[1]), dtype=pr.c)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = f.key_block or max(n_k, 1)
        for j0 in range(0, n_k, width):
            blk = slice(j0, j0 + width)
            m_new = np.maximum(m, s[:, blk].max(axis=1, initial=-np.inf))
            p, shift = _shifted_exp(s[:, blk], m_new, f)
            alpha = (np.exp2 if f.exp2 else np.exp)(m - shift)  # 0 while m is -inf
            total = total * alpha + p.sum(axis=1)
            if f.normalize_first:  # one block (key_block 0): total is the whole row's already
                acc = _sum_allowed(pr.store(p / total[:, None]), mask[:, blk], v[blk])
            else:
                acc = acc * alpha[:, None] + _sum_allowed(pr.store(p), mask[:, blk], v[blk])
            m = m_new
        out = acc if f.normalize_first else acc / total[:, None]
        out = pr.store(np.where(total[:, None] == 0, 0, out).astype(pr.c))
    return out, _lse(total, np.where(m == -np.inf, 0, m).astype(pr.c), f, pr)


def forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    scale: float,
    softcap: float | None,
    dtype: Any,
    formulation: Formulation,
    *,
    rows: np.ndarray | None = None,
    masks: MaskCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``out (B, H, R, d_v)`` and ``lse (B, H, R)`` of one formulation in ``dtype`` (``R`` rows);
    ``masks`` shares the pattern's row masks between calls."""
    pr = _Precision(dtype)
    masks = _masks(pattern, masks)
    B, H, n_q, _ = q.shape
    H_kv, n_k, d_v = v.shape[1:]
    rows = np.arange(n_q, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    chunk = auto_chunk(n_k, pr.c.itemsize)
    sc, cap = pr.c.type(scale), None if softcap is None else pr.c.type(softcap)
    out = np.zeros((B, H, len(rows), d_v), dtype=pr.c)
    lse = np.full((B, H, len(rows)), -np.inf, dtype=pr.c)
    group = H // H_kv
    for b in range(B):
        for h in range(H):
            k_bh, v_bh = pr.store(k[b, h // group]), pr.store(v[b, h // group])
            for r0 in range(0, len(rows), chunk):
                sel = rows[r0 : r0 + chunk]
                s, _ = _scores(pr.store(q[b, h, sel]), k_bh, sc, cap, formulation, pr)
                mask = masks.rows(sel, h)
                out[b, h, r0 : r0 + chunk], lse[b, h, r0 : r0 + chunk] = _out_lse(
                    s, mask, v_bh, formulation, pr
                )
    return out, lse


def backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    dout: np.ndarray,
    scale: float,
    softcap: float | None,
    dtype: Any,
    formulation: Formulation,
    *,
    masks: MaskCache | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dq, dk, dv)`` of one formulation in ``dtype``; dk/dv sum over each GQA group."""
    pr, f = _Precision(dtype), formulation
    masks = _masks(pattern, masks)
    B, H, n_q, _ = q.shape
    H_kv, n_k = k.shape[1], k.shape[2]
    chunk = max(1, auto_chunk(n_k, pr.c.itemsize) // 2)
    sc, cap = pr.c.type(scale), None if softcap is None else pr.c.type(softcap)
    dq = np.zeros(q.shape, dtype=pr.c)
    dk = np.zeros(k.shape, dtype=pr.c)
    dv = np.zeros(v.shape, dtype=pr.c)
    group = H // H_kv
    for b in range(B):
        for h in range(H):
            g = h // group
            k_bh, v_bh = pr.store(k[b, g]), pr.store(v[b, g])
            for r0 in range(0, n_q, chunk):
                sel = np.arange(r0, min(r0 + chunk, n_q))
                q_r, do_r = pr.store(q[b, h, sel]), pr.store(dout[b, h, sel])
                mask = masks.rows(sel, h)
                s, t = _scores(q_r, k_bh, sc, cap, f, pr)
                p, total, m = _softmax_parts(s, mask, f)
                live = mask & (total != 0)[:, None]
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    if f.p_from_lse:  # the stored natural-log lse, as a kernel reads it back
                        lse = np.where(total == 0, 0, _lse(total, m, f, pr))
                        if f.exp2:
                            lse = lse * pr.c.type(_LOG2E)
                        exp = np.exp2 if f.exp2 else np.exp
                        P = np.where(live, exp(np.where(live, s, 0) - lse[:, None]), 0)
                    else:
                        P = np.where(live, p / total[:, None], 0)
                    dP = np.where(live, fixed_order_matmul(do_r, v_bh.T), 0)
                    if f.delta_from_out:
                        out, _ = _out_lse(s, mask, v_bh, f, pr)
                        delta = (do_r * out).sum(axis=1)
                    else:
                        delta = (P * dP).sum(axis=1)
                    ds = P * (dP - delta[:, None])
                    if t is not None:
                        ds = ds * (1 - t * t)
                ds = pr.store(np.where(live, ds, 0).astype(pr.c))
                P = pr.store(P.astype(pr.c))
                dq[b, h, sel] = _sum_allowed(ds, live, k_bh) * sc
                if f.prescale_q:
                    dk[b, g] += _sum_allowed(ds.T, live.T, pr.store(q_r * sc))
                else:
                    dk[b, g] += _sum_allowed(ds.T, live.T, q_r) * sc
                dv[b, g] += _sum_allowed(P.T, live.T, do_r)
    return pr.store(dq), pr.store(dk), pr.store(dv)


def gradient_magnitudes(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    pattern: Pattern,
    dout: np.ndarray,
    scale: float,
    softcap: float | None,
    *,
    masks: MaskCache | None = None,
) -> dict[str, float]:
    """The largest single term of each gradient's sums, in float64 (the rule's gradient floor).

    With exact probabilities ``P``, ``out = P . v``, ``dP_ij = dout_i . v_j`` and
    ``delta_i = P_i . dP_i``: a kernel that recomputes ``P`` in the backward gets it with a relative
    error of a few units times ``c_ij = scale * |q_i| . |k_j| + |lse_i|`` (the score's own rounding,
    the stored lse's), and forms ``dS_ij = P_ij (dP_ij - delta_i)`` from
    ``R_ij = P_ij (|dout_i| . |v_j| + |dout_i| . |out_i| + c_ij |dP_ij - delta_i|)`` (the
    roundings of ``dP`` and ``delta``, and the error of ``P`` times what multiplies it). The
    terms of ``dq_i = scale sum_j dS_ij k_j``, ``dk_j = scale sum_i dS_ij q_i`` and
    ``dv_j = sum_i P_ij dout_i`` are then bounded by ``scale R_ij max|k_j|``, ``scale R_ij
    max|q_i|`` and ``P_ij (1 + c_ij) max|dout_i|``; this returns the largest of each. A single term
    is what is left where the exact gradient is 0 (a row with one key); how rounding accumulates
    over many terms is what the formulations measure. Non-finite inputs count as 0.
    """
    pr = _Precision(np.float64)
    masks = _masks(pattern, masks)
    x = {
        name: np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        for name, arr in (("q", q), ("k", k), ("v", v), ("dout", dout))
    }
    a = {name: np.abs(arr) for name, arr in x.items()}
    B, H, n_q, _ = q.shape
    H_kv, n_k = k.shape[1], k.shape[2]
    chunk = max(1, auto_chunk(n_k, 8) // 2)
    top = {"dq": 0.0, "dk": 0.0, "dv": 0.0}
    group = H // H_kv
    plain = Formulation("scores")
    for b in range(B):
        for h in range(H):
            g = h // group
            for r0 in range(0, n_q, chunk):
                sel = np.arange(r0, min(r0 + chunk, n_q))
                s, _ = _scores(x["q"][b, h, sel], x["k"][b, g], scale, softcap, plain, pr)
                p, total, _ = _softmax_parts(s, masks.rows(sel, h), plain)
                live = total > 0
                with np.errstate(divide="ignore", invalid="ignore"):
                    P = np.where(live[:, None], p / total[:, None], 0)
                    lse = np.where(
                        live, np.max(np.where(P > 0, s, -np.inf), axis=1, initial=-np.inf), 0
                    )
                    lse = np.abs(lse + np.log(np.where(live, total, 1)))
                out = np.abs(fixed_order_matmul(P, x["v"][b, g]))
                ado = a["dout"][b, h, sel]
                dP = fixed_order_matmul(x["dout"][b, h, sel], x["v"][b, g].T)
                delta = (P * dP).sum(axis=1)
                c = (
                    abs(scale) * fixed_order_matmul(a["q"][b, h, sel], a["k"][b, g].T)
                    + lse[:, None]
                )
                R = P * (
                    fixed_order_matmul(ado, a["v"][b, g].T)
                    + (ado * out).sum(axis=1)[:, None]
                    + c * np.abs(dP - delta[:, None])
                )
                # the largest single term of each sum: R_ij |k_jc|, R_ij |q_ic|, P_ij (1 + c_ij)
                # |dout_ic| (max_j R_ij * max_c |k_jc| bounds the first, and so on)
                k_max = a["k"][b, g].max(axis=1, initial=0.0)
                q_max = a["q"][b, h, sel].max(axis=1, initial=0.0)
                do_max = ado.max(axis=1, initial=0.0)
                terms = {
                    "dq": abs(scale) * R * k_max[None, :],
                    "dk": abs(scale) * R * q_max[:, None],
                    "dv": P * (1 + c) * do_max[:, None],
                }
                for name, t in terms.items():
                    top[name] = max(top[name], float(np.max(t, initial=0.0)))
    return top
