"""Warm-ups and wall-clock timing: every benchmark figure of the package is measured here.

:func:`warm` calls every function once before anything is timed (Numba compiles the kernel or
loads it from its on-disk cache, the allocator's pool reaches its steady size, torch initialises
lazily, FlexAttention's ``torch.compile`` runs; :func:`first_call_s` times that first call so a
compile time can be reported apart). A figure is the best wall time (``time.perf_counter``,
seconds) of a few calls; functions that are compared are called in turn
(:func:`interleaved_min`), so a change of load on a shared machine hits them alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["warm", "first_call_s", "interleaved_min", "best_time", "ratio"]


def warm(*fns: Callable[[], Any]) -> None:
    """Call each function once: Numba compilation (or its cache load), first-touch memory and lazy
    initialisation (torch, ``torch.compile``) happen here, outside the measurements."""
    for fn in fns:
        fn()


def first_call_s(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn``, meant for its first (a warm-up that compiles): the compile
    time is that minus the steady time, e.g. ``first_call_s(f) - best_time(f)``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_min(fns: Sequence[Callable[[], Any]], repeat: int = 5) -> list[float]:
    """Best wall time in seconds of each function over ``repeat`` rounds; each round calls every
    function once, in order, so that a load change hits all of them alike. Warm them first
    (:func:`warm`): nothing here is discarded."""
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def best_time(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Best wall time of ``fn`` in seconds over ``repeat`` calls."""
    return interleaved_min([fn], repeat)[0]


def ratio(slow: Callable[[], Any], fast: Callable[[], Any], repeat: int = 5) -> float:
    """``time(slow) / time(fast)``, both best of ``repeat``, measured interleaved."""
    t_slow, t_fast = interleaved_min([slow, fast], repeat)
    return t_slow / t_fast
