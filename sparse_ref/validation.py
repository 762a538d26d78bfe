"""Input checks run once at the public boundary (``attention``, ``attention_backward``, the oracle).

Everything that enters a jitted kernel has passed through :func:`prepare`: ranks and shapes agree,
dtypes are supported floats of one kind, values are finite unless the caller opted out, and the
pattern matches the sequence lengths and head count. Kernels trust their inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from .pattern import Pattern

__all__ = [
    "Prepared",
    "as_cpu_array",
    "prepare",
    "check_lse",
    "check_scale",
    "check_softcap",
    "compute_dtype",
]

_CPU_DTYPES = ("float64", "float32", "float16", "bfloat16")


def as_cpu_array(x: Any, name: str) -> np.ndarray:
    """NumPy view of ``x`` (ndarray, ``__dlpack__`` or ``__array__``), in native byte order."""
    if isinstance(x, np.ndarray):
        arr = x
    elif str(getattr(x, "dtype", "")) == "torch.bfloat16" and hasattr(x, "view"):
        arr = _torch_bfloat16(x, name)
    elif hasattr(x, "__dlpack__") and not hasattr(x, "__cuda_array_interface__"):
        try:
            arr = np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError) as err:
            try:  # e.g. torch.bfloat16 has no NumPy DLPack dtype; __array__ may still work
                arr = np.asarray(x)
            except Exception:
                raise TypeError(f"{name} could not be read through DLPack: {err}") from None
    elif hasattr(x, "__array__"):
        arr = np.asarray(x)
    elif hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a GPU array; pass backend='cupy' or move it to the CPU first")
    else:
        raise TypeError(
            f"{name} must be an array (NumPy, or any object with __dlpack__ or __array__), got "
            f"{type(x).__name__}"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _torch_bfloat16(x: Any, name: str) -> np.ndarray:
    """A CPU torch bfloat16 tensor as an ``ml_dtypes.bfloat16`` array (shared memory).

    DLPack has no NumPy dtype for bfloat16, so the bits travel as int16 and are viewed back.
    """
    import sys

    import ml_dtypes

    if getattr(getattr(x, "device", None), "type", "cpu") != "cpu":
        raise TypeError(f"{name} is a GPU tensor; pass backend='cupy' or move it to the CPU first")
    torch = sys.modules["torch"]  # x is a torch tensor, so torch is imported
    bits = np.from_dlpack(x.detach().view(torch.int16))
    return bits.view(ml_dtypes.bfloat16)


def compute_dtype(dtype: Any) -> type[np.floating]:
    """float64 for float64 inputs, float32 for float32/float16/bfloat16 (also the lse dtype)."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def check_scale(scale: Any, d: int) -> float:
    """``scale`` as a Python float; ``None`` gives ``1/sqrt(d)``."""
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.integer | np.floating):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_softcap(softcap: Any) -> float | None:
    """``softcap`` as a positive Python float, or ``None``."""
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, int | float | np.integer | np.floating):
        raise TypeError(
            f"softcap must be a positive real number or None, got {type(softcap).__name__}"
        )
    if not (math.isfinite(float(softcap)) and softcap > 0):
        raise ValueError(f"softcap must be a positive finite number or None, got {softcap}")
    return float(softcap)


@dataclass(frozen=True)
class Prepared:
    """Validated inputs as 4-D arrays ``(B, H, n, d)`` plus what is needed to shape the output."""

    q: Any
    k: Any
    v: Any
    rank: int
    dtype: Any
    scale: float
    softcap: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def restore(self, x: Any) -> Any:
        """Drop the leading axes added to reach 4-D (3-D for lse): back to the caller's rank."""
        drop = 4 - self.rank
        return x.reshape(x.shape[drop:]) if drop else x


