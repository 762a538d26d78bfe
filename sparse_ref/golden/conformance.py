"""Conformance: the peers a user already has, checked against a golden suite in every dtype.

Each peer is a ``forward_backward(q, k, v, pattern, dout, *, scale, softcap) -> (out, lse, dq,
dk, dv)`` adapter for :func:`sparse_ref.golden.check` (``lse`` or the gradients ``None`` when the
peer does not give them; they are then not checked). An adapter raises ``NotImplementedError``
for a case its peer cannot express, which the matrix counts as unsupported:

- ``sdpa`` / ``sdpa-math``: ``torch.nn.functional.scaled_dot_product_attention`` with its default
  backend choice, or the MATH backend only. ``causal`` patterns go through SDPA's own arguments
  (``is_causal=True`` for top-left, ``causal_lower_right`` for bottom-right alignment); every
  other pattern is a boolean ``attn_mask`` (per head where the pattern has several heads). GQA
  repeats k and v per group (autograd sums the gradients back). SDPA returns no lse and has no
  softcap (unsupported). Rows with no allowed key: torch 2.13 returns out = 0 and zero gradients
  on every CPU backend, as sparse-ref defines them.
- ``flex`` / ``flex-compiled``: FlexAttention (eager, or under ``torch.compile``) with a
  ``mask_mod`` reading the pattern's dense mask, softcap as a ``score_mod``, ``enable_gqa``, and
  ``return_lse``. On CPU FlexAttention has no backward (torch says so), so only out and lse are
  checked there; compiling on CPU takes seconds per shape, so ``flex-compiled`` is opt-in.
- ``numba``: sparse-ref's own CPU kernels (``sparse_ref.attention``/``attention_backward``).
- ``cupy``: sparse-ref's own CuPy kernels (``sparse_ref.backends.cupy``) on a GPU, through the
  backend's entry points so that no numba is needed.

Per-batch cases (family ``batch``) hand each adapter a list of ``B`` patterns: the torch adapters
build a ``(B, ., n_q, n_k)`` mask, the CuPy one runs each batch element in turn.

:func:`run` checks the chosen peers in the chosen dtypes and returns a :class:`Matrix`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..pattern import Pattern
from .check import Report, check

__all__ = ["Peer", "Matrix", "PEERS", "available_peers", "make_peer", "run"]

#: Every peer this module knows, in matrix order.
PEERS = ("sdpa", "sdpa-math", "flex", "flex-compiled", "numba", "cupy")
_DEFAULT_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Peer:
    """A named ``forward_backward`` adapter and a one-line description."""

    name: str
    forward_backward: Callable[..., Any]
    description: str


# ------------------------------------------------------------------------------------ torch
def _torch() -> Any:
    import torch

    return torch


def _to_torch(x: np.ndarray, device: str) -> Any:
    """A NumPy array (``ml_dtypes.bfloat16`` included) as a torch tensor on ``device``."""
    torch = _torch()
    arr = np.ascontiguousarray(x)
    if arr.dtype.name == "bfloat16":
        t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(arr)
    return t.to(device)


def _to_numpy(t: Any) -> np.ndarray | None:
    """A torch tensor as NumPy; 16-bit floats widen to float32 exactly."""
    if t is None:
        return None
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def _dense_mask(pattern: Pattern | list[Pattern], device: str) -> Any:
    """The pattern's mask as a torch bool tensor ``(1, 1 or H, n_q, n_k)``; for per-batch
    patterns ``(B, 1 or H, n_q, n_k)``."""
    elements = pattern if isinstance(pattern, list) else [pattern]
    dense = [p.to_dense(force=True).reshape((-1, *p.shape)) for p in elements]
    heads = max(m.shape[0] for m in dense)
    stacked = np.stack([np.broadcast_to(m, (heads, *m.shape[1:])) for m in dense])
    return _to_torch(stacked, device)


def _grads_of(out: Any, dout: np.ndarray | None, inputs: tuple[Any, ...], device: str) -> list[Any]:
    if dout is None:
        return [None, None, None]
    out.backward(_to_torch(dout, device))
    return [_to_numpy(t.grad) for t in inputs]


def _leaves(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, grad: bool, device: str
) -> tuple[Any, ...]:
    return tuple(_to_torch(x, device).requires_grad_(grad) for x in (q, k, v))


def _sdpa(math_only: bool, device: str) -> Callable[..., Any]:
    torch = _torch()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    def forward_backward(
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        pattern: Pattern,
        dout: np.ndarray | None,
        *,
        scale: float,
        softcap: float | None,
    ) -> tuple[Any, ...]:
        if softcap is not None:
            raise NotImplementedError("SDPA has no softcap")
        tq, tk, tv = _leaves(q, k, v, dout is not None, device)
        group = q.shape[1] // k.shape[1]
        kk, vv = (t.repeat_interleave(group, dim=1) if group > 1 else t for t in (tk, tv))
        kwargs: dict[str, Any] = {"scale": scale}
        family = None if isinstance(pattern, list) else pattern.family
        if family == "causal" and pattern.params.get("align", "top_left") == "top_left":
            kwargs["is_causal"] = True
        elif family == "causal":
            kwargs["attn_mask"] = causal_lower_right(*pattern.shape)
        else:
            kwargs["attn_mask"] = _dense_mask(pattern, device)
        ctx = sdpa_kernel([SDPBackend.MATH]) if math_only else contextlib.nullcontext()
        with ctx:
            out = torch.nn.functional.scaled_dot_product_attention(tq, kk, vv, **kwargs)
            grads = _grads_of(out, dout, (tq, tk, tv), device)
        return (_to_numpy(out), None, *grads)

    return forward_backward


def _flex(compiled: bool, device: str) -> Callable[..., Any]:
    torch = _torch()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # torch >= 2.9 asks for the lse through return_aux=AuxRequest(lse=True); return_lse is deprecated
    aux_request: Any = getattr(torch.nn.attention.flex_attention, "AuxRequest", None)

    fn = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    no_backward = device == "cpu"  # "FlexAttention does not support backward on CPU" (torch 2.13)

    def forward_backward(
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        pattern: Pattern,
        dout: np.ndarray | None,
        *,
        scale: float,
        softcap: float | None,
    ) -> tuple[Any, ...]:
        grad = dout is not None and not no_backward
        tq, tk, tv = _leaves(q, k, v, grad, device)
        mask = _dense_mask(pattern, device)
        per_batch, per_head = mask.shape[0] > 1, mask.shape[1] > 1

        def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return mask[b if per_batch else 0, h if per_head else 0, q_idx, kv_idx]

        score_mod = None
        if softcap is not None:
            cap = float(softcap)

            def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
                return cap * torch.tanh(score / cap)

        n_q, n_k = mask.shape[2:]
        block_mask = create_block_mask(
            mask_mod,
            mask.shape[0] if per_batch else None,
            mask.shape[1] if per_head else None,
            n_q,
            n_k,
            device=device,
        )
        kwargs: dict[str, Any] = (
            {"return_aux": aux_request(lse=True)} if aux_request else {"return_lse": True}
        )
        got = fn(
            tq,
            tk,
            tv,
            score_mod=score_mod,
            block_mask=block_mask,
            scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
            **kwargs,
        )
        out, lse = (got[0], got[1].lse) if aux_request else got
        grads = _grads_of(out, dout if grad else None, (tq, tk, tv), device)
        return (_to_numpy(out), _to_numpy(lse), *grads)

    return forward_backward


# ------------------------------------------------------------------------------------ cupy
def _cupy() -> Callable[..., Any]:
    """The CuPy kernels through :mod:`sparse_ref.backends.cupy` (no numba on this path);
    bfloat16 travels as its uint16 bits, as the backend takes it."""
    import cupy as cp

    from ..backends import cupy as gpu

    def to_gpu(x: np.ndarray) -> Any:
        return cp.asarray(x.view(np.uint16) if x.dtype.name == "bfloat16" else x)

    def to_host(x: Any, bf16: bool) -> np.ndarray:
        arr = cp.asnumpy(x)
        return arr.view(np.dtype("bfloat16")) if bf16 and arr.dtype == np.uint16 else arr

    def forward_backward(
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        pattern: Pattern | list[Pattern],
        dout: np.ndarray | None,
        *,
        scale: float,
        softcap: float | None,
    ) -> tuple[Any, ...]:
        if isinstance(pattern, list):  # one batch element at a time, joined on the batch axis
            parts = [
                one(
                    q[b : b + 1],
                    k[b : b + 1],
                    v[b : b + 1],
                    p,
                    None if dout is None else dout[b : b + 1],
                    scale=scale,
                    softcap=softcap,
                )
                for b, p in enumerate(pattern)
            ]
            return tuple(
                None if col[0] is None else np.concatenate(col, axis=0) for col in zip(*parts)
            )
        return one(q, k, v, pattern, dout, scale=scale, softcap=softcap)

    def one(
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        pattern: Pattern,
        dout: np.ndarray | None,
        *,
        scale: float,
        softcap: float | None,
    ) -> tuple[Any, ...]:
        bf16 = q.dtype.name == "bfloat16"
        dtype = "bfloat16" if bf16 else None
        gq, gk, gv = (to_gpu(x) for x in (q, k, v))
        out, lse = gpu.forward(gq, gk, gv, pattern, scale, softcap, dtype=dtype)
        grads: list[Any] = [None, None, None]
        if dout is not None:
            grads = [
                to_host(g, bf16)
                for g in gpu.backward(
                    gq, gk, gv, pattern, to_gpu(dout), out, lse, scale, softcap, dtype=dtype
                )
            ]
        return (to_host(out, bf16), to_host(lse, False), *grads)

    return forward_backward


def _numba() -> Callable[..., Any]:
    from .. import attention, attention_backward

    def forward_backward(
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        pattern: Pattern,
        dout: np.ndarray | None,
        *,
        scale: float,
        softcap: float | None,
    ) -> tuple[Any, ...]:
        out, lse = attention(q, k, v, pattern, scale=scale, softcap=softcap, return_lse=True)
        if dout is None:
            return out, lse, None, None, None
        grads = attention_backward(
            q, k, v, pattern, dout, out=out, lse=lse, scale=scale, softcap=softcap
        )
        return (out, lse, *grads)

    return forward_backward


# ------------------------------------------------------------------------------------ peers
_DESCRIPTIONS = {
    "sdpa": "torch SDPA, default backend choice (boolean mask, is_causal, causal_lower_right)",
    "sdpa-math": "torch SDPA, MATH backend only",
    "flex": "FlexAttention eager (mask_mod, softcap score_mod, return_lse)",
    "flex-compiled": "FlexAttention under torch.compile",
    "numba": "sparse-ref CPU kernels (sparse_ref.attention)",
    "cupy": "sparse-ref CuPy kernels (sparse_ref.backends.cupy)",
}


def make_peer(name: str, device: str = "cpu") -> Peer:
    """The adapter for peer ``name`` on ``device`` (``"cpu"`` or ``"cuda"``); ``ImportError`` if
    its framework is missing, ``ValueError`` for an unknown name."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and name != "cupy" and not _torch().cuda.is_available():
        raise ValueError(f"peer {name!r} on device 'cuda': torch sees no CUDA GPU here")
    if name == "cupy":
        if device != "cuda":
            raise ValueError("peer 'cupy' runs on a GPU: pass device='cuda'")
        fb = _cupy()
    elif name == "numba":
        if device != "cpu":
            raise ValueError("peer 'numba' runs on the CPU: pass device='cpu'")
        fb = _numba()
    elif name.startswith("sdpa"):
        fb = _sdpa(name == "sdpa-math", device)
    else:
        fb = _flex(name == "flex-compiled", device)
    return Peer(name, fb, _DESCRIPTIONS[name])


