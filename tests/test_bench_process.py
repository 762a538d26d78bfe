"""sparse_ref.bench.process: thread counts set for a stretch of code and restored after it."""

from __future__ import annotations

import os
import sys

import numba
import pytest

from sparse_ref.bench import process


def test_thread_limit_restores_threads():
    before = numba.get_num_threads()
    with process.thread_limit(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_import_torch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    with pytest.raises(process.PeerUnavailable, match=r"pip install -e '\.\[torch\]'"):
        process.import_torch()
    assert issubclass(process.PeerUnavailable, NotImplementedError)  # asv: "skipped"


def test_passive_openmp_respects_the_user_and_loaded_runtimes(monkeypatch):
    monkeypatch.setattr(process, "_openmp_loaded", lambda: False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert process.passive_openmp() == "PASSIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert process.passive_openmp() == "ACTIVE"  # the user's choice stays
    monkeypatch.setattr(process, "_openmp_loaded", lambda: True)
    assert process.passive_openmp() is None  # too late: a runtime keeps its policy
