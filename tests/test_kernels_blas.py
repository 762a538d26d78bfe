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
    controls = _blas._openblas_controls()
    if not controls:
        pytest.skip("no OpenBLAS loaded")
    original = _openblas_threads()
    for _, set_threads in controls:  # a known multi-threaded start, whatever ran before
        set_threads(2)
    seen: dict[str, list[int]] = {}

    def probe(tag: str) -> None:
        with _blas.single_threaded_blas():
            seen[tag] = _openblas_threads()

    try:
        probe("main")
        for tag in ("thread 1", "thread 2"):
            worker = threading.Thread(target=probe, args=(tag,))
            worker.start()
            worker.join()
        after = _openblas_threads()
    finally:
        for (_, set_threads), n in zip(controls, original, strict=True):
            set_threads(n)
    assert seen == {tag: [1] * len(controls) for tag in ("main", "thread 1", "thread 2")}
    assert after == [2] * len(controls)  # restored afterwards
