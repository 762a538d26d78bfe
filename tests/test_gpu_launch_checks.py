"""The checks every CuPy launch makes before a kernel indexes anything (``arrays._geometry``, and
``arrays._check_backward`` for the backward), on the host: no GPU needed. The kernels do no bounds
checks, so a pattern with the wrong number of heads or the wrong shape must be a ValueError here,
never an illegal memory access there."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

from sparse_ref.backends.cupy.arrays import _check_backward, _geometry


class Form(NamedTuple):
    """The fields of a device pattern form that the checks read."""

    indptr: Any
    n_q: int
    n_k: int


def arrays(B: int, H: int, Hkv: int, n_q: int, n_k: int, d: int, dv: int) -> tuple[Any, ...]:
    return (
        np.zeros((B, H, n_q, d), np.float32),
        np.zeros((B, Hkv, n_k, d), np.float32),
        np.zeros((B, Hkv, n_k, dv), np.float32),
    )


@pytest.mark.parametrize("P", [1, 4])
def test_valid_launch_gives_the_geometry(P: int) -> None:
    q, k, v = arrays(2, 4, 2, 30, 20, 16, 8)
    form = Form(np.zeros((P, 5)), 30, 20)
    assert _geometry(q, k, v, form) == (2, 4, 2, 30, 20, 16, 8, P)


@pytest.mark.parametrize("P", [2, 3, 8])
def test_pattern_heads_must_be_one_or_h(P: int) -> None:
    q, k, v = arrays(1, 4, 2, 30, 20, 16, 16)
    with pytest.raises(ValueError, match=rf"pattern has {P} heads; expected 1 .* or H = 4"):
        _geometry(q, k, v, Form(np.zeros((P, 5)), 30, 20))


def test_pattern_shape_must_match_the_inputs() -> None:
    q, k, v = arrays(1, 2, 2, 30, 20, 16, 16)
    with pytest.raises(
        ValueError, match=r"pattern has shape \(30, 21\), but q and k give \(30, 20\)"
    ):
        _geometry(q, k, v, Form(np.zeros((1, 5)), 30, 21))


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((1, 4, 30, 16), (1, 3, 20, 16), (1, 3, 20, 16)), "multiple of H_kv = 3"),
        (((1, 4, 30, 16), (2, 2, 20, 16), (2, 2, 20, 16)), "k must have shape"),
        (((1, 4, 30, 16), (1, 2, 20, 8), (1, 2, 20, 16)), "k must have shape"),
        (((1, 4, 30, 16), (1, 2, 20, 16), (1, 2, 19, 16)), "v must have shape"),
        (((1, 4, 30, 16), (1, 2, 20, 16), (1, 1, 20, 16)), "v must have shape"),
        (((4, 30, 16), (1, 2, 20, 16), (1, 2, 20, 16)), "q must be 4-d"),
    ],
)
def test_input_shapes_are_checked(shapes: tuple[tuple[int, ...], ...], message: str) -> None:
    q, k, v = (np.zeros(s, np.float32) for s in shapes)
    with pytest.raises(ValueError, match=message):
        _geometry(q, k, v, Form(np.zeros((1, 5)), 30, 20))


class BlockForm(NamedTuple):
    """The fields of a device block form (or its transpose) that the checks read."""

    indptr: Any
    n_q: int
    n_k: int
    block: tuple[int, int]


def test_backward_checks_dout_and_the_transpose() -> None:
    dout = np.zeros((1, 4, 30, 8), np.float32)
    bsr = BlockForm(np.zeros((4, 3)), 30, 20, (16, 16))
    what = "tbsr must be device_bsr_transpose(bsr)"
    _check_backward(dout, (1, 4, 30, 8), bsr, bsr, (30, 20), what)  # a valid pair passes
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 4, 30, 16\)"):
        _check_backward(dout, (1, 4, 30, 16), bsr, bsr, (30, 20), what)
    for bad in (
        BlockForm(np.zeros((1, 3)), 30, 20, (16, 16)),  # another pattern's heads
        BlockForm(np.zeros((4, 3)), 30, 21, (16, 16)),  # another shape
        BlockForm(np.zeros((4, 3)), 30, 20, (16, 32)),  # another block
    ):
        with pytest.raises(ValueError, match=r"tbsr must be device_bsr_transpose\(bsr\)"):
            _check_backward(dout, (1, 4, 30, 8), bsr, bad, (30, 20), what)
    csr, tcsr = Form(np.zeros((4, 31)), 30, 20), Form(np.zeros((4, 21)), 20, 30)
    _check_backward(dout, (1, 4, 30, 8), csr, tcsr, (20, 30), "tcsr")  # swapped shape
    with pytest.raises(ValueError, match="tcsr"):
        _check_backward(dout, (1, 4, 30, 8), csr, csr, (20, 30), "tcsr")
