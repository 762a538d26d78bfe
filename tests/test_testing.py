"""The tolerance rule itself: it must reject what is wrong, not only accept what is right."""

import numpy as np
import pytest

from sparse_ref import Pattern, oracle, patterns, testing


def test_rounding_floor_is_twice_the_rounding_of_plus_minus_point_three():
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.standard_normal(1000), [np.inf, np.nan]])
    r32 = ref[:-2].astype(np.float32)
    sampled = 2 * np.max(np.abs((r32 + np.float32(0.3)) - np.float32(0.3) - r32))
    unit = np.spacing(np.float32(0.3) + np.max(np.abs(r32)))
    assert sampled <= unit  # the sample estimates one ulp at the largest magnitude
    assert testing.rounding_floor(ref, np.float32) == pytest.approx(float(max(sampled, unit)))
    assert testing.rounding_floor(ref, np.float32) > testing.rounding_floor(ref, np.float64) > 0


@pytest.mark.parametrize("ref", [np.zeros(3), np.array([0.05]), np.array([1.0])])
def test_rounding_floor_never_below_one_ulp_at_the_reference_magnitude(ref):
    for dtype in (np.float32, np.float64):
        unit = np.spacing(dtype(0.3) + dtype(np.max(np.abs(ref))))
        assert testing.rounding_floor(ref, dtype) >= unit > 0


def test_rule_tolerance_is_factor_times_naive_error_plus_floor():
    ref = np.array([1.0, 2.0, 3.0])
    naive = ref + np.array([0.0, 1e-3, -2e-3])
    tol = testing.rule_tolerance(ref, naive, np.float32, factor=2.0)
    assert tol == pytest.approx(4e-3 + testing.rounding_floor(ref, np.float32))


def test_float64_reference_is_wider_than_float64():
    assert np.finfo(testing.reference_dtype(np.float64)).eps <= np.finfo(np.float64).eps
    assert testing.reference_dtype(np.float32) == np.float64


@pytest.mark.parametrize(
    "actual, expected, message",
    [
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "NaN positions"),
        (np.array([1.0, 2.0]), np.array([1.0, np.nan]), "NaN positions"),
        (np.array([np.inf, 2.0]), np.array([-np.inf, 2.0]), "infinite"),
        (np.array([5.0, 2.0]), np.array([-np.inf, 2.0]), "infinite"),
        (np.array([1.0, 2.1]), np.array([1.0, 2.0]), "exceeds tolerance"),
        (np.array([1.0]), np.array([1.0, 2.0]), "shape"),
    ],
)
def test_assert_matches_rejects(actual, expected, message):
    with pytest.raises(AssertionError, match=message):
        testing.assert_matches(actual, expected, tol=1e-3)


def test_assert_matches_accepts_within_tolerance():
    err = testing.assert_matches(np.array([1.0005, -np.inf]), np.array([1.0, -np.inf]), tol=1e-3)
    assert err == pytest.approx(5e-4)


def test_assert_close_to_oracle_accepts_oracle_float32_and_rejects_perturbed(rng):
    q, k, v = (rng.standard_normal((12, 8)).astype(np.float32) for _ in range(3))
    p = Pattern.from_dense(rng.random((12, 12)) < 0.5)
    from sparse_ref import oracle

    good = oracle.attention(q, k, v, p, compute_dtype=np.float32)
    testing.assert_close_to_oracle(good, q, k, v, p)
    bad = good.copy()
    bad[3, 2] += 1e-3
    with pytest.raises(AssertionError, match="out: max error"):
        testing.assert_close_to_oracle(bad, q, k, v, p)


def test_float64_tolerance_is_tight(rng):
    q, k, v = (rng.standard_normal((16, 8)) for _ in range(3))
    p = Pattern.from_dense(rng.random((16, 16)) < 0.5)
    ref = testing.oracle_reference(q, k, v, p, dtype=np.float64)
    assert 0 < ref.out_tol < 1e-14


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_results_pass_the_rule_for_their_dtype(dtype: str) -> None:
    import ml_dtypes

    import sparse_ref

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(3)
    p = patterns.sliding_window(20, 2, 1)
    q, k, v, g = (rng.standard_normal((2, 20, 8)).astype(np_dtype) for _ in range(4))
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True)
    assert out.dtype == np_dtype
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse)
    grads = sparse_ref.attention_backward(q, k, v, p, g)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, g)
    with pytest.raises(testing.MismatchError) as err:  # the float32 answer is not a bf16/fp16 one
        testing.assert_close_to_oracle(out.astype(np.float32) + 0.05, q, k, v, p, dtype=dtype)
    assert err.value.kind == "tolerance"


def test_torch_bfloat16_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    import sparse_ref

    p = patterns.causal(12)
    x = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = sparse_ref.attention(x, x, x, p)
    assert out.dtype.name == "bfloat16" and out.shape == (2, 12, 8)
    ref = oracle.attention(x, x, x, p)
    assert ref.dtype == np.float64
    testing.assert_close_to_oracle(out, x, x, x, p)
    as_f32 = x.float().numpy()
    np.testing.assert_array_equal(oracle.attention(as_f32, as_f32, as_f32, p), ref)
