"""The check API adapters use (DESIGN §8): rebuilt patterns, ``case=``, unsupported cases, outcomes,
ratios, several ``--only`` globs, ``forward_backward``, typed format errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sparse_ref import golden, oracle
from sparse_ref.cli.golden import golden_app
from sparse_ref.golden import store
from sparse_ref.golden.check import OUTCOMES
from sparse_ref.golden.suites import build_suite

IDS = [
    "causal-br-q12k20-f32",
    "causal-br-q20k12-emptyrows-f32",
    "sliding_window-l3r2-n32-gqa-f64",
    "softcap-causal-n24-f32",
    "custom-emptyrows-f64",
    "document-and-causal-n20-b2-f32",
    "batch-causal-window-b2-f32",
]


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("api") / "smoke"
    golden.generate(build_suite("smoke").select(only=IDS), d, progress=False)
    return d


def _oracle(q, k, v, pattern, *, scale, softcap):  # type: ignore[no-untyped-def]
    out, lse = oracle.attention(q, k, v, pattern, scale=scale, softcap=softcap, return_lse=True)
    return out.astype(q.dtype), lse


def test_the_pattern_is_rebuilt_from_family_and_params(suite_dir: Path) -> None:
    seen: dict[str, Any] = {}

    def spy(q, k, v, pattern, *, scale, softcap, case):  # type: ignore[no-untyped-def]
        if not isinstance(pattern, list):  # per-batch cases: below
            seen[case["id"]] = (pattern.family, pattern.params, case)
        return _oracle(q, k, v, pattern, scale=scale, softcap=softcap)

    assert golden.check(spy, suite_dir).passed
    family, params, entry = seen["causal-br-q12k20-f32"]
    assert family == "causal" and params["align"] == "bottom_right"
    assert entry["family"] == "causal" and entry["pattern"]["nnz"] > 0
    assert seen["document-and-causal-n20-b2-f32"][0] == "intersection"
    for case in golden.load(suite_dir):
        assert case.pattern == case.stored_pattern


def test_per_batch_cases_hand_over_one_pattern_per_batch_element(suite_dir: Path) -> None:
    (case,) = golden.load(suite_dir, only="batch-*")
    assert [p.family for p in case.pattern] == ["causal", "sliding_window"]
    assert case.pattern == case.stored_pattern and case.batch == 2
    got: list[Any] = []

    def impl(q, k, v, pattern, *, scale, softcap):  # type: ignore[no-untyped-def]
        got.append(pattern)
        return _oracle(q, k, v, pattern, scale=scale, softcap=softcap)

    assert golden.check(impl, suite_dir, only="batch-*").passed
    assert isinstance(got[0], list) and len(got[0]) == 2


def test_a_catalog_that_builds_another_pattern_is_a_format_error(
    suite_dir: Path, tmp_path: Path
) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(suite_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    entry = next(e for e in manifest["cases"] if e["id"] == "causal-br-q12k20-f32")
    entry["params"]["align"] = "top_left"  # the manifest now disagrees with the stored structure
    path = bad / entry["file"]
    tensors, meta = store.decode_case(path.read_bytes(), entry["id"])
    inner = json.loads(meta[store.METADATA_KEY])
    inner["params"] = entry["params"]
    data = store.encode_case({n: np.array(a) for n, a in tensors.items()}, inner)
    path.write_bytes(data)
    entry["sha256"], entry["bytes"] = store.sha256_hex(data), len(data)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(store.GoldenFormatError, match="causal-br-q12k20-f32") as err:
        golden.check(_oracle, bad)
    assert err.value.case_id == "causal-br-q12k20-f32" and isinstance(err.value, ValueError)


def test_not_implemented_is_unsupported_and_require_all_fails_it(suite_dir: Path) -> None:
    def no_softcap(q, k, v, pattern, *, scale, softcap):  # type: ignore[no-untyped-def]
        if softcap is not None:
            raise NotImplementedError("no softcap here")
        return _oracle(q, k, v, pattern, scale=scale, softcap=softcap)

    report = golden.check(no_softcap, suite_dir)
    assert report.passed and [r.id for r in report.unsupported] == ["softcap-causal-n24-f32"]
    assert report.counts()["unsupported"] == 1 and "1 unsupported" in report.summary()
    strict = golden.check(no_softcap, suite_dir, require_all=True)
    assert not strict.passed and [r.id for r in strict.failures] == ["softcap-causal-n24-f32"]


@pytest.mark.parametrize(
    ("impl", "outcome"),
    [
        (lambda q, k, v, p, *, scale, softcap: np.zeros((1,)), "shape"),
        (
            lambda q, k, v, p, *, scale, softcap: np.full(
                (*q.shape[:3], v.shape[3]), np.nan, dtype=q.dtype
            ),
            "nonfinite",
        ),
        (lambda q, k, v, p, *, scale, softcap: 1 / 0, "error"),
        (
            lambda q, k, v, p, *, scale, softcap: _oracle(
                q, k, v, p, scale=1.1 * scale, softcap=softcap
            ),
            "tolerance",
        ),
    ],
    ids=["shape", "nonfinite", "error", "tolerance"],
)
def test_every_result_carries_an_outcome_and_plain_numbers(
    impl: Any, outcome: str, suite_dir: Path
) -> None:
    report = golden.check(impl, suite_dir, only="causal-br-q12k20-f32")
    (r,) = report.results
    assert r.outcome == outcome and outcome in OUTCOMES and not r.passed
    assert "np." not in r.message and "float64(" not in r.message
    if outcome == "tolerance":
        assert r.ratios["out"] > 1 and r.worst_ratio == max(r.ratios.values())
        assert all(type(x) is float for x in (*r.errors.values(), *r.tolerances.values()))
    assert json.dumps(report.to_json())  # machine-readable


def test_passing_results_carry_ratios(suite_dir: Path) -> None:
    report = golden.check(_oracle, suite_dir)
    for r in report.results:
        assert r.outcome == "pass" and set(r.ratios) == {"out", "lse"}
        assert 0 <= r.worst_ratio <= 1


def test_several_only_globs(suite_dir: Path) -> None:
    report = golden.check(_oracle, suite_dir, only=["causal-br-*", "custom-*"])
    assert [r.id for r in report.results] == [
        "causal-br-q12k20-f32",
        "causal-br-q20k12-emptyrows-f32",
        "custom-emptyrows-f64",
    ]


def test_forward_backward_in_one_call(suite_dir: Path) -> None:
    calls: list[str] = []

    def fb(q, k, v, pattern, dout, *, scale, softcap):  # type: ignore[no-untyped-def]
        calls.append("fb")
        out, lse = _oracle(q, k, v, pattern, scale=scale, softcap=softcap)
        grads = oracle.attention_backward(q, k, v, pattern, dout, scale=scale, softcap=softcap)
        return (out, lse, *(g.astype(q.dtype) for g in grads))

    report = golden.check(None, suite_dir, forward_backward=fb)
    assert report.passed and len(calls) == len(IDS)
    assert all({"dq", "dk", "dv"} <= set(r.ratios) for r in report.results)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes_reach_the_implementation(dtype: str, suite_dir: Path) -> None:
    import sparse_ref

    def impl(q, k, v, pattern, *, scale, softcap):  # type: ignore[no-untyped-def]
        assert q.dtype.name == dtype
        return sparse_ref.attention(q, k, v, pattern, scale=scale, softcap=softcap, return_lse=True)

    report = golden.check(impl, suite_dir, dtype=dtype)
    assert report.passed and report.counts()["pass"] == len(IDS)


def test_cli_check_bfloat16_json_and_only(suite_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = CliRunner().invoke(
        golden_app,
        [
            "check",
            str(suite_dir),
            "--impl",
            "sparse_ref:attention",
            "--dtype",
            "bfloat16",
            "--only",
            "causal-*",
            "--only",
            "custom-*",
            "--json",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["counts"]["pass"] == 3 and data["dtype"] == "bfloat16"


def test_cli_conformance_prints_the_matrix(suite_dir: Path) -> None:
    pytest.importorskip("torch")
    r = CliRunner().invoke(
        golden_app,
        ["conformance", str(suite_dir), "--peer", "sdpa-math", "--dtype", "float32"],
    )
    assert r.exit_code == 0, r.output
    assert "sdpa-math" in r.output and "6 passed, 1 unsupported" in r.output


def test_torch_bfloat16_results_are_accepted(suite_dir: Path) -> None:
    torch = pytest.importorskip("torch")

    def impl(q, k, v, pattern, *, scale, softcap):  # type: ignore[no-untyped-def]
        out, lse = _oracle(q, k, v, pattern, scale=scale, softcap=softcap)
        t = torch.from_numpy(out.astype(np.float32)).to(torch.bfloat16).requires_grad_()
        return t, torch.from_numpy(lse.astype(np.float32))

    report = golden.check(impl, suite_dir, dtype="bfloat16")
    assert report.passed and report.counts()["pass"] == len(IDS), report.details()
