"""BLAS on one thread for a stretch of code: :func:`single_threaded_blas` (no Numba needed).

The kernels run their GEMMs inside parallel Numba regions where each thread already owns its
tasks; if BLAS also spreads every small ``gemm`` over its own thread pool, the two pools fight
over the cores (measured here: 10 s instead of 0.8 s for one forward). Golden generation needs a
BLAS on one thread too, for other reasons (OpenBLAS rounds differently with another thread count)
and without the kernels, hence a module apart from :mod:`._blas`.

:func:`single_threaded_blas` sets every loaded BLAS to one thread for the duration of a call and
restores the previous setting afterwards, through threadpoolctl when installed (one
``ThreadpoolController`` kept for the process). Without threadpoolctl it finds OpenBLAS builds
(including the ``scipy_openblas`` of NumPy/SciPy wheels) among the loaded libraries and calls their
``*openblas_set_num_threads`` directly. Concurrent callers, in any threads, share one limit
(reference counted): the first in sets it, the last out restores it.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import scipy.linalg.cython_blas  # noqa: F401  (the BLAS the kernels call: load it first)

__all__ = ["single_threaded_blas"]

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"depth": 0, "restore": None}


@cache
def _openblas_controls() -> tuple[tuple[Any, Any], ...]:
    """``(get, set)`` ctypes functions of every loaded OpenBLAS (Linux: /proc/self/maps)."""
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


@cache
def _threadpool_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, built once (None without threadpoolctl).

    Building it walks the loaded libraries (about 1.2 ms here, paid by every
    ``threadpool_limits`` call); the BLAS that matters, scipy's, is loaded by this module's
    imports, before the first build."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _release_openblas_control() -> None:
    """Let the calling thread set OpenBLAS's process-wide thread count.

    threadpoolctl (>= 3.6) lets only the first thread that set a pthreads-OpenBLAS limit change it
    again, until that thread clears its claim, and silently ignores every other thread; a
    ``limit()`` outside a ``with`` block never clears it. So kernels called from a second thread (a
    JAX callback, a torch worker) ran every GEMM of their parallel regions on all cores, and the
    last of two overlapping callers, restoring from another thread than the one that limited, left
    BLAS on one thread for the rest of the process. This module's own lock serialises its limits,
    so the claim is released before each limit and each restore.
    """
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # threadpoolctl < 3.6 has no per-thread claim
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def _limit_to_one() -> Any:
    """Set every BLAS to one thread; return a callable that restores the previous setting."""
    controller = _threadpool_controller()
    if controller is not None:
        _release_openblas_control()
        limiter = controller.limit(limits=1, user_api="blas")

        def restore_limits() -> None:
            _release_openblas_control()  # the thread that limited may be another, still alive
            limiter.restore_original_limits()
            _release_openblas_control()

        return restore_limits
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
    """Context manager: BLAS runs on the calling thread only inside the ``with`` block (and in
    every other thread's while any thread is inside one)."""
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
