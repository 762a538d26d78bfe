"""Deprecated alias of :mod:`sparse_ref.bench.scale` (moved after 0.1.0; kept for one release).
``python -m sparse_ref.bench_scale`` is now ``sparse-ref bench scale``.
"""

from __future__ import annotations

import warnings

from .bench.scale import *  # noqa: F403
from .bench.scale import __all__, _reset_peak, _status_kib  # noqa: F401

warnings.warn(
    "sparse_ref.bench_scale moved to sparse_ref.bench.scale; the alias will be removed in the next "
    "release",
    DeprecationWarning,
    stacklevel=2,
)
