"""The differentiable PyTorch op behind :func:`sparse_ref.interop.torch.attention` (imports torch).

Two ``torch.library.custom_op``\\ s, each with a fake (meta) implementation, joined by
``torch.library.register_autograd``:

* ``sparse_ref::attention(q, k, v, key, scale, softcap) -> (out, lse)``
* ``sparse_ref::attention_backward(q, k, v, out, lse, dout, dlse, key, scale, softcap)
  -> (dq, dk, dv)``

so eager autograd sees an ordinary differentiable function and ``torch.compile`` (also with
``fullgraph=True``) sees one opaque node per call instead of breaking the graph. A pattern is not a
tensor: the ops take a string ``key`` (the pattern's fingerprint, see :func:`register`) and read
the pattern from a small registry.

Where the work runs: CPU tensors go through :func:`sparse_ref.attention` and
:func:`sparse_ref.attention_backward` (the Numba kernels; float16/bfloat16 converted to float32
torch-side and the results back), CUDA tensors through the same functions with
``backend="cupy"`` on CuPy views made by DLPack (zero-copy), on torch's current stream; bfloat16
CUDA tensors are computed in float32 there too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .. import api
from ..pattern import Pattern
from ..validation import check_scale, check_softcap
from ._lse_grad import add_lse_gradient

__all__ = ["attention", "register"]

#: patterns by key, most recently used last; a key names its pattern for ``_REGISTRY_SIZE`` more
#: registrations (a forward and its backward are far closer than that)
_REGISTRY: OrderedDict[str, Pattern] = OrderedDict()
_REGISTRY_SIZE = 256
_LOCK = threading.Lock()

_PER_BATCH = "per-batch:"
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _key(pattern: Pattern) -> str:
    # the form is part of the key: the same structure with a block form runs the BSR kernels
    block = "" if pattern.block is None else ":block={}x{}".format(*pattern.block)
    return pattern.fingerprint() + block


@torch._dynamo.assume_constant_result
def _register_one(pattern: Pattern) -> str:
    """Put ``pattern`` in the registry; its key. Under ``torch.compile`` this runs once while
    tracing and the key becomes a constant of the graph (Dynamo guards on the pattern object, so
    another pattern retraces)."""
    key = _key(pattern)
    with _LOCK:
        _REGISTRY[key] = pattern
        _REGISTRY.move_to_end(key)
        while len(_REGISTRY) > _REGISTRY_SIZE:
            _REGISTRY.popitem(last=False)
    return key


def register(pattern: Pattern | Sequence[Pattern]) -> str:
    """The key under which the ops find ``pattern`` (a Pattern, or a sequence of them, one per
    batch element: their keys joined after ``per-batch:``)."""
    if isinstance(pattern, Pattern):
        return _register_one(pattern)
    if not isinstance(pattern, list | tuple):
        raise TypeError(
            f"pattern must be a sparse_ref.Pattern, got {type(pattern).__name__} (or a list/tuple "
            "of patterns, one per batch element)"
        )
    for b, p in enumerate(pattern):
        if not isinstance(p, Pattern):
            raise TypeError(f"pattern[{b}] must be a sparse_ref.Pattern, got {type(p).__name__}")
    return _PER_BATCH + ",".join([_register_one(p) for p in pattern])


def _lookup(key: str) -> Pattern | list[Pattern]:
    if key.startswith(_PER_BATCH):
        return [_lookup_one(k) for k in key[len(_PER_BATCH) :].split(",")]
    return _lookup_one(key)


def _lookup_one(key: str) -> Pattern:
    with _LOCK:
        entry = _REGISTRY.get(key)
        if entry is not None:
            _REGISTRY.move_to_end(key)
    if entry is None:
        raise RuntimeError(
            f"no pattern is registered under {key[:16]}...: more than {_REGISTRY_SIZE} other "
            "patterns were used since this one; call sparse_ref.interop.torch.attention with it "
            "again (a compiled function: recompile it)"
        )
    return entry


# ---------------------------------------------------------------------------------------- arrays
def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64/float32 as they are; float16 stays float16 on CUDA (the tensor-core kernels),
    everything else 16-bit is computed in float32."""
    if t.dtype in (torch.float64, torch.float32):
        return t.dtype
    if t.dtype == torch.float16 and t.device.type == "cuda":
        return t.dtype
    return torch.float32


def _backend(t: torch.Tensor) -> str:
    return "cupy" if t.device.type == "cuda" else "numba"


