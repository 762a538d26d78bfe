"""sparse-ref: the framework-agnostic reference for sparse attention.

Patterns (``sparse_ref.patterns``) are scipy CSR structures; ``attention`` runs Numba kernels over
them (or CuPy kernels on a GPU); ``sparse_ref.oracle`` is the exact float64 definition that every
kernel is tested against (``sparse_ref.testing``).
"""

from . import analysis, golden, oracle, patterns, testing
from .api import attention, attention_backward
from .pattern import Pattern

__all__ = [
    "Pattern",
    "analysis",
    "attention",
    "attention_backward",
    "golden",
    "oracle",
    "patterns",
    "testing",
]
__version__ = "0.1.0"
