"""Read-only views of kernel inputs: one Numba type per dtype, whatever the caller passed.

Numba compiles one specialization per argument type, and a writeable and a read-only array are
different types. Once several specializations exist, its dispatcher may run a call on any
compatible one, so which machine code runs would depend on the calls made before; with
reassociation allowed, two specializations may vectorise a sum differently and differ in the last
bits (seen once: a shared pattern and the same pattern stacked per head disagreed after the test
process had compiled read-only variants). The kernels only read their inputs, so every caller
passes them read-only: one type, one compilation, the same bits whatever ran before.
"""

from __future__ import annotations

import numpy as np

__all__ = ["readonly"]


def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (no copy)."""
    view = a.view()
    view.flags.writeable = False
    return view
