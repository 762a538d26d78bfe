"""sparse_ref.bench.timing: interleaved rounds (in order or rotated), the median and its spread."""

from __future__ import annotations

import doctest
import statistics

import pytest

from sparse_ref.bench import timing
from sparse_ref.bench.timing import Timing


@pytest.fixture
def fake_clock(monkeypatch):
    """Functions named "a", "b", ... that take the given durations on a fake clock, call by call,
    and the list of calls made."""
    clock = [0.0]
    calls: list[str] = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def make(name: str, durations: list[float]):
        def call() -> None:
            clock[0] += durations[sum(c == name for c in calls)]
            calls.append(name)

        return call

    return make, calls


def test_interleaved_min_calls_in_rounds_and_keeps_each_best(fake_clock):
    make, calls = fake_clock
    a, b = make("a", [3.0, 1.0, 2.0, 3.0, 1.0, 2.0]), make("b", [5.0, 6.0, 4.0] * 2)
    assert timing.interleaved_min([a, b], repeat=3) == [1.0, 4.0]
    assert calls == ["a", "b"] * 3
    calls.clear()
    assert timing.ratio(b, a, repeat=3) == 4.0
    assert calls == ["b", "a"] * 3


def test_rotated_rounds_start_at_the_next_function_and_keep_every_time(fake_clock):
    make, calls = fake_clock
    fns = [make(name, [1.0, 2.0, 3.0, 4.0]) for name in "abc"]
    times = timing.interleaved_times(fns, repeat=4, rotate=True)
    assert calls == list("abcbcacababc")
    assert [t.samples for t in times] == [(1.0, 2.0, 3.0, 4.0)] * 3


@pytest.mark.parametrize(
    "samples", [(5.0,), (3.0, 1.0), (1.0, 9.0, 2.0, 2.5, 3.0), (4.0, 4.0, 4.0, 4.0)]
)
def test_timing_median_best_and_spread(samples):
    t = Timing(samples)
    assert t.median == statistics.median(samples) and t.best == min(samples)
    if len(samples) == 1:
        assert t.spread == 0
    else:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        assert t.spread == pytest.approx((q3 - q1) / t.median)
        assert t.spread <= (max(samples) - min(samples)) / t.median


def test_one_outlier_moves_the_spread_not_the_median():
    steady = Timing((1.0, 1.0, 1.0, 1.0, 1.0))
    noisy = Timing((1.0, 1.0, 20.0, 1.0, 1.0))
    assert noisy.median == steady.median == 1.0 and noisy.spread == steady.spread == 0


def test_warm_calls_each_function_the_given_times():
    calls: list[int] = []
    timing.warm(lambda: calls.append(0), lambda: calls.append(1), calls=2)
    assert calls == [0, 0, 1, 1]


def test_repeat_must_be_positive():
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        timing.interleaved_times([lambda: None], repeat=0)


def test_module_examples():
    assert doctest.testmod(timing).failed == 0
