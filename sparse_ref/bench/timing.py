"""Warm-ups and wall-clock timing: every benchmark figure of the package is measured here.

:func:`warm` calls every function once before anything is timed (Numba compiles the kernel or
loads it from its on-disk cache, the allocator's pool reaches its steady size, torch initialises
lazily, FlexAttention's ``torch.compile`` runs; :func:`first_call_s` times that first call so a
compile time can be reported apart). Functions that are compared are called in turn
(:func:`interleaved_times`), so a change of load on a shared machine hits them alike; a figure is
the best (:func:`interleaved_min`, the asv suites) or the median with its spread
(:class:`Timing`, ``sparse-ref bench``) of the wall times (``time.perf_counter``, seconds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = [
    "Timing",
    "warm",
    "first_call_s",
    "interleaved_times",
    "interleaved_min",
    "best_time",
    "ratio",
]


class Timing(NamedTuple):
    """Wall times of one function in seconds, in the order they were measured.

    Example:
        >>> t = Timing((0.010, 0.012, 0.011, 0.030, 0.011))
        >>> t.median, t.best, round(t.spread, 3)
        (0.011, 0.01, 0.091)
    """

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median time: the figure ``sparse-ref bench`` reports."""
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        """The shortest time."""
        return min(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range over the median (0.05: the middle half of the times lies within a
        band 5% of the median wide); 0 for fewer than two samples."""
        if len(self.samples) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return (q3 - q1) / self.median


def warm(*fns: Callable[[], Any], calls: int = 1) -> None:
    """Call each function ``calls`` times: Numba compilation (or its cache load), first-touch memory
    and lazy initialisation (torch, ``torch.compile``) happen here, outside the measurements."""
    for fn in fns:
        for _ in range(calls):
            fn()


def first_call_s(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn``, meant for its first (a warm-up that compiles): the compile
    time is that minus the steady time, e.g. ``first_call_s(f) - best_time(f)``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_times(
    fns: Sequence[Callable[[], Any]], repeat: int = 5, *, rotate: bool = False
) -> list[Timing]:
    """The wall times of each function over ``repeat`` rounds; each round calls every function
    once, so that a load change hits all of them alike. In order, or with ``rotate`` starting
    round ``r`` at function ``r % len(fns)``, so that no function always runs right after the
    same other one (a peer's threads still winding down, say). Warm them first (:func:`warm`):
    nothing here is discarded."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeat):
        start = r % len(fns) if rotate and fns else 0
        for i in [*range(start, len(fns)), *range(start)]:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [Timing(tuple(t)) for t in times]


def interleaved_min(fns: Sequence[Callable[[], Any]], repeat: int = 5) -> list[float]:
    """Best wall time in seconds of each function over ``repeat`` rounds of
    :func:`interleaved_times` (in order)."""
    return [t.best for t in interleaved_times(fns, repeat)] if fns else []


def best_time(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Best wall time of ``fn`` in seconds over ``repeat`` calls."""
    return interleaved_min([fn], repeat)[0]


def ratio(slow: Callable[[], Any], fast: Callable[[], Any], repeat: int = 5) -> float:
    """``time(slow) / time(fast)``, both best of ``repeat``, measured interleaved."""
    t_slow, t_fast = interleaved_min([slow, fast], repeat)
    return t_slow / t_fast
