"""Planted wrong implementations: each must fail the golden check under tolerance rule v2.

Rule v2 widens the baseline to every legitimate formulation and adds a gradient floor; these
tests keep it honest. Each bug is a small, realistic mistake (off-by-one window, wrong causal
alignment, NaN or +inf on empty rows, -1e9 masking, a slightly wrong scale, float16 arithmetic
inside a float32 claim, a dropped GQA sum, ...) run on the one case that exposes it, in the case's
own dtype (float32). ``test_legitimate_formulations`` beside them shows the same cases pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparse_ref import golden, oracle, patterns
from sparse_ref.golden.suites import CaseSpec, Suite

SUITE = Suite(
    "planted",
    (
        CaseSpec("window-l3r2-n32", "sliding_window", {"n": 32, "left": 3, "right": 2}, d=8),
        CaseSpec(
            "causal-br-q12k20",
            "causal",
            {"n_q": 12, "n_k": 20, "align": "bottom_right"},
            d=8,
        ),
        CaseSpec(
            "emptyrows", "custom_rows", {"n_k": 7, "rows": [[], [0], [], [1, 3, 6], [6], []]}, d=8
        ),
        CaseSpec("causal-n24", "causal", {"n_q": 24}, d=16),
        CaseSpec(
            "gqa-window-n24",
            "sliding_window",
            {"n": 24, "left": 4, "right": 4},
            heads=4,
            kv_heads=2,
            d=8,
        ),
        CaseSpec("softcap-causal-n24", "causal", {"n_q": 24}, d=8, softcap=2.0, input_std=2.0),
        CaseSpec(
            "per-batch-b2",
            "batch",
            {
                "patterns": [
                    {"family": "causal", "params": {"n_q": 16}},
                    {"family": "sliding_window", "params": {"n": 16, "left": 2, "right": 1}},
                ]
            },
            batch=2,
            d=8,
        ),
    ),
)


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("planted") / "suite"
    golden.generate(SUITE, d, progress=False)
    return d


# ----------------------------------------------------------------------------- building blocks
def _fwd(q, k, v, pattern, scale, softcap, **kw):  # type: ignore[no-untyped-def]
    out, lse = oracle.attention(
        q, k, v, pattern, scale=scale, softcap=softcap, return_lse=True, check_finite=False, **kw
    )
    return out.astype(q.dtype), lse.astype(np.float32)


def _bwd(q, k, v, pattern, dout, scale, softcap, **kw):  # type: ignore[no-untyped-def]
    grads = oracle.attention_backward(
        q, k, v, pattern, dout, scale=scale, softcap=softcap, check_finite=False, **kw
    )
    return tuple(g.astype(q.dtype) for g in grads)


def _fb(forward: Callable[..., Any], backward: Callable[..., Any] | None = None) -> Callable:
    """A forward_backward adapter from a forward (and a correct or buggy backward)."""

    def fb(q, k, v, pattern, dout, *, scale, softcap):  # type: ignore[no-untyped-def]
        out, lse = forward(q, k, v, pattern, scale, softcap)
        bw = backward or (lambda *a: _bwd(*a))
        grads = (None, None, None) if dout is None else bw(q, k, v, pattern, dout, scale, softcap)
        return (out, lse, *grads)

    return fb


def _dense_forward(q, k, v, pattern, scale, softcap, *, fill: float):  # type: ignore[no-untyped-def]
    """Masking by adding ``fill`` (e.g. -1e9) to excluded scores instead of excluding them."""
    mask = np.broadcast_to(pattern.to_dense(), (q.shape[0], q.shape[1], *pattern.shape))
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64)) * scale
    s = np.where(mask, s, fill)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    out = np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v.astype(np.float64))
    lse = (m[..., 0] + np.log(p.sum(-1))).astype(np.float32)
    return out.astype(q.dtype), lse


def _rebuilt(pattern, **changes):  # type: ignore[no-untyped-def]
    return patterns.build(pattern.family, **{**pattern.params, **changes})


def _with_empty(value_out: float | None, value_lse: float | None) -> Callable[..., Any]:
    def forward(q, k, v, pattern, scale, softcap):  # type: ignore[no-untyped-def]
        out, lse = _fwd(q, k, v, pattern, scale, softcap)
        empty = np.asarray(pattern.to_csr().sum(axis=1)).ravel() == 0
        if value_out is not None:
            out[..., empty, :] = value_out
        if value_lse is not None:
            lse[..., empty] = value_lse
        return out, lse

    return forward


def _gqa_dropped_sum(q, k, v, pattern, dout, scale, softcap):  # type: ignore[no-untyped-def]
    """dk/dv from the first query head of each group only."""
    group = q.shape[1] // k.shape[1]
    kk, vv = (np.repeat(x, group, axis=1) for x in (k, v))
    dq, dk, dv = _bwd(q, kk, vv, pattern, dout, scale, softcap)
    return dq, dk[:, ::group], dv[:, ::group]


def _gqa_wrong_heads(q, k, v, pattern, scale, softcap):  # type: ignore[no-untyped-def]
    """Query head h reads kv head h % H_kv instead of h // (H // H_kv)."""
    group = q.shape[1] // k.shape[1]
    kk, vv = (np.tile(x, (1, group, 1, 1)) for x in (k, v))
    return _fwd(q, kk, vv, pattern, scale, softcap)


