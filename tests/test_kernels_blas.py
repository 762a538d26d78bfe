"""kernels/_blas.py: BLAS stays on one thread inside the kernels, whichever thread calls them."""

from __future__ import annotations

import threading

import pytest

from sparse_ref.kernels import _blas


def _openblas_threads() -> list[int]:
    return [get() for get, _ in _blas._openblas_controls()]


def test_single_threaded_blas_holds_in_every_calling_thread():
    """threadpoolctl ignores a second thread's OpenBLAS limit while the first still holds its
    claim; a kernel called from a JAX callback or a worker thread then ran multi-threaded GEMMs
    inside its parallel region."""
    before = _openblas_threads()
    if not before or max(before) <= 1:
        pytest.skip("no multi-threaded OpenBLAS loaded: nothing to limit")
    seen: dict[str, list[int]] = {}

    def probe(tag: str) -> None:
        with _blas.single_threaded_blas():
            seen[tag] = _openblas_threads()

    probe("main")
    for tag in ("thread 1", "thread 2"):
        worker = threading.Thread(target=probe, args=(tag,))
        worker.start()
        worker.join()
    assert seen == {tag: [1] * len(before) for tag in ("main", "thread 1", "thread 2")}
    assert _openblas_threads() == before  # restored afterwards
