"""sparse_ref.viz (headless, Agg) and the ``sparse-ref patterns`` command.

The density picture is checked against a brute-force count over the dense mask; the large-n path
against closed-form counts, without ever building n x n.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ref import patterns, viz
from sparse_ref.pattern import Pattern

matplotlib = pytest.importorskip(
    "matplotlib", reason="matplotlib (the docs extra) is not installed"
)
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAST = settings(max_examples=40, deadline=None)


def _brute_counts(mask: np.ndarray, cq: int, ck: int) -> np.ndarray:
    n_q, n_k = mask.shape
    mq, mk = -(-n_q // cq), -(-n_k // ck)
    out = np.zeros((mq, mk), dtype=np.int64)
    for r in range(mq):
        for c in range(mk):
            out[r, c] = mask[r * cq : (r + 1) * cq, c * ck : (c + 1) * ck].sum()
    return out


@FAST
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(1, 12),
    st.sampled_from([0.1, 0.5]),
    st.integers(0, 10**6),
)
def test_density_image_counts_match_brute_force(n_q, n_k, max_pixels, p, seed):
    mask = np.random.default_rng(seed).random((n_q, n_k)) < p
    img = viz.density_image(Pattern.from_dense(mask), max_pixels=max_pixels)
    cq, ck = img.cell
    assert cq == -(-n_q // max_pixels) and ck == -(-n_k // max_pixels)
    assert max(img.values.shape) <= max_pixels
    np.testing.assert_array_equal(img.counts, _brute_counts(mask, cq, ck))
    area = _brute_counts(np.ones_like(mask), cq, ck)
    np.testing.assert_allclose(img.values, img.counts / area)
    assert ((img.values >= 0) & (img.values <= 1)).all()


def test_density_image_picks_the_head():
    a = np.tril(np.ones((8, 8), dtype=bool))
    p = Pattern.from_dense(np.stack([a, ~a]))
    assert viz.density_image(p, head=1, max_pixels=8).counts.sum() == (~a).sum()
    with pytest.raises(ValueError, match="max_pixels"):
        viz.density_image(p, max_pixels=0)


@pytest.mark.parametrize("cells", [(64, 64), (128, 192)])
def test_block_counting_equals_csr_counting(cells):
    p = patterns.bigbird(1000, 32, num_heads=2, seed=3)
    p = p if p.block is not None else p.with_block_form(32)
    for h in range(2):
        np.testing.assert_array_equal(
            viz._block_counts(p, h, *cells), viz._csr_counts(p, h, *cells)
        )


def test_density_image_at_one_million_tokens_uses_blocks():
    n, w = 1 << 20, 4096
    p = patterns.causal_sliding_window(n, w, block=128)  # 4.3e9 nonzeros: no token CSR
    img = viz.density_image(p, max_pixels=512)
    assert img.cell == (2048, 2048) and img.values.shape == (512, 512)
    assert img.counts.sum() == p.nnz == n * w - w * (w - 1) // 2
    # diagonal cells: the upper-triangle-free part of a 2048-cell holds 2048*2049/2 entries
    assert img.counts[100, 100] == 2048 * 2049 // 2
    # the cell left of the diagonal holds the part of the window that reaches back 4096 keys
    assert img.counts[100, 99] == 2048 * 2048
    # two cells left: row u of the cell reaches 2047 - u keys into it (i - j <= 4095)
    assert img.counts[100, 98] == 2047 * 2048 // 2
    assert img.counts[100, :98].sum() == 0 and img.counts[100, 101:].sum() == 0


def test_plot_draws_the_density_image():
    p = patterns.causal_sliding_window(1000, 100)
    ax = viz.plot(p, max_pixels=50, colorbar=True)
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(shown, viz.density_image(p, max_pixels=50).values)
    assert ax.images[0].get_extent() == [0, 1000, 1000, 0]
    assert "causal_sliding_window" in ax.get_title()
    plt.close(ax.figure)
    fig, ax2 = plt.subplots()
    assert viz.plot(patterns.hierarchical(64, 8, 2, 2), ax=ax2, title="h") is ax2
    assert ax2.get_title() == "h"
    plt.close(fig)


def test_plot_at_one_million_tokens_is_fast_and_headless(tmp_path):
    p = patterns.causal_sliding_window(1 << 20, 4096, block=128)
    ax = viz.plot(p)
    ax.figure.savefig(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size > 1000
    plt.close(ax.figure)


def test_plot_receptive_field_rows_are_the_reach_per_layer():
    n, w = 512, 32
    p = patterns.causal_sliding_window(n, w)
    ax = viz.plot_receptive_field(p, layers=5, row=n - 1, max_pixels=n)
    img = np.asarray(ax.images[0].get_array())
    assert img.shape == (5, n)
    assert img.sum(axis=1).tolist() == [layer * (w - 1) + 1 for layer in range(1, 6)]
    assert "after 5 layers" in ax.get_title()
    plt.close(ax.figure)
    ax = viz.plot_receptive_field([p, p, patterns.dense(n)])
    assert np.asarray(ax.images[0].get_array())[-1].min() == 1.0
    plt.close(ax.figure)


def test_text_picture():
    assert viz.text_picture(patterns.causal(4), width=4, height=4) == "@...\n@@..\n@@@.\n@@@@"
    lines = viz.text_picture(
        patterns.sliding_window(1000, 30, 30), width=50, height=25
    ).splitlines()
    assert len(lines) <= 25 and max(map(len, lines)) <= 50


def test_every_catalog_family_has_an_example_picture():
    # the docs build draws one picture per family from these; a new family needs an entry
    missing = sorted(set(patterns.available()) - set(viz.EXAMPLES))
    assert not missing, f"add example parameters to sparse_ref.viz.EXAMPLES for {missing}"
    for family in patterns.available():
        p = viz.example(family, 64)
        assert p.family == family and p.nnz > 0
        img = viz.density_image(p, max_pixels=16)
        assert img.counts.sum() == p.to_csr(0).nnz


def test_example_overrides_and_errors():
    assert viz.example("sliding_window", 64, left=2).params == {"n": 64, "left": 2, "right": 4}
    with pytest.raises(KeyError, match="EXAMPLES"):
        viz.example_params("not_a_family")
    with pytest.raises(ValueError, match="n must"):
        viz.example_params("causal", 0)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'sparse-ref\[viz\]'"):
        viz.plot(patterns.causal(8))
    with pytest.raises(ImportError, match=r"sparse-ref\[viz\]"):
        viz.require_matplotlib()


def test_the_viz_extra_is_matplotlib_only():
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert [r.split(">")[0] for r in extras["viz"]] == ["matplotlib"]
