"""Keep BLAS single-threaded while a parallel Numba kernel calls it from its own threads.

The BSR kernel multiplies small tiles with ``np.dot``, which Numba lowers to scipy's BLAS ``gemm``.
Each Numba thread already owns a block row; if BLAS also spreads every small ``gemm`` over its own
thread pool, the two pools fight over the cores (measured here: 10 s instead of 0.8 s for one
forward). :func:`single_threaded_blas` sets every loaded BLAS to one thread for the duration of a
call and restores the previous setting afterwards, like ``threadpoolctl.threadpool_limits(1)``
(used when installed). Without threadpoolctl it finds OpenBLAS builds (including the
``scipy_openblas`` of NumPy/SciPy wheels) among the loaded libraries and calls their
``*openblas_set_num_threads`` directly. Concurrent callers share one limit (reference counted).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

__all__ = ["single_threaded_blas"]

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"depth": 0, "restore": None}


@cache
def _openblas_controls() -> tuple[tuple[Any, Any], ...]:
    """``(get, set)`` ctypes functions of every loaded OpenBLAS (Linux: /proc/self/maps)."""
    import scipy.linalg.cython_blas  # noqa: F401  (Numba's np.dot calls this BLAS: load it first)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return ()
    controls = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            for suffix in ("", "64_"):
                getter = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                setter = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if getter is not None and setter is not None:
                    getter.restype = ctypes.c_int
                    setter.argtypes = [ctypes.c_int]
                    controls.append((getter, setter))
                    break
            else:
                continue
            break
    return tuple(controls)


def _limit_to_one() -> Any:
    """Set every BLAS to one thread; return a callable that restores the previous setting."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        limits = threadpool_limits(1, user_api="blas")
        return limits.restore_original_limits
    controls = _openblas_controls()
    before = [get() for get, _ in controls]
    for _, set_ in controls:
        set_(1)

    def restore() -> None:
        for (_, set_), n in zip(controls, before, strict=True):
            set_(n)

    return restore


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Context manager: BLAS runs on the calling thread only inside the ``with`` block."""
    with _LOCK:
        if _STATE["depth"] == 0:
            _STATE["restore"] = _limit_to_one()
        _STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0:
                _STATE["restore"]()
                _STATE["restore"] = None