def _unnormalized(q, k, v, pattern, scale, softcap):  # type: ignore[no-untyped-def]
    """The final division by the row sum forgotten (out = sum_j exp(s_ij - m_i) v_j)."""
    out, lse = _fwd(q, k, v, pattern, scale, softcap)
    mask = pattern.to_dense()
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64)) * scale
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    return np.einsum("bhqk,bhkd->bhqd", p, v.astype(np.float64)).astype(q.dtype), lse


def _no_softcap_derivative(q, k, v, pattern, dout, scale, softcap):  # type: ignore[no-untyped-def]
    """Backward through softcap without the 1 - tanh^2 factor: the gradient of the uncapped scores
    at the capped probabilities, imitated by the oracle's gradient at softcap = None."""
    dq, dk, dv = _bwd(q, k, v, pattern, dout, scale, softcap)
    dq0, dk0, _ = _bwd(q, k, v, pattern, dout, scale, None)
    return dq0, dk0, dv


def _dq_unscaled(q, k, v, pattern, dout, scale, softcap):  # type: ignore[no-untyped-def]
    dq, dk, dv = _bwd(q, k, v, pattern, dout, scale, softcap)
    return dq / scale, dk, dv


def _lse_log2(q, k, v, pattern, scale, softcap):  # type: ignore[no-untyped-def]
    out, lse = _fwd(q, k, v, pattern, scale, softcap)
    return out, lse / np.float32(math.log(2))


