"""Deprecated alias of :mod:`sparse_ref.bench` (moved after 0.1.0; kept for one release).

``from sparse_ref import benchmarking`` still works and warns; import ``sparse_ref.bench``.
"""

from __future__ import annotations

import warnings

from .bench import *  # noqa: F403
from .bench import __all__  # noqa: F401

warnings.warn(
    "sparse_ref.benchmarking moved to sparse_ref.bench; the alias will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)
