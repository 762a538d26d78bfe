"""sparse_ref.bench.flops: the one useful-flops count (DESIGN §12), used by the benchmarks, the
analysis tables and the CuPy backend."""

from __future__ import annotations

import doctest
import importlib.util
import sys

import numpy as np
import pytest

from sparse_ref import analysis, bench, patterns
from sparse_ref.bench import flops
from sparse_ref.bench.flops import useful_flops


@pytest.mark.parametrize(("nnz", "d", "dv"), [(1000, 64, None), (7, 3, 5), (0, 8, None)])
def test_forward_and_backward_products(nnz, d, dv):
    e = d if dv is None else dv
    assert useful_flops(nnz, d, dv) == 2 * nnz * d + 2 * nnz * e  # QK^T and PV
    # dP = dO V^T and dV = P^T dO (dv), dQ = dS K and dK = dS^T Q (d); S is not recomputed
    assert useful_flops(nnz, d, dv, backward=True) == 4 * nnz * d + 4 * nnz * e
    assert useful_flops(nnz, d, dv, backward=True) == 2 * useful_flops(nnz, d, dv)


def test_numpy_integers_and_python_ints_do_not_overflow():
    big = np.int64(2**40)
    assert useful_flops(big, 128) == 4 * 2**40 * 128
    assert isinstance(useful_flops(big, 128), int)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((10, 4, True), {}, TypeError, "pass backward=True"),  # the old positional backward
        ((1.5, 4), {}, TypeError, "nnz must be an int"),
        ((10, "4"), {}, TypeError, "d must be an int"),
        ((-1, 4), {}, ValueError, "nnz must be >= 0"),
        ((10, 0), {}, ValueError, "d must be >= 1"),
        ((10, 4, 0), {}, ValueError, "dv must be >= 1"),
    ],
)
def test_bad_arguments_are_named(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        useful_flops(*args, **kwargs)


def test_every_user_counts_the_same():
    p = patterns.causal_sliding_window(300, 17)
    c = analysis.cost(p, d=32, d_v=16)
    assert c.flops == useful_flops(p.nnz, 32, 16)
    assert c.backward_flops == useful_flops(p.nnz, 32, 16, backward=True)
    case = bench.make_case("causal_window_16", 64, 8, backward=True)
    assert case.flops == useful_flops(case.pattern.nnz, 8, backward=True)


def test_runs_without_numpy_numba_or_torch(monkeypatch):
    # the CuPy backend imports it on GPU machines without Numba: load the file on its own with
    # the heavy packages made unimportable
    for name in ("numpy", "numba", "torch", "scipy", "sparse_ref"):
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("_flops_alone", flops.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.useful_flops(10, 4, backward=True) == 320


def test_module_examples():
    assert doctest.testmod(flops).failed == 0
