"""kernels/_blas_threads.py: BLAS stays on one thread inside the kernels, whichever thread calls them, and
gets its thread count back afterwards, however the callers' threads overlap."""

from __future__ import annotations

import importlib
import threading

import pytest

from sparse_ref.kernels import _blas, _blas_threads

# golden.generate's own BLAS limit: dask workers of one process run compute_case in threads
_golden = importlib.import_module("sparse_ref.golden.generate")
LIMITS = {"kernels": _blas.single_threaded_blas, "golden": _golden._single_threaded_blas}


def _openblas_threads() -> list[int]:
    return [get() for get, _ in _blas_threads._openblas_controls()]


@pytest.fixture
def two_blas_threads():
    """Every loaded OpenBLAS on two threads (whatever OPENBLAS_NUM_THREADS says), restored after."""
    controls = _blas_threads._openblas_controls()
    if not controls:
        pytest.skip("no OpenBLAS loaded")
    original = _openblas_threads()
    for _, set_threads in controls:
        set_threads(2)
    yield
    for (_, set_threads), n in zip(controls, original, strict=True):
        set_threads(n)


def test_single_threaded_blas_holds_in_every_calling_thread(two_blas_threads):
    """threadpoolctl ignores a second thread's OpenBLAS limit while the first still holds its
    claim; a kernel called from a JAX callback or a worker thread then ran multi-threaded GEMMs
    inside its parallel region."""
    seen: dict[str, list[int]] = {}

    def probe(tag: str) -> None:
        with _blas.single_threaded_blas():
            seen[tag] = _openblas_threads()

    probe("main")
    for tag in ("thread 1", "thread 2"):
        worker = threading.Thread(target=probe, args=(tag,))
        worker.start()
        worker.join()
    assert seen == {tag: [1] * len(seen["main"]) for tag in ("main", "thread 1", "thread 2")}
    assert _openblas_threads() == [2] * len(seen["main"])  # restored afterwards


@pytest.mark.parametrize("limit", list(LIMITS.values()), ids=list(LIMITS))
def test_overlapping_callers_restore_the_thread_count(two_blas_threads, limit):
    """Thread A takes the limit, B enters too, A leaves (and lives on), B leaves last: one thread
    for both while either is inside, two threads again after. threadpoolctl's
    ``threadpool_limits`` per caller left one thread for the rest of the process (B saved A's
    limit as its 'original'), and a restore from B was ignored while A held the OpenBLAS claim:
    golden.generate on a threaded dask cluster left the caller's BLAS on one thread."""
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))
    seen: dict[str, list[int]] = {}

    def thread_a() -> None:
        with limit():
            a_in.set()
            b_in.wait()
            seen["a"] = _openblas_threads()
        a_out.set()
        b_out.wait()  # alive until B has left

    def thread_b() -> None:
        a_in.wait()
        with limit():
            b_in.set()
            a_out.wait()
            seen["b alone"] = _openblas_threads()
        b_out.set()

    workers = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    ones = [1] * len(_openblas_threads())
    assert seen == {"a": ones, "b alone": ones}
    assert _openblas_threads() == [2] * len(ones)
