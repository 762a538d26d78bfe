"""sparse_ref.bench.peaks: the GEMM and the triad as runners, and their best-of figures."""

from __future__ import annotations

import numpy as np

from sparse_ref.bench import peaks


def test_runners_do_the_work_they_count():
    gemm, flops = peaks.gemm_runner(64)
    assert flops == 2 * 64**3
    c = gemm()
    assert c.shape == (64, 64) and c.dtype == np.float32
    triad, nbytes = peaks.triad_runner(1 << 10)
    assert nbytes == 12 * (1 << 10)
    triad()


def test_peaks_measure_something():
    assert peaks.gemm_gflops(n=128, repeat=1) > 0
    assert peaks.triad_gbytes(size=1 << 12, repeat=1) > 0
