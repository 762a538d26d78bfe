"""The legitimate-formulation family (sparse_ref.formulations), in particular the online-softmax
forward over key blocks (FlashAttention-2's), and planted bugs on cases with several key blocks.

The planted suite of tests/test_planted_bugs.py has at most 32 keys per row, a single key block,
where the online forward equals the whole-row one; the cases here have up to 250 keys, so the
running maximum moves between blocks and the online forwards widen the baseline there.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import flash2

from sparse_ref import golden, oracle, patterns
from sparse_ref.formulations import (
    FLASH_KEY_BLOCKS,
    FORWARD_FORMULATIONS,
    Formulation,
    forward,
)
from sparse_ref.golden.suites import CaseSpec, Suite, build_pattern

EXP2 = Formulation("exp2", exp2=True)


def _inputs(n_q: int, n_k: int, *, d: int = 16, d_v: int = 8, seed: int = 0) -> tuple[Any, ...]:
    """q (1, 2, n_q, d), k (1, 2, n_k, d), v (1, 2, n_k, d_v), float64, scores of spread ~3."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 2, n_q, d)) * 1.5
    k = rng.standard_normal((1, 2, n_k, d)) * 1.5
    v = rng.standard_normal((1, 2, n_k, d_v))
    return q, k, v


def test_the_family_has_flash2_for_each_key_block() -> None:
    online = [f for f in FORWARD_FORMULATIONS if f.key_block]
    assert sorted(f.key_block for f in online) == sorted(FLASH_KEY_BLOCKS)
    assert all(f.exp2 and not f.prescale_q and not f.normalize_first for f in online)


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"key_block": -1}, "key_block must be >= 0"), ({"normalize_first": True}, "whole row")],
)
def test_formulation_flags_are_checked(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Formulation("bad", **{"key_block": 64, **changes})


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_one_block_is_the_whole_row_softmax(dtype: str) -> None:
    """With a block at least as wide as the row the running terms start at 0: the same bits."""
    q, k, v = _inputs(40, 90)
    p = patterns.causal(40, 90, align="bottom_right")
    wide = forward(q, k, v, p, 0.25, None, dtype, Formulation("wide", exp2=True, key_block=90))
    whole = forward(q, k, v, p, 0.25, None, dtype, EXP2)
    for a, b in zip(wide, whole, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("block", FLASH_KEY_BLOCKS)
def test_online_forward_in_float64_is_the_oracle(block: int) -> None:
    q, k, v = _inputs(70, 250)
    p = patterns.causal(70, 250, align="bottom_right")
    f = Formulation("online", exp2=True, key_block=block)
    out, lse = forward(q, k, v, p, 0.25, None, "float64", f)
    ref_out, ref_lse = oracle.attention(q, k, v, p, scale=0.25, return_lse=True)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-13)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_online_forward_matches_an_independent_flash2(dtype: str) -> None:
    """The family's flash2 against tests/test_tolerance_rule.py's FlashAttention-2 NumPy kernel
    (written separately). q and k are multiples of 1/4, so every score is exact whatever the
    order of the dot product; what is left is the order of the P . V sums: a few ulps."""
    from sparse_ref.formulations import as_dtype

    q, k, v = _inputs(64, 200)
    q, k = np.round(q * 4) / 4, np.round(k * 4) / 4
    p = patterns.causal(64, 200, align="bottom_right")
    f = Formulation("online", exp2=True, key_block=64)
    out, lse = forward(q, k, v, p, 0.25, None, dtype, f)
    t = as_dtype(dtype)
    ours_out, ours_lse, *_ = flash2(
        *(x.astype(t) for x in (q, k, v)), p, None, scale=0.25, softcap=None, block=64
    )
    ours_out = ours_out.astype(np.float32)
    unit = float(np.max(np.abs(ours_out))) * float(
        np.finfo(t if t.itemsize == 2 else np.float32).eps
    )
    np.testing.assert_allclose(out, ours_out, rtol=0, atol=(1 if t.itemsize == 2 else 8) * unit)
    lse_unit = float(np.max(np.abs(ours_lse))) * float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(lse, ours_lse, rtol=0, atol=4 * lse_unit)


def test_key_blocks_round_differently_from_the_whole_row() -> None:
    """Where the running max moves between blocks the online forward is a different rounding
    (the reason it is in the family), yet as close to the oracle as the whole-row one."""
    q, k, v = _inputs(64, 250, seed=3)
    p = patterns.dense(64, 250)
    ref, _ = oracle.attention(q, k, v, p, scale=0.25, return_lse=True)
    whole, _ = forward(q, k, v, p, 0.25, None, "float32", EXP2)
    online, _ = forward(
        q, k, v, p, 0.25, None, "float32", Formulation("o", exp2=True, key_block=64)
    )
    assert not np.array_equal(online, whole)
    err_whole, err_online = (float(np.max(np.abs(x - ref))) for x in (whole, online))
    assert err_online < 4 * err_whole and err_whole < 4 * err_online


def test_online_forward_excludes_masked_keys_and_empties_rows() -> None:
    """An excluded key's infinite v in a later block does not leak; rows without keys give
    out = 0 and lse = -inf; a row whose first blocks are all excluded starts from m = -inf."""
    q, k, v = _inputs(4, 200)
    v[0, :, 150] = np.inf
    rows = [[], [0, 199], list(range(130, 140)), []]
    p = build_pattern("custom_rows", {"n_k": 200, "rows": rows})
    for block in FLASH_KEY_BLOCKS:
        f = Formulation("online", exp2=True, key_block=block)
        out, lse = forward(q, k, v, p, 0.25, None, "float32", f)
        ref_out, ref_lse = oracle.attention(
            q, k, v, p, scale=0.25, return_lse=True, check_finite=False
        )
        assert np.all(np.isfinite(out))
        np.testing.assert_array_equal(out[..., [0, 3], :], 0)
        assert np.all(lse[..., [0, 3]] == -np.inf)
        np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-5)
        np.testing.assert_allclose(lse[..., 1:3], ref_lse[..., 1:3], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- planted bugs
MULTIBLOCK = Suite(
    "multiblock",
    (
        CaseSpec("dense-n200", "dense", {"n_q": 200}, d=16),
        CaseSpec(
            "causal-q90k250", "causal", {"n_q": 90, "n_k": 250, "align": "bottom_right"}, d=16
        ),
    ),
)


@pytest.fixture(scope="module")
def multiblock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("formulations") / "multiblock"
    golden.generate(MULTIBLOCK, d, progress=False)
    return d


def _forward_only(forward_fn: Any) -> Any:
    def fb(q, k, v, pattern, dout, *, scale, softcap):  # type: ignore[no-untyped-def]
        out, lse = forward_fn(q, k, v, pattern, scale, softcap)
        return out, lse, None, None, None

    return fb


def _oracle_forward(q, k, v, pattern, scale, softcap, **kw):  # type: ignore[no-untyped-def]
    out, lse = oracle.attention(
        q, k, v, pattern, scale=scale, softcap=softcap, return_lse=True, check_finite=False, **kw
    )
    return out.astype(q.dtype), lse.astype(np.float32)


FLASH64 = functools.partial(flash2, block=64)

BUGS = {
    "online softmax without rescaling the accumulator": functools.partial(
        flash2, block=64, rescale=False
    ),
    "scale 1/sqrt(d + 1)": _forward_only(
        lambda q, k, v, p, s, c: _oracle_forward(q, k, v, p, 1 / math.sqrt(q.shape[-1] + 1), c)
    ),
    "float16 arithmetic inside a float32 claim": _forward_only(
        lambda q, k, v, p, s, c: _oracle_forward(q, k, v, p, s, c, compute_dtype=np.float16)
    ),
}


@pytest.mark.parametrize("name", sorted(BUGS))
@pytest.mark.parametrize("case_id", [c.id for c in MULTIBLOCK.cases])
def test_planted_bugs_fail_on_multiblock_cases(
    name: str, case_id: str, multiblock_dir: Path
) -> None:
    report = golden.check(None, multiblock_dir, forward_backward=BUGS[name], only=case_id)
    (result,) = report.results
    assert result.outcome == "tolerance", (name, result.outcome, result.message)
    assert result.worst_ratio > 1.0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_flash2_passes_the_multiblock_cases(dtype: str, multiblock_dir: Path) -> None:
    """The correct FlashAttention-2 kernel beside the bugs: the failures above are the bugs."""
    report = golden.check(None, multiblock_dir, forward_backward=FLASH64, dtype=dtype)
    assert report.passed and report.counts()["pass"] == len(MULTIBLOCK.cases), report.details()


_BLAS_PROBE = """
import hashlib, sys
import numpy as np
from sparse_ref import formulations, patterns

rng = np.random.default_rng(7)
q, k, v, g = (rng.standard_normal(s) for s in [(1, 2, 150, 64), (1, 1, 150, 64), (1, 1, 150, 32), (1, 2, 150, 32)])
pattern = patterns.causal_sliding_window(150, 100)
digest = hashlib.sha256()
digest.update((q[0, 0].astype(np.float32) @ k[0, 0].astype(np.float32).T).tobytes())
print(digest.hexdigest())  # control: BLAS, which follows OPENBLAS_CORETYPE
digest = hashlib.sha256()
for f in formulations.FORWARD_FORMULATIONS:
    for x in formulations.forward(q, k, v, pattern, 0.125, None, "float32", f):
        digest.update(x.tobytes())
for f in formulations.BACKWARD_FORMULATIONS:
    for x in formulations.backward(q, k, v, pattern, g, 0.125, None, "float32", f):
        digest.update(x.tobytes())
print(digest.hexdigest())
"""


def test_baseline_does_not_depend_on_the_blas_kernel() -> None:
    """The formulations' float32 results, hence the tolerances a suite stores, are the same bits
    whichever BLAS kernel the CPU selects (simulated with OpenBLAS's ``OPENBLAS_CORETYPE``): with
    BLAS products, 587 of the default suite's 1890 tolerances moved by more than 1% (up to 2.5x)."""
    import os
    import subprocess
    import sys

    digests = []
    for core in ("Haswell", "Prescott"):
        env = dict(os.environ, OPENBLAS_CORETYPE=core)
        res = subprocess.run(
            [sys.executable, "-c", _BLAS_PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        digests.append(res.stdout.split())
    (control_a, ours_a), (control_b, ours_b) = digests
    if control_a == control_b:
        pytest.skip("this BLAS ignores OPENBLAS_CORETYPE: both runs used the same kernel")
    assert ours_a == ours_b
