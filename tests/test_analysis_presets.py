"""sparse_ref.analysis.presets: the literature's configurations and complexities."""

from __future__ import annotations

import doctest

from sparse_ref import analysis
from sparse_ref.analysis import presets


def test_literature_patterns_are_the_published_configurations():
    lit = analysis.literature_patterns(1024, include_dense=False)
    assert "full (Vaswani 2017)" not in lit
    bb = lit["BigBird ITC (b=64, 3+2+3)"]
    assert (
        bb.family == "bigbird" and bb.params["block"] == 64 and bb.params["num_random_blocks"] == 3
    )
    assert lit["window 256 causal (Mistral)"].params == {"n": 1024, "window": 256}
    assert set(analysis.COMPLEXITY) >= {p.family for p in lit.values()}


def test_module_examples():
    assert doctest.testmod(presets).failed == 0