def available_peers(device: str = "cpu") -> list[str]:
    """The default peers on ``device``: those whose framework imports (``flex-compiled`` only
    on CUDA, where compiling is the normal way to run FlexAttention)."""
    names = ["numba"] if device == "cpu" else []
    try:
        import torch  # noqa: F401

        names += ["sdpa", "sdpa-math", "flex"] + (["flex-compiled"] if device == "cuda" else [])
    except ImportError:
        pass
    if device == "cuda":
        try:
            import cupy  # noqa: F401

            names.append("cupy")
        except ImportError:
            pass
    return names


@dataclass
class Matrix:
    """Conformance results: one :class:`~sparse_ref.golden.Report` per (peer, dtype)."""

    directory: str
    device: str
    reports: dict[tuple[str, str], Report] = field(default_factory=dict)

    @property
    def peers(self) -> list[str]:
        return list(dict.fromkeys(p for p, _ in self.reports))

    @property
    def dtypes(self) -> list[str]:
        return list(dict.fromkeys(d for _, d in self.reports))

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports.values())

    @staticmethod
    def cell(report: Report) -> str:
        """``"12 passed, 3 unsupported, 1 failed (worst: case outcome ratio)"``."""
        c = report.counts()
        failed = len(report.results) - c["pass"] - c["unsupported"] - c["skipped"]
        text = f"{c['pass']} passed"
        if c["unsupported"]:
            text += f", {c['unsupported']} unsupported"
        if failed:
            worst = report.worst()
            assert worst is not None
            what = worst.outcome + (
                f" {worst.worst_ratio:.3g}x" if worst.outcome == "tolerance" else ""
            )
            text += f", {failed} failed (worst: {worst.id} {what})"
        return text

    def table(self) -> Any:
        """A rich ``Table``: peers as rows, dtypes as columns."""
        from rich.table import Table

        table = Table(title=f"golden conformance on {self.directory} ({self.device})")
        table.add_column("peer")
        for dt in self.dtypes:
            table.add_column(dt)
        for peer in self.peers:
            row = [peer]
            for dt in self.dtypes:
                report = self.reports.get((peer, dt))
                row.append("" if report is None else self.cell(report))
            table.add_row(*row)
        return table

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "device": self.device,
            "cells": [
                {
                    "peer": p,
                    "dtype": d,
                    "counts": r.counts(),
                    "summary": self.cell(r),
                    # the closest call among the passing cases: error / tolerance, at most 1
                    "worst_passing_ratio": max(
                        (x.worst_ratio for x in r.results if x.outcome == "pass"), default=0.0
                    ),
                }
                for (p, d), r in self.reports.items()
            ],
        }