def _export(t: torch.Tensor, dtype: torch.dtype) -> Any:
    """A NumPy (CPU) or CuPy (CUDA, DLPack) view of ``t`` in ``dtype`` (a copy only to convert)."""
    t = t.detach().to(dtype)
    if t.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(t.contiguous())
    return t.numpy()


def _import(a: Any, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``a`` (NumPy or CuPy) as a tensor on ``like``'s device in ``dtype`` (default: like's)."""
    t = (
        torch.from_numpy(np.ascontiguousarray(a))
        if isinstance(a, np.ndarray)
        else torch.from_dlpack(a)
    )
    return t.to(like.dtype if dtype is None else dtype)


@contextmanager
def _on_torch_stream(t: torch.Tensor) -> Iterator[None]:
    """CuPy work for a CUDA tensor runs on its device and torch's current stream there, so it is
    ordered with the surrounding torch ops without a synchronisation."""
    if t.device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(t.device)
    with cupy.cuda.Device(t.device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        yield


# --------------------------------------------------------------------------------------- the ops
def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key: str,
    scale: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    pattern = _lookup(key)
    ct = _compute_dtype(q)
    with _on_torch_stream(q):
        qa, ka, va = (_export(x, ct) for x in (q, k, v))
        out, lse = api.attention(
            qa, ka, va, pattern, scale=scale, softcap=softcap, backend=_backend(q), return_lse=True
        )
        return _import(out, q), _import(lse, q, _lse_dtype(q.dtype))


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    key: str,
    scale: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pattern = _lookup(key)
    ct = _compute_dtype(q)
    backend = _backend(q)
    with _on_torch_stream(q):
        qa, ka, va, oa, ga = (_export(x, ct) for x in (q, k, v, out, dout))
        la = _export(lse, _lse_dtype(ct))
        dq, dk, dv = api.attention_backward(
            qa, ka, va, pattern, ga, out=oa, lse=la, scale=scale, softcap=softcap, backend=backend
        )
        if dlse is not None and bool((dlse != 0).any()):
            g = _export(dlse, _lse_dtype(ct))
            dq, dk = add_lse_gradient(
                qa, ka, pattern, g, dq, dk, scale=scale, softcap=softcap, backend=backend
            )
        return _import(dq, q), _import(dk, k), _import(dv, v)


_fwd_op = torch.library.custom_op(
    "sparse_ref::attention",
    _forward,
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, str key, float scale, float? softcap) -> (Tensor, Tensor)",
)
_bwd_op = torch.library.custom_op(
    "sparse_ref::attention_backward",
    _backward,
    mutates_args=(),
    schema=(
        "(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, Tensor? dlse, "
        "str key, float scale, float? softcap) -> (Tensor, Tensor, Tensor)"
    ),
)


@_fwd_op.register_fake
def _forward_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: str, scale: float, softcap: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    return out, q.new_empty(q.shape[:-1], dtype=_lse_dtype(q.dtype))


@_bwd_op.register_fake
def _backward_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    q, k, v, key, scale, softcap = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.key, ctx.scale, ctx.softcap = key, scale, softcap
    # an output that takes no part in the loss (usually lse) gets None, not a tensor of zeros
    # that the backward would have to scan
    ctx.set_materialize_grads(False)


def _autograd_backward(ctx: Any, dout: Any, dlse: Any) -> tuple[Any, ...]:
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = _bwd_op(q, k, v, out, lse, dout, dlse, ctx.key, ctx.scale, ctx.softcap)
    return dq, dk, dv, None, None, None


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------- the wrapper
def _check_tensors(q: Any, k: Any, v: Any) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float64, float32, float16 or bfloat16, got {t.dtype}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on the CPU or a CUDA device, got {t.device}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"mixed dtypes: q {q.dtype}, k {k.dtype}, v {v.dtype}; use one dtype")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.ndim == 0:
        raise ValueError("q must be 2-D (n, d), 3-D (H, n, d) or 4-D (B, H, n, d), got 0-D")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | Sequence[Pattern],
    *,
    scale: float | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
) -> Any:
    """See :func:`sparse_ref.interop.torch.attention`."""
    _check_tensors(q, k, v)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    scale_value = check_scale(scale, int(q.shape[-1]))
    softcap_value = check_softcap(softcap)
    out, lse = _fwd_op(q, k, v, register(pattern), scale_value, softcap_value)
    return (out, lse) if return_lse else out
