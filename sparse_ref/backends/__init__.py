"""Backends: one dispatch table used by ``attention()``.

Each backend module exposes ``forward(q, k, v, pattern, scale, softcap) -> (out, lse)`` over
validated 4-D arrays (q ``(B, H, n_q, d)``, k/v ``(B, H_kv, n_k, d|d_v)``, one dtype). ``out`` has
q's dtype; ``lse`` is float64 for float64 inputs and float32 otherwise.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["BACKENDS", "get_backend"]

#: backend name -> module implementing it (imported on first use, so CuPy stays optional)
BACKENDS = {
    "numba": "sparse_ref.backends.numba",
    "oracle": "sparse_ref.backends.oracle",
    "cupy": "sparse_ref.backends.cupy",
}


def get_backend(name: str) -> ModuleType:
    """The backend module called ``name``; ``ValueError`` listing the choices if unknown."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)} or 'auto', got {name!r}")
    return importlib.import_module(BACKENDS[name])