def prepare(
    q: Any,
    k: Any,
    v: Any,
    pattern: Any,
    *,
    scale: Any = None,
    softcap: Any = None,
    check_finite: bool = True,
    xp: ModuleType = np,
    extra: dict[str, Any] | None = None,
) -> Prepared:
    """Validate ``q, k, v`` and ``pattern`` (DESIGN §2); raise ``TypeError``/``ValueError`` naming
    the argument. ``xp`` is the array module (NumPy, or CuPy for the GPU backend). ``extra`` holds
    more arrays shaped like q (``dout``, ``out``: name -> array) checked the same way."""
    arrays = {"q": q, "k": k, "v": v, **(extra or {})}
    if xp is np:
        arrays = {name: as_cpu_array(a, name) for name, a in arrays.items()}
    else:
        arrays = {name: xp.asarray(a) for name, a in arrays.items()}
    for name, a in arrays.items():
        if str(a.dtype) not in _CPU_DTYPES:
            raise TypeError(
                f"{name} must have a floating dtype (float64, float32, float16, bfloat16), got "
                f"{a.dtype}"
            )
    names = list(arrays)
    first = arrays["q"]
    for name in names[1:]:
        if arrays[name].dtype != first.dtype:
            raise TypeError(
                f"mixed dtypes: q is {first.dtype} but {name} is {arrays[name].dtype}; convert them "
                "to one dtype"
            )
    rank = first.ndim
    if rank not in (2, 3, 4):
        raise ValueError(f"q must be 2-D (n, d), 3-D (H, n, d) or 4-D (B, H, n, d), got {rank}-D")
    for name in names[1:]:
        if arrays[name].ndim != rank:
            raise ValueError(
                f"{name} must have the same rank as q ({rank}-D), got {arrays[name].ndim}-D"
            )
    four = {name: a.reshape((1,) * (4 - rank) + a.shape) for name, a in arrays.items()}
    qa, ka, va = four["q"], four["k"], four["v"]
    B, H, n_q, d = qa.shape
    Bk, H_kv, n_k, dk = ka.shape
    if d == 0:
        raise ValueError("q must have head dimension d >= 1, got d = 0")
    if ka.shape[0] != B or va.shape[0] != B:
        raise ValueError(f"batch sizes differ: q has {B}, k has {ka.shape[0]}, v has {va.shape[0]}")
    if dk != d:
        raise ValueError(f"k must have the head dimension of q (d = {d}), got {dk}")
    if va.shape[1] != H_kv or va.shape[2] != n_k:
        raise ValueError(
            f"v must have the heads and length of k (H_kv = {H_kv}, n_k = {n_k}), got shape {va.shape}"
        )
    if H_kv == 0 or H % H_kv:
        raise ValueError(f"q heads H = {H} must be a multiple of k/v heads H_kv = {H_kv} (GQA/MQA)")
    for name in names[3:]:
        want = (B, H, n_q, va.shape[3])
        if four[name].shape != want:
            raise ValueError(f"{name} must have shape {want[4 - rank :]}, got {arrays[name].shape}")
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a sparse_ref.Pattern, got {type(pattern).__name__}")
    if pattern.shape != (n_q, n_k):
        raise ValueError(
            f"pattern has shape {pattern.shape} but q/k give (n_q, n_k) = {(n_q, n_k)}"
        )
    if pattern.num_heads not in (1, H):
        raise ValueError(
            f"pattern has {pattern.num_heads} heads; expected 1 (shared) or H = {H} (one per query head)"
        )
    if not isinstance(check_finite, bool | np.bool_):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    if check_finite:
        for name, a in four.items():
            if a.size and not bool(xp.isfinite(a).all()):
                raise ValueError(
                    f"{name} contains NaN or Inf; pass check_finite=False to compute with IEEE semantics"
                )
    scale_value = check_scale(scale, d)
    softcap_value = check_softcap(softcap)
    _check_in_compute_dtype(scale_value, softcap_value, first.dtype)
    return Prepared(
        q=qa,
        k=ka,
        v=va,
        rank=rank,
        dtype=first.dtype,
        scale=scale_value,
        softcap=softcap_value,
        extra={name: a for name, a in four.items() if name not in ("q", "k", "v")},
    )


def _check_in_compute_dtype(scale: float, softcap: float | None, dtype: Any) -> None:
    """``scale`` and ``softcap`` are applied in the compute dtype: refuse values that become
    infinite there (``1e39`` in float32), and a softcap that rounds to 0 (the kernels would read it
    as "no softcap"), instead of returning NaN or a silently different result."""
    ct = compute_dtype(dtype)
    where = f"in {np.dtype(ct).name}, the compute dtype of {dtype} inputs"
    with np.errstate(over="ignore", under="ignore"):
        scale_ct, softcap_ct = ct(scale), ct(softcap or 0.0)
    if not np.isfinite(scale_ct):
        raise ValueError(f"scale = {scale} overflows {where}")
    if softcap is not None and not (np.isfinite(softcap_ct) and softcap_ct > 0):
        kind = "overflows" if softcap_ct else "rounds to 0"
        raise ValueError(f"softcap = {softcap} {kind} {where}")


def check_lse(lse: Any, prep: Prepared, *, check_finite: bool = True, xp: ModuleType = np) -> Any:
    """Validate a forward's ``lse`` against prepared inputs; return it as 3-D ``(B, H, n_q)``.

    ``lse`` must have q's leading shape (``q.shape[:-1]``) and the dtype :func:`attention` returns
    it in: float64 for float64 inputs, float32 otherwise. With ``check_finite`` NaN and ``+inf`` are
    rejected; ``-inf`` is allowed (it marks rows with no keys).
    """
    arr = as_cpu_array(lse, "lse") if xp is np else xp.asarray(lse)
    want_dtype = np.dtype(compute_dtype(prep.dtype))
    if arr.dtype != want_dtype:
        raise TypeError(
            f"lse must be {want_dtype} for {prep.dtype} inputs (as attention returns it), got "
            f"{arr.dtype}"
        )
    B, H, n_q = prep.q.shape[:3]
    want = (B, H, n_q)[4 - prep.rank :]
    if tuple(arr.shape) != want:
        raise ValueError(
            f"lse must have shape {want} (q's shape without d), got {tuple(arr.shape)}"
        )
    if check_finite and arr.size and bool(xp.any(xp.isnan(arr) | (arr == xp.inf))):
        raise ValueError(
            "lse contains NaN or +inf (-inf is allowed for rows with no keys); pass "
            "check_finite=False to compute with IEEE semantics"
        )
    return arr.reshape((B, H, n_q))
