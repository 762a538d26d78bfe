"""sparse_ref.analysis.metrics: density and cost against closed forms and the literature's
numbers."""

from __future__ import annotations

import doctest

import pytest

from sparse_ref import analysis, patterns
from sparse_ref.analysis import metrics


def test_window_256_covers_3_1_percent_of_8192():
    n, w = 8192, 256
    p = patterns.causal_sliding_window(n, w)
    nnz = n * w - w * (w - 1) // 2  # closed form: rows i < w see i + 1 keys
    assert p.nnz == nnz
    assert analysis.density(p) == pytest.approx(nnz / n**2)
    assert f"{100 * analysis.density(p):.1f}%" == "3.1%"
    # the two-sided Longformer window of w keys (w // 2 each side) covers the same 3.1%
    assert f"{100 * analysis.density(patterns.sliding_window(n, w // 2, w // 2)):.1f}%" == "3.1%"


def test_bigbird_coverage_at_8192_from_its_block_count():
    # BigBird-ITC as published: blocks of 64, 3 window blocks, first/last global, 3 random blocks
    n, b = 8192, 64
    nb = n // b
    p = patterns.bigbird(n, b)
    # global rows are full; every other block row has 3 window + 2 global + 3 random blocks, less
    # the window/global overlap of block rows 1 and nb - 2
    blocks = 2 * nb + (nb - 2) * 8 - 2
    bsr = p.to_bsr((b, b))
    assert bsr.nblocks == blocks and bsr.full.all()
    assert analysis.density(p) == pytest.approx(blocks * b * b / n**2)
    assert f"{100 * analysis.density(p):.1f}%" == "7.7%"


def test_cost_numbers():
    p = patterns.causal_sliding_window(1000, 37)
    c = analysis.cost(p, d=64)
    assert c.flops == 4 * p.nnz * 64
    assert c.dense_flops == 4 * 1000 * 1000 * 64
    assert c.flop_ratio == pytest.approx(p.density)
    assert c.backward_flops == 2 * c.flops == 8 * p.nnz * 64  # dP, dV, dQ, dK
    assert c.score_bytes == 4 * p.nnz and c.dense_score_bytes == 4 * 10**6
    assert c.io_bytes == 4 * (1000 * 128 + 1000 * 128)
    assert c.csr_bytes == 1001 * 8 + 4 * p.nnz
    bsr = p.to_bsr(128)
    assert c.bsr_block == (128, 128)
    assert (
        c.bsr_bytes
        == bsr.indptr.nbytes + bsr.indices.nbytes + bsr.mask_index.nbytes + bsr.mask_table.nbytes
    )
    c2 = analysis.cost(p, d=64, d_v=32, heads=8, dtype="bfloat16", block=(64, 32))
    assert c2.nnz == 8 * p.nnz
    assert c2.flops == 2 * 8 * p.nnz * (64 + 32)
    assert c2.backward_flops == 4 * 8 * p.nnz * (64 + 32)
    assert c2.itemsize == 2 and c2.bsr_block == (64, 32)
    assert c2.dense_score_bytes == 8 * 2 * 10**6


def test_cost_uses_the_block_form_of_a_block_pattern():
    p = patterns.causal_sliding_window(4096, 300, block=64)
    c = analysis.cost(p, d=16)
    assert c.bsr_block == (64, 64)
    assert c.flops == 4 * p.nnz * 16


def test_cost_validation():
    p = patterns.bigbird(64, 8, num_heads=2)
    with pytest.raises(ValueError, match="multiple"):
        analysis.cost(p, d=8, heads=3)
    with pytest.raises(ValueError, match="d must"):
        analysis.cost(p, d=0)


def test_dense_score_bytes():
    assert analysis.dense_score_bytes(8192) == 256 * 2**20
    assert analysis.dense_score_bytes(8192, dtype="float16", heads=16) == 16 * 128 * 2**20


def test_module_examples():
    assert doctest.testmod(metrics).failed == 0
