"""sparse_ref.bench as a package: every public name re-exported, its example, the deprecated
aliases sparse_ref.benchmarking and sparse_ref.bench_scale."""

from __future__ import annotations

import doctest
import importlib
import sys

import pytest

from sparse_ref import bench


def test_every_public_name_is_there():
    assert all(hasattr(bench, name) for name in bench.__all__)


def test_package_example():
    assert doctest.testmod(bench).failed == 0


@pytest.mark.parametrize(
    ("alias", "target"),
    [
        ("sparse_ref.benchmarking", "sparse_ref.bench"),
        ("sparse_ref.bench_scale", "sparse_ref.bench.scale"),
    ],
)
def test_old_module_names_warn_and_re_export(monkeypatch, alias, target):
    monkeypatch.delitem(sys.modules, alias, raising=False)
    with pytest.warns(DeprecationWarning, match=target.replace(".", r"\.")):
        old = importlib.import_module(alias)
    new = importlib.import_module(target)
    assert old.__all__ == new.__all__
    assert all(getattr(old, name) is getattr(new, name) for name in new.__all__)
