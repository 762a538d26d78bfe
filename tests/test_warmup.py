"""sparse_ref.warmup: one call per kernel, made as the Numba backend makes it."""

from __future__ import annotations

import doctest

import pytest

from sparse_ref import warmup


def test_steps_cover_every_kernel_form():
    labels = [label for label, _ in warmup.steps("float32")]
    assert labels == [
        "CSR forward",
        "CSR backward",
        "BSR forward",
        "BSR backward",
        "form rule",
        "CSR forward, int64 indices",
    ]


def test_warmup_runs_every_step_and_times_it():
    assert warmup.warmup("float64") > 0


@pytest.mark.parametrize("dtype", ["float16", "int32", None])
def test_bad_dtype_is_refused_by_name(dtype):
    with pytest.raises(ValueError, match="dtype must be one of"):
        warmup.steps(dtype)


def test_module_examples():
    assert doctest.testmod(warmup).failed == 0
