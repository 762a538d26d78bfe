"""sparse_ref.bench.process: thread counts set for a stretch of code and restored after it."""

from __future__ import annotations

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
