"""Tolerance rule v3: legitimate implementations pass in every dtype; the rule's parts behave.

The legitimate implementations are written here independently of ``sparse_ref.formulations``:
a FlashAttention-2 style NumPy kernel (key blocks, online softmax in base 2 with the scale folded
into ``log2(e)``, the natural-log lse stored, the backward recomputing P from it and
``delta = rowsum(dout * out)``), FlashAttention's ``attention_ref(reorder_ops=True)`` (q scaled
before q.k), torch SDPA (default CPU backend and MATH) and FlexAttention eager. Each is checked
on the default suite's hardest cases (one key per row, one query, scores near 200, softcap, GQA,
empty rows, bottom-right causal) in float64, float32, float16 and bfloat16.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from helpers import flash2, precision

from sparse_ref import golden, patterns, tolerance
from sparse_ref.golden import store
from sparse_ref.golden.suites import build_suite
from sparse_ref.validation import prepare

HARD = [
    "sliding_window-l0r0-n64-*",
    "n1-dense-*",
    "bigscores-causal-n64-*",
    "softcap5-causal-n128-*",
    "gqa-h8kv2-causal_sliding_window-w24-n160-*",
    "causal-br-q190k70-emptyrows-*",
    "causal-br-q70k190-*",
    "emptyrows-custom-*",
    "dv-d64dv16-causal-n100-*",
]
DTYPES = ["float64", "float32", "float16", "bfloat16"]


@pytest.fixture(scope="module")
def hard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rule") / "hard"
    golden.generate(build_suite("default").select(only=HARD), d, progress=False)
    return d


# ----------------------------------------------------------------------------- implementations
def reorder_ops(q, k, v, pattern, dout, *, scale, softcap):  # type: ignore[no-untyped-def]
    """FlashAttention's attention_ref(reorder_ops=True) forward: q * scale in the input dtype,
    then a plain masked softmax (float32 for 16-bit inputs); out only."""
    ct, rnd = precision(q.dtype)
    group = q.shape[1] // k.shape[1]
    kc, vc = (np.repeat(x, group, 1).astype(ct) for x in (k, v))
    qs = rnd(q.astype(ct) * ct(scale)).astype(ct)
    s = np.einsum("bhqd,bhkd->bhqk", qs, kc)
    if softcap is not None:
        s = ct(softcap) * np.tanh(s / ct(softcap))
    s = np.where(pattern.to_dense(), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - np.where(m == -np.inf, 0, m))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(p.sum(-1, keepdims=True) > 0, rnd(p / p.sum(-1, keepdims=True)), 0)
    return (
        rnd(np.einsum("bhqk,bhkd->bhqd", out.astype(ct), vc)).astype(q.dtype),
        None,
        None,
        None,
        None,
    )


IMPLS: dict[str, Any] = {"flash2-numpy": flash2, "reorder-ops-numpy": reorder_ops}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(IMPLS))
def test_numpy_formulations_pass(name: str, dtype: str, hard_dir: Path) -> None:
    report = golden.check(None, hard_dir, forward_backward=IMPLS[name], dtype=dtype)
    assert report.passed, report.details()
    assert report.counts()["pass"] == len(report.results) - report.counts()["skipped"] > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("peer", ["sdpa", "sdpa-math", "flex"])
def test_torch_peers_pass(peer: str, dtype: str, hard_dir: Path) -> None:
    pytest.importorskip("torch")
    from sparse_ref.golden import conformance

    matrix = conformance.run(hard_dir, peers=[peer], dtypes=[dtype])
    report = matrix.reports[(peer, dtype)]
    assert report.passed, report.details()
    counts = report.counts()
    assert counts["pass"] > 0
    if peer.startswith("sdpa"):  # SDPA has no softcap: the softcap cases only are unsupported
        assert {r.id for r in report.unsupported} == {
            r.id for r in report.results if r.id.startswith("softcap") and r.outcome != "skipped"
        }


# ----------------------------------------------------------------------------- the rule's parts
def _one_key_case(dtype: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    rng = np.random.default_rng(0)
    p = patterns.sliding_window(16, 0, 0)
    q, k, v, g = (rng.standard_normal((1, 2, 16, 8)) for _ in range(4))
    prep = prepare(q, k, v, p, check_finite=False)
    ref, tols = tolerance.backward_reference(q, k, v, p, g, prep.scale, None, [dtype])
    return ref, tols[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_floor_does_not_collapse_on_zero_gradients(dtype: str) -> None:
    ref, tol = _one_key_case(dtype)
    assert np.all(ref["dq"] == 0) and np.all(ref["dk"] == 0)  # one key per row: exactly zero
    unit = np.finfo(np.float64 if dtype == "float64" else np.float32).eps / 2
    assert tol["dq"] > 10 * unit and tol["dk"] > 10 * unit
    if dtype in ("float16", "bfloat16"):  # the float32 magnitude floor is far below their ulp
        assert tol["dq"] == pytest.approx(tolerance.rounding_floor(ref["dq"], dtype), rel=0.01)
    else:
        assert tol["dq"] < 1e-3  # still a rounding-level number, not a blanket pass


def test_worse_formulation_family_only_widens_the_baseline() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(100)
    a, b = ref + 1e-6, ref + 3e-6
    assert tolerance.baseline_error(ref, [a, b]) == pytest.approx(3e-6)
    assert tolerance.rule_tolerance(ref, [a, b], np.float32, 2.0) == pytest.approx(
        6e-6 + tolerance.rounding_floor(ref, np.float32)
    )


def test_bfloat16_rounding_floor_uses_bfloat16_spacing() -> None:
    ref = np.array([1.0, -0.5])
    floor = tolerance.rounding_floor(ref, "bfloat16")
    assert floor >= float(np.spacing(np.asarray(1.3, dtype=ml_dtypes.bfloat16)))
    assert (
        floor
        > tolerance.rounding_floor(ref, np.float16)
        > tolerance.rounding_floor(ref, np.float32)
    )


def test_manifest_names_rule_version_3(hard_dir: Path) -> None:
    manifest = store.read_manifest(hard_dir)
    assert manifest["tolerance_rule"]["version"] == tolerance.RULE_VERSION == 3
    assert store.rule_version(manifest) == 3
    for entry in manifest["cases"]:
        want = {"float16", "bfloat16", entry["dtype"]} | (
            {"float32"} if entry["dtype"] == "float64" else set()
        )
        assert set(entry["tolerances"]) == want


def _rewrite_suite(src: Path, dest: Path, rule: Any, edit: Any) -> None:
    """Copy the suite ``src`` to ``dest`` as an older writer left it: ``tolerance_rule`` set to
    ``rule`` and each entry's tolerances changed by ``edit(tolerances)`` (in place), in the
    manifest and in the case files that embed their entry, with the sha256 updated."""
    import shutil

    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["tolerance_rule"] = rule
    for entry in manifest["cases"]:
        edit(entry["tolerances"])
        path = dest / entry["file"]
        tensors, meta = store.decode_case(path.read_bytes(), entry["id"])
        inner = json.loads(meta[store.METADATA_KEY])
        inner["tolerances"] = entry["tolerances"]
        data = store.encode_case({n: np.array(a) for n, a in tensors.items()}, inner)
        path.write_bytes(data)
        entry["sha256"], entry["bytes"] = store.sha256_hex(data), len(data)
    (dest / "manifest.json").write_text(json.dumps(manifest))


def test_version_1_suites_are_still_read_and_checked(hard_dir: Path, tmp_path: Path) -> None:
    """A suite written under rule v1 (tolerance_rule a string, no bfloat16 tolerances)."""
    old = tmp_path / "v1"
    _rewrite_suite(
        hard_dir,
        old,
        "An implementation in dtype T passes a case if ...",
        lambda t: t.pop("bfloat16"),
    )
    assert store.rule_version(store.read_manifest(old)) == 1
    report = golden.check(None, old, forward_backward=flash2, dtype="float16")
    assert report.passed and not report.skipped
    assert all(
        r.outcome == "skipped"
        for r in golden.check(None, old, forward_backward=flash2, dtype="bfloat16").results
    )
    results = golden.verify(old, recompute=True, only="n1-dense-f32")
    assert all(r.ok for r in results), [r.message for r in results]


def _widen_forward(tolerances: dict[str, dict[str, float]]) -> None:
    for per_dtype in tolerances.values():
        per_dtype["out"] *= 1.1
        per_dtype["lse"] *= 1.1


def test_version_2_suites_are_read_and_their_tolerances_applied_as_stored(
    hard_dir: Path, tmp_path: Path
) -> None:
    """Rule v2's family had no online-softmax forward, so its stored forward tolerances differ
    from v3's: read, checked with the stored numbers, and not flagged by verify --recompute;
    the same numbers under the current version are flagged."""
    v2 = tmp_path / "v2"
    _rewrite_suite(hard_dir, v2, {"version": 2, "text": "Tolerance rule v2 ..."}, _widen_forward)
    assert store.rule_version(store.read_manifest(v2)) == 2
    stored = {e["id"]: e["tolerances"] for e in store.read_manifest(v2)["cases"]}
    report = golden.check(None, v2, forward_backward=flash2, dtype="float32")
    assert report.passed and not report.skipped
    for result in report.results:
        assert result.tolerances["out"] == pytest.approx(stored[result.id]["float32"]["out"])
    results = golden.verify(v2, recompute=True, only="n1-dense-f32")
    assert all(r.ok for r in results), [r.message for r in results]

    v3 = tmp_path / "v3"
    rule = {"version": tolerance.RULE_VERSION, "text": tolerance.RULE_TEXT}
    _rewrite_suite(hard_dir, v3, rule, _widen_forward)
    (result,) = golden.verify(v3, recompute=True, only="n1-dense-f32")
    assert not result.ok and "tolerance" in result.message


def test_files_are_written_as_the_umask_allows(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        golden.generate(
            build_suite("smoke").select(only="dense-n16-f32"), tmp_path / "s", progress=False
        )
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "s" / "manifest.json",
        tmp_path / "s" / "cases" / "dense-n16-f32.safetensors",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_refused_dask_run_leaves_nothing_that_blocks_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    suite = build_suite("smoke").select(only="dense-n16-f32")
    with pytest.raises(ImportError, match="dask"):
        golden.generate(suite, tmp_path / "s", workers=2, progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists()
    monkeypatch.delitem(sys.modules, "distributed")
    assert golden.generate(suite, tmp_path / "s", progress=False).cases == 1


def test_a_failed_first_run_removes_its_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    gen = importlib.import_module("sparse_ref.golden.generate")

    def boom(spec: Any) -> Any:
        raise RuntimeError("worker died")

    monkeypatch.setattr(gen, "compute_case", boom)
    suite = build_suite("smoke").select(only="dense-n16-f32")
    with pytest.raises(RuntimeError):
        gen.generate(suite, tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists()