def run(
    directory: str | os.PathLike[str],
    *,
    peers: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    device: str = "cpu",
    only: str | Iterable[str] | None = None,
    progress: bool = False,
    on_report: Callable[[str, str, Report], None] | None = None,
) -> Matrix:
    """Check each peer in each dtype on the suite in ``directory``.

    ``peers`` default to :func:`available_peers`; ``dtypes`` to float64, float32, float16 and
    bfloat16 (each case runs in a dtype it stores tolerances for, the others are skipped).
    """
    names = list(peers) if peers is not None else available_peers(device)
    chosen = list(dtypes) if dtypes is not None else list(_DEFAULT_DTYPES)
    matrix = Matrix(str(directory), device)
    with warnings.catch_warnings():
        # eager FlexAttention and causal_lower_right warn on every call; the matrix says enough
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.nn\.attention")
        _fill(matrix, directory, names, chosen, device, only, progress, on_report)
    return matrix


def _fill(
    matrix: Matrix,
    directory: str | os.PathLike[str],
    names: list[str],
    chosen: list[str],
    device: str,
    only: str | Iterable[str] | None,
    progress: bool,
    on_report: Callable[[str, str, Report], None] | None,
) -> None:
    for name in names:
        peer = make_peer(name, device)
        for dt in chosen:
            report = check(
                None,
                directory,
                dtype=dt,
                forward_backward=peer.forward_backward,
                only=only,
                progress=progress,
            )
            report.impl = name
            matrix.reports[(name, dt)] = report
            if on_report is not None:
                on_report(name, dt, report)
