"""``patterns.neighborhood_2d`` (NATTEN) against a per-axis brute force."""

from __future__ import annotations

import numpy as np
from helpers import FEW, expect_pattern, row_keys
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.patterns import (
    neighborhood_2d,
)


def natten_axis(length: int, kernel: int, dilation: int, causal: bool, i: int) -> set[int]:
    """Neighbours of position ``i`` along one axis, by walking its dilation group."""
    if causal:
        return {i - t * dilation for t in range(kernel) if i - t * dilation >= 0}
    group = [p for p in range(length) if p % dilation == i % dilation]
    m = group.index(i)
    lo = m - kernel // 2
    lo = max(lo, 0)
    lo = min(lo, len(group) - kernel)
    return set(group[lo : lo + kernel])


def natten_mask(h, w, kh, kw, dh, dw, ch, cw) -> np.ndarray:
    mask = np.zeros((h * w, h * w), dtype=bool)
    for r in range(h):
        rows = natten_axis(h, kh, dh, ch, r)
        for c in range(w):
            cols = natten_axis(w, kw, dw, cw, c)
            for rr in rows:
                for cc in cols:
                    mask[r * w + c, rr * w + cc] = True
    return mask


@st.composite
def natten_params(draw):
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    dh, dw = draw(st.integers(1, h)), draw(st.integers(1, w))
    kh, kw = draw(st.integers(1, h // dh)), draw(st.integers(1, w // dw))
    return h, w, kh, kw, dh, dw, draw(st.booleans()), draw(st.booleans())


@FEW
@given(natten_params())
def test_neighborhood_2d(params):
    h, w, kh, kw, dh, dw, ch, cw = params
    p = neighborhood_2d(h, w, (kh, kw), (dh, dw), (ch, cw))
    expect_pattern(p, natten_mask(h, w, kh, kw, dh, dw, ch, cw))
    if kh == kw and dh == dw and ch == cw:
        assert neighborhood_2d(h, w, kh, dh, ch) == p


def test_neighborhood_named_cases():
    # 1-D rows (height 1): L = 7, k = 3, d = 2 -> groups {0,2,4,6} and {1,3,5}
    p = neighborhood_2d(1, 7, (1, 3), (1, 2))
    rows = [row_keys(p, i) for i in range(7)]
    assert rows == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5], [2, 4, 6]]
    # the window shifts inward and always holds k keys; causal windows are cut, not shifted
    full = neighborhood_2d(5, 5, 3)
    assert (np.diff(full.to_csr().indptr) == 9).all()
    cut = neighborhood_2d(5, 5, 3, causal=True)
    assert np.diff(cut.to_csr().indptr).tolist()[:6] == [1, 2, 3, 3, 3, 2]