def _delta_plus(q, k, v, pattern, dout, scale, softcap):  # type: ignore[no-untyped-def]
    """A dense backward (no GQA, no softcap) with ``dS = P (dP + delta)``."""
    f = [x.astype(np.float64) for x in (q, k, v, dout)]
    s = np.einsum("bhqd,bhkd->bhqk", f[0], f[1]) * scale
    s = np.where(pattern.to_dense(), s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    dp = np.einsum("bhqd,bhkd->bhqk", f[3], f[2])
    ds = p * (dp + (p * dp).sum(axis=-1, keepdims=True))
    dq = np.einsum("bhqk,bhkd->bhqd", ds, f[1]) * scale
    dk = np.einsum("bhqk,bhqd->bhkd", ds, f[0]) * scale
    dv = np.einsum("bhqk,bhqd->bhkd", p, f[3])
    return tuple(x.astype(q.dtype) for x in (dq, dk, dv))


# (name, case, forward_backward): each must fail its case
BUGS: list[tuple[str, str, Callable[..., Any]]] = [
    (
        "off-by-one window (left + 1)",
        "window-l3r2-n32",
        _fb(lambda q, k, v, p, s, c: _fwd(q, k, v, _rebuilt(p, left=p.params["left"] + 1), s, c)),
    ),
    (
        "top-left causal on a bottom-right case",
        "causal-br-q12k20",
        _fb(lambda q, k, v, p, s, c: _fwd(q, k, v, _rebuilt(p, align="top_left"), s, c)),
    ),
    ("NaN on empty rows", "emptyrows", _fb(_with_empty(math.nan, None))),
    ("lse = +inf on empty rows (FlashAttention-2)", "emptyrows", _fb(_with_empty(None, math.inf))),
    (
        "-1e9 masking instead of exclusion",
        "emptyrows",
        _fb(lambda q, k, v, p, s, c: _dense_forward(q, k, v, p, s, c, fill=-1e9)),
    ),
    (
        "scale 1/sqrt(d + 1)",
        "causal-n24",
        _fb(lambda q, k, v, p, s, c: _fwd(q, k, v, p, 1 / math.sqrt(q.shape[-1] + 1), c)),
    ),
    (
        "float16 arithmetic inside a float32 claim",
        "causal-n24",
        _fb(lambda q, k, v, p, s, c: _fwd(q, k, v, p, s, c, compute_dtype=np.float16)),
    ),
    ("dropped GQA sum in dk/dv", "gqa-window-n24", _fb(_fwd, _gqa_dropped_sum)),
    ("wrong GQA head mapping (h % H_kv)", "gqa-window-n24", _fb(_gqa_wrong_heads)),
    (
        "softcap ignored",
        "softcap-causal-n24",
        _fb(lambda q, k, v, p, s, c: _fwd(q, k, v, p, s, None)),
    ),
    (
        "softcap derivative dropped in the backward",
        "softcap-causal-n24",
        _fb(_fwd, _no_softcap_derivative),
    ),
    (
        "transposed pattern",
        "window-l3r2-n32",
        _fb(lambda q, k, v, p, s, c: _fwd(q, k, v, p.transpose(), s, c)),
    ),
    ("lse in log2", "causal-n24", _fb(_lse_log2)),
    ("dropped 1/rowsum", "causal-n24", _fb(_unnormalized)),
    ("dq without the scale", "causal-n24", _fb(_fwd, _dq_unscaled)),
    ("delta with the wrong sign (dS = P (dP + delta))", "causal-n24", _fb(_fwd, _delta_plus)),
    (
        "the first batch element's pattern for the whole batch",
        "per-batch-b2",
        _fb(
            lambda q, k, v, p, s, c: _fwd(q, k, v, p[0], s, c),
            lambda q, k, v, p, g, s, c: _bwd(q, k, v, p[0], g, s, c),
        ),
    ),
]


@pytest.mark.parametrize(("name", "case_id", "fb"), BUGS, ids=[b[0] for b in BUGS])
def test_planted_bug_fails(
    name: str, case_id: str, fb: Callable[..., Any], suite_dir: Path
) -> None:
    report = golden.check(None, suite_dir, forward_backward=fb, only=case_id)
    (result,) = report.results
    assert result.outcome in ("tolerance", "nonfinite", "shape"), (name, result.outcome)
    assert not report.passed
    if result.outcome == "tolerance":
        assert result.worst_ratio > 1.0


def test_there_are_at_least_twelve_planted_bugs() -> None:
    assert len(BUGS) >= 12


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_oracle_passes_every_planted_case(dtype: str, suite_dir: Path) -> None:
    """The same cases, checked with a correct implementation: the failures above are the bugs."""

    def correct(q, k, v, pattern, dout, *, scale, softcap):  # type: ignore[no-untyped-def]
        out, lse = oracle.attention(q, k, v, pattern, scale=scale, softcap=softcap, return_lse=True)
        grads = oracle.attention_backward(q, k, v, pattern, dout, scale=scale, softcap=softcap)
        return (out.astype(q.dtype), lse, *(g.astype(q.dtype) for g in grads))

    report = golden.check(None, suite_dir, forward_backward=correct, dtype=dtype)
    assert report.passed and report.counts()["pass"] == len(SUITE.cases), report.details()
