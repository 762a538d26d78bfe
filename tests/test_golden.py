"""Golden suites: format, round trip, every rejected corruption, resume, determinism, check, CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sparse_ref import golden, oracle, patterns, testing
from sparse_ref.cli.golden import golden_app
from sparse_ref.golden import store, suites
from sparse_ref.golden.generate import compute_case
from sparse_ref.golden.suites import CaseSpec, Suite

TINY = Suite(
    "tiny",
    (
        CaseSpec("causal-f32", "causal", {"n_q": 12}, d=4, extra_tolerance_dtypes=("float16",)),
        CaseSpec(
            "window-gqa-f64",
            "sliding_window",
            {"n": 10, "left": 2, "right": 1},
            dtype="float64",
            heads=4,
            kv_heads=2,
            d=4,
            softcap=1.5,
        ),
        CaseSpec("emptyrows-f32", "custom_rows", {"n_k": 5, "rows": [[], [0, 4], []]}, d=4, d_v=3),
        CaseSpec(
            "stack-br-f32",
            "stack",
            {
                "heads": [
                    {"family": "causal", "params": {"n_q": 6, "n_k": 9, "align": "bottom_right"}},
                    {"family": "dense", "params": {"n_q": 6, "n_k": 9}},
                ]
            },
            batch=2,
            d=4,
        ),
        CaseSpec(
            "rows-f32",
            "causal_sliding_window",
            {"n": 64, "window": 8},
            heads=1,
            kv_heads=1,
            d=4,
            rows=20,
        ),
        CaseSpec(
            "topk-f64",
            "topk",
            {"per_row": 3, "data": {"q": "q", "k": "k"}, "shape": [9, 11]},
            dtype="float64",
            d=4,
        ),
    ),
)
IDS = [c.id for c in TINY.cases]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "tiny"
    golden.generate(TINY, out, progress=False)
    return out


@pytest.fixture
def suite_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "suite"
    shutil.copytree(tiny_dir, dst)
    return dst


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, m: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(m))


def _entry(m: dict, case_id: str) -> dict:
    return next(e for e in m["cases"] if e["id"] == case_id)


def _rehash(d: Path, case_id: str) -> None:
    """Make the manifest agree with the (tampered) file's size and sha256."""
    m = _manifest(d)
    e = _entry(m, case_id)
    data = (d / e["file"]).read_bytes()
    e["bytes"], e["sha256"] = len(data), store.sha256_hex(data)
    _write_manifest(d, m)


# ----------------------------------------------------------------------------- round trip
def test_round_trip_matches_the_oracle(tiny_dir: Path) -> None:
    cases = {c.id: c for c in golden.load(tiny_dir)}
    assert list(cases) == IDS
    for spec in TINY.cases:
        case = cases[spec.id]
        assert case.q.dtype == np.dtype(spec.dtype) and case.expected_out.dtype == np.float64
        inputs = {"q": case.q, "k": case.k}
        assert case.pattern == suites.build_pattern(spec.family, spec.params, inputs)
        assert case.pattern.fingerprint() == case.entry["pattern"]["fingerprint"]
        assert case.scale == spec.resolved_scale() and case.softcap == spec.softcap
        if case.rows is not None:
            out, lse = oracle.attention_rows(
                case.q,
                case.k,
                case.v,
                case.pattern,
                case.rows,
                scale=case.scale,
                softcap=case.softcap,
                return_lse=True,
            )
            assert len(case.rows) == 20 and case.dout is None and case.expected_dq is None
            np.testing.assert_array_equal(case.expected_out, out)
            np.testing.assert_array_equal(case.expected_lse, lse)
            continue
        ref = testing.oracle_reference(
            case.q,
            case.k,
            case.v,
            case.pattern,
            dtype=case.dtype,
            scale=case.scale,
            softcap=case.softcap,
        )
        np.testing.assert_array_equal(case.expected_out, ref.out.astype(np.float64))
        np.testing.assert_array_equal(case.expected_lse, ref.lse.astype(np.float64))
        assert case.tolerance["out"] == ref.out_tol and case.tolerance["lse"] == ref.lse_tol
        grads = oracle.attention_backward(
            case.q,
            case.k,
            case.v,
            case.pattern,
            case.dout,
            scale=case.scale,
            softcap=case.softcap,
            compute_dtype=testing.reference_dtype(case.dtype),
        )
        for name, g in zip(("dq", "dk", "dv"), grads, strict=True):
            np.testing.assert_array_equal(getattr(case, f"expected_{name}"), g.astype(np.float64))
    empty = cases["emptyrows-f32"]
    assert np.isneginf(empty.expected_lse[..., [0, 2]]).all()
    assert (empty.expected_out[..., [0, 2], :] == 0).all()
    assert set(cases["causal-f32"].tolerances) == {"float32", "float16", "bfloat16"}
    assert set(cases["window-gqa-f64"].tolerances) == {"float64", "float32", "float16", "bfloat16"}


def test_float32_inputs_are_exact_in_half_precision(tiny_dir: Path) -> None:
    case = next(golden.load(tiny_dir, only="causal-f32"))
    for arr in (case.q, case.k, case.v, case.dout):
        np.testing.assert_array_equal(arr.astype(np.float16).astype(np.float32), arr)


def test_manifest_records_what_design_section_8_asks(tiny_dir: Path) -> None:
    m = _manifest(tiny_dir)
    assert m["schema_version"] == store.SCHEMA_VERSION and m["suite"] == "tiny"
    assert m["complete"] and m["planned"] == len(IDS)
    assert {"numpy", "scipy", "safetensors", "python"} <= set(m["dependencies"])
    assert m["library"]["name"] == "sparse-ref"
    assert time.strptime(m["created_utc"], "%Y-%m-%dT%H:%M:%SZ")
    for e in m["cases"]:
        data = (tiny_dir / e["file"]).read_bytes()
        assert e["sha256"] == store.sha256_hex(data) and e["bytes"] == len(data)
        assert e["file"] == f"cases/{e['id']}.safetensors"
        assert {
            "id",
            "family",
            "params",
            "shapes",
            "dtype",
            "scale",
            "softcap",
            "seed",
            "tolerances",
            "pattern",
        } <= set(e)
        assert e["shapes"]["q"] == [e["batch"], e["heads"], e["n_q"], e["d"]]
        assert e["pattern"]["heads"] == 2 if e["id"] == "stack-br-f32" else 1


def test_case_files_are_standard_safetensors(tiny_dir: Path) -> None:
    from safetensors.numpy import load_file

    for case in golden.load(tiny_dir):
        loaded = load_file(str(tiny_dir / case.entry["file"]))
        np.testing.assert_array_equal(loaded["q"], case.q)
        np.testing.assert_array_equal(loaded["out"], case.expected_out)
        assert "pattern.indptr.h0" in loaded and "pattern.indices.h0" in loaded


def test_regeneration_is_byte_identical(tiny_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    golden.generate(TINY, again, progress=False)
    for case_id in IDS:
        rel = store.case_relpath(case_id)
        assert (again / rel).read_bytes() == (tiny_dir / rel).read_bytes(), case_id


def test_case_bytes_do_not_depend_on_the_blas_thread_count() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if "hierarchical" not in suites.catalog_families():
        pytest.skip("catalog lacks hierarchical")
    # a case whose float64 naive oracle rounds differently with 1 and 2 OpenBLAS threads (n_k = 213)
    spec = CaseSpec(
        "hierarchical-b16-n200-f64",
        "hierarchical",
        {"n": 200, "block": 16, "left": 8, "right": 8},
        dtype="float64",
        d=32,
        gradients=False,
    )
    digests = set()
    for threads in (1, 2, 4):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            digests.add(store.sha256_hex(compute_case(spec.to_json())[1]))
    assert len(digests) == 1


def test_expected_outputs_come_from_the_oracle_not_the_kernels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sparse_ref.backends

    def refuse(name: str):
        raise AssertionError(f"golden generation used backend {name}")

    monkeypatch.setattr(sparse_ref.backends, "get_backend", refuse)
    golden.generate(TINY.select(only="causal-f32"), tmp_path / "s", progress=False)


# ----------------------------------------------------------------------------- corruption
def _absolute(d: Path) -> str:
    m = _manifest(d)
    _entry(m, "causal-f32")["file"] = str((d / "cases/causal-f32.safetensors").resolve())
    _write_manifest(d, m)
    return "absolute"


def _dotdot(d: Path) -> str:
    m = _manifest(d)
    _entry(m, "causal-f32")["file"] = "cases/../../causal-f32.safetensors"
    _write_manifest(d, m)
    return r"'\.\.'"


def _symlink_out(d: Path) -> str:
    target = d.parent / "outside.safetensors"
    case = d / "cases/causal-f32.safetensors"
    shutil.copy(case, target)
    case.unlink()
    case.symlink_to(target)
    return "outside the suite"


def _symlink_dir_out(d: Path) -> str:
    shutil.copytree(d / "cases", d.parent / "elsewhere")
    shutil.rmtree(d / "cases")
    (d / "cases").symlink_to(d.parent / "elsewhere")
    return "outside the suite"


def _truncated(d: Path) -> str:
    path = d / "cases/causal-f32.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return "truncated"


def _truncated_consistent(d: Path) -> str:
    path = d / "cases/causal-f32.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _rehash(d, "causal-f32")
    return "truncated"


def _appended(d: Path) -> str:
    path = d / "cases/causal-f32.safetensors"
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    return "oversized"


def _header_edit(d: Path, edit) -> None:
    path = d / "cases/causal-f32.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    path.write_bytes(data[:8] + text + b" " * (n - len(text)) + data[8 + n :])
    _rehash(d, "causal-f32")


def _oversized_tensor(d: Path) -> str:
    def edit(h):
        h["q"]["shape"] = [1, 2, 12, 2]  # span stays 4 columns wide: more bytes than the shape

    _header_edit(d, edit)
    return "oversized"


def _tensor_past_end(d: Path) -> str:
    def edit(h):
        last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
        h[last]["data_offsets"][1] += 8
        h[last]["shape"][0] += 1 if len(h[last]["shape"]) == 1 else 0

    _header_edit(d, edit)
    return "truncated|oversized|undersized"


def _sha(d: Path) -> str:
    path = d / "cases/causal-f32.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    return "sha256 mismatch"


def _shape_disagreement(d: Path) -> str:
    m = _manifest(d)
    _entry(m, "causal-f32")["shapes"]["q"] = [1, 2, 12, 5]
    _write_manifest(d, m)
    return "shape disagreement"


def _fingerprint(d: Path) -> str:
    m = _manifest(d)
    _entry(m, "causal-f32")["pattern"]["fingerprint"] = "0" * 64
    _write_manifest(d, m)
    return "disagreement|fingerprint"


def _missing(d: Path) -> str:
    (d / "cases/causal-f32.safetensors").unlink()
    return "missing"


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PICKLE_RAN",))


def _pickle(d: Path) -> str:
    (d / "cases/causal-f32.safetensors").write_bytes(pickle.dumps(_Boom()))
    _rehash(d, "causal-f32")
    return "not a safetensors file"


def _bad_pattern(d: Path) -> str:
    path = d / "cases/causal-f32.safetensors"
    tensors, meta = store.decode_case(path.read_bytes())
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tensors["pattern.indices.h0"][3] = 99  # out of range for n_k = 12
    path.write_bytes(store.encode_case(tensors, json.loads(meta[store.METADATA_KEY])))
    _rehash(d, "causal-f32")
    return "pattern head 0 is invalid"


def _metadata_disagreement(d: Path) -> str:
    m = _manifest(d)
    _entry(m, "causal-f32")["seed"] += 1
    _write_manifest(d, m)
    return "disagreement on 'seed'"


def _extra_key(d: Path) -> str:
    m = _manifest(d)
    _entry(m, "causal-f32")["evil"] = 1
    _write_manifest(d, m)
    return "unexpected key 'evil'"


CORRUPTIONS = [
    _absolute,
    _dotdot,
    _symlink_out,
    _symlink_dir_out,
    _truncated,
    _truncated_consistent,
    _appended,
    _oversized_tensor,
    _tensor_past_end,
    _sha,
    _shape_disagreement,
    _fingerprint,
    _missing,
    _pickle,
    _bad_pattern,
    _metadata_disagreement,
    _extra_key,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_each_corruption_is_rejected_naming_the_case(
    corrupt, suite_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(suite_copy)
    message = corrupt(suite_copy)
    with pytest.raises(ValueError, match=rf"case 'causal-f32'.*({message})"):
        for _ in golden.load(suite_copy):
            pass
    assert not (suite_copy / "PICKLE_RAN").exists()
    if corrupt not in (_absolute, _dotdot, _extra_key):  # manifest-level: verify raises too
        results = {r.id: r for r in golden.verify(suite_copy)}
        assert not results["causal-f32"].ok
        assert results["window-gqa-f64"].ok == (corrupt is not _symlink_dir_out)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(schema_version=2), "unknown schema_version 2"),
        (lambda m: m.update(schema_version="1"), "unknown schema_version"),
        (lambda m: m["cases"].append(m["cases"][0]), "duplicate case id"),
        (lambda m: m.update(suite=7), "manifest.suite: expected string"),
        (lambda m: m["cases"][1].update(bytes=-1), "case 'window-gqa-f64'.*minimum"),
    ],
)
def test_bad_manifests_are_rejected(edit, message, suite_copy: Path) -> None:
    m = _manifest(suite_copy)
    edit(m)
    _write_manifest(suite_copy, m)
    with pytest.raises(ValueError, match=message):
        golden.load(suite_copy)


def test_verify_recompute_finds_a_tampered_reference(suite_copy: Path) -> None:
    results = golden.verify(suite_copy, recompute=True)
    assert all(r.ok and r.diffs == {"bytes": 0.0} for r in results), results
    path = suite_copy / "cases/window-gqa-f64.safetensors"
    tensors, meta = store.decode_case(path.read_bytes())
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tensors["out"][0, 1, 2, 3] += 1e-9  # consistent file and manifest, wrong value
    path.write_bytes(store.encode_case(tensors, json.loads(meta[store.METADATA_KEY])))
    _rehash(suite_copy, "window-gqa-f64")
    results = {r.id: r for r in golden.verify(suite_copy, recompute=True)}
    bad = results["window-gqa-f64"]
    assert not bad.ok and "out: recomputed differs" in bad.message
    assert bad.diffs["out"] == pytest.approx(1e-9, rel=1e-3)
    assert all(r.ok for r in results.values() if r.id != "window-gqa-f64")


def test_oversized_files_are_refused_before_reading(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="case 'causal-f32': oversized"):
        list(golden.load(tiny_dir, max_case_bytes=1000))


def test_not_a_suite(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no manifest.json"):
        golden.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        golden.load(tmp_path)


def test_shipped_schema_is_json_schema_and_accepts_a_manifest(tiny_dir: Path) -> None:
    schema = store.manifest_schema()
    assert schema["properties"]["schema_version"]["const"] == store.SCHEMA_VERSION
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(_manifest(tiny_dir), schema)


# ----------------------------------------------------------------------------- resume
def test_resume_after_an_interrupted_run(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial"

    def stop_after_four(case_id: str, seen=[]) -> None:  # noqa: B006 - a counter
        seen.append(case_id)
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        golden.generate(TINY, out, progress=False, on_case=stop_after_four)
    m = _manifest(out)
    assert not m["complete"] and [e["id"] for e in m["cases"]] == IDS[:4]
    problems = [r for r in golden.verify(out) if not r.ok]
    assert [r.id for r in problems] == ["<suite>"] and "incomplete" in problems[0].message
    (out / store.case_relpath(IDS[0])).unlink()  # deleted
    path = out / store.case_relpath(IDS[1])
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    # a file written just before the kill, not yet in the manifest, is kept
    meta, data = compute_case(TINY.cases[4].to_json())
    store.write_atomic(out / store.case_relpath(IDS[4]), data)
    with pytest.raises(FileExistsError):
        golden.generate(TINY, out, progress=False)
    result = golden.generate(TINY, out, resume=True, progress=False)
    assert sorted(result.kept) == sorted([IDS[2], IDS[3], IDS[4]])
    assert sorted(result.computed) == sorted([IDS[0], IDS[1], IDS[5]])
    assert _manifest(out)["complete"]
    assert all(r.ok for r in golden.verify(out))
    for case_id in IDS:
        rel = store.case_relpath(case_id)
        assert (out / rel).read_bytes() == (tiny_dir / rel).read_bytes()
    again = golden.generate(TINY, out, resume=True, progress=False)
    assert again.computed == [] and len(again.kept) == len(IDS)


def test_a_killed_generate_process_loses_nothing(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "killed"
    code = textwrap.dedent(
        f"""
        import time, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_golden import TINY
        from sparse_ref import golden
        golden.generate(TINY, {str(out)!r}, progress=False, on_case=lambda c: time.sleep(0.5))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(_manifest(out)["cases"]) >= 2:
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.05)
        else:
            pytest.fail("the generate process wrote nothing in 60 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    m = store.read_manifest(out)
    assert 2 <= len(m["cases"]) < len(IDS) and not m["complete"]
    result = golden.generate(TINY, out, resume=True, progress=False)
    assert len(result.kept) >= 2 and _manifest(out)["complete"]
    for case_id in IDS:
        rel = store.case_relpath(case_id)
        assert (out / rel).read_bytes() == (tiny_dir / rel).read_bytes()


# ----------------------------------------------------------------------------- check
def _oracle_impl(q, k, v, pattern, *, scale, softcap):
    return oracle.attention(q, k, v, pattern, scale=scale, softcap=softcap, return_lse=True)


def test_check_passes_the_oracle_with_lse_and_gradients(tiny_dir: Path) -> None:
    def bw(q, k, v, pattern, dout, *, scale, softcap):
        return oracle.attention_backward(q, k, v, pattern, dout, scale=scale, softcap=softcap)

    report = golden.check(_oracle_impl, tiny_dir, backward=bw)
    assert report.passed, report.failures
    assert all({"out", "lse"} <= set(r.errors) for r in report.results)
    assert {"dq", "dk", "dv"} <= set(report.results[0].errors)
    assert report.summary() == f"{len(IDS)} passed, 0 failed"


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "smoke"
    golden.generate("smoke", out, progress=False)
    return out


def test_check_passes_the_numba_kernel(smoke_dir: Path) -> None:
    pytest.importorskip(
        "sparse_ref.kernels.csr_forward", reason="Numba forward kernel not built yet"
    )
    import sparse_ref

    report = golden.check(sparse_ref.attention, smoke_dir)
    assert report.passed, [(r.id, r.message) for r in report.failures]
    assert len(report.results) == len(suites.build_suite("smoke").cases)


@pytest.mark.parametrize(
    "impl, message",
    [
        (
            lambda q, k, v, p, *, scale, softcap: oracle.attention(
                q, k, v, patterns.dense(*p.shape), scale=scale, softcap=softcap
            ),
            "exceeds",
        ),
        (
            lambda q, k, v, p, *, scale, softcap: oracle.attention(
                q, k, v, p, scale=scale * 1.001, softcap=softcap
            ),
            "exceeds",
        ),
        (
            lambda q, k, v, p, *, scale, softcap: oracle.attention(
                q, k, v, p, scale=scale, softcap=softcap, compute_dtype=np.float16
            ),
            "exceeds",
        ),
        (
            lambda q, k, v, p, *, scale, softcap: (
                oracle.attention(q, k, v, p, scale=scale, softcap=softcap),
                np.zeros(q.shape[:-1]),
            ),
            "lse",
        ),
        (lambda q, k, v, p, *, scale, softcap: np.zeros((1, 1)), "shape"),
        (lambda q, k, v, p, *, scale, softcap: 1 / 0, "ZeroDivisionError"),
    ],
    ids=["ignores-pattern", "wrong-scale", "float16-math", "bad-lse", "bad-shape", "raises"],
)
def test_check_fails_wrong_implementations(impl, message, tiny_dir: Path) -> None:
    report = golden.check(impl, tiny_dir)
    assert not report.passed
    assert any(message in r.message for r in report.failures)


def test_check_in_float16_uses_the_float16_tolerances(tiny_dir: Path) -> None:
    def half(q, k, v, p, *, scale, softcap):
        assert q.dtype == np.float16
        return oracle.attention(q, k, v, p, scale=scale, softcap=softcap, compute_dtype=np.float16)

    report = golden.check(half, tiny_dir, dtype="float16")
    assert all(r.errors for r in report.results) and report.passed  # every case stores float16
    for r, case in zip(report.results, golden.load(tiny_dir), strict=True):
        assert r.tolerances == {n: case.tolerances["float16"][n] for n in r.tolerances}


def test_check_fails_a_wrong_backward(tiny_dir: Path) -> None:
    def bad_bw(q, k, v, pattern, dout, *, scale, softcap):
        dq, dk, dv = oracle.attention_backward(q, k, v, pattern, dout, scale=scale, softcap=softcap)
        return dq, dk * 1.01, dv

    report = golden.check(_oracle_impl, tiny_dir, backward=bad_bw)
    assert not report.passed and all("dk" in r.message for r in report.failures)


def test_golden_cases_parametrize(tiny_dir: Path) -> None:
    params = testing.golden_cases(tiny_dir)
    assert [p.id for p in params] == IDS
    for param in params:
        (case,) = param.values
        out, lse = _oracle_impl(
            case.q, case.k, case.v, case.pattern, scale=case.scale, softcap=case.softcap
        )
        errs = case.assert_close(out, lse)
        assert errs["out"] <= case.tolerance["out"]


# ----------------------------------------------------------------------------- suites
def test_suite_contents() -> None:
    smoke = suites.build_suite("smoke")
    assert 0 < len(smoke.cases) <= 30
    default = suites.build_suite("default")
    have = suites.catalog_families()
    used = set().union(*(suites.spec_families(c.family, c.params) for c in default.cases))
    assert have <= used, f"catalog families missing from the default suite: {have - used}"
    assert {c.dtype for c in default.cases} == {"float32", "float64"}
    assert any(c.kv_heads < c.heads for c in default.cases)
    assert any(c.softcap for c in default.cases)
    stress = suites.build_suite("stress")
    for spec in stress.cases:
        assert spec.rows and not spec.gradients
    assert all(
        max(v for k, v in s.params.items() if k in ("n", "n_q")) >= 65536 for s in stress.cases
    )
    papers = {c.id for c in suites.SUITES["papers"]()}
    assert {
        "longformer-w512-g8-n4096",
        "mistral-w4096-n6144-gqa",
        "streamingllm-s4-w1020-n4096",
    } <= papers
    with pytest.raises(ValueError, match="unknown suite"):
        suites.build_suite("nope")


def test_missing_families_are_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suites, "catalog_families", lambda: frozenset({"causal", "dense"}))
    s = suites.build_suite("papers")
    assert not s.cases
    assert all("not available" in skip["reason"] for skip in s.skipped)
    assert len(s.skipped) == len(suites.SUITES["papers"]())


# ----------------------------------------------------------------------------- dask
def test_local_cluster_gives_the_same_bytes(tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="dask.distributed not installed (sparse-ref[dask])")
    out = tmp_path / "dask"
    result = golden.generate(TINY, out, workers=2, progress=False)
    assert sorted(result.computed) == sorted(IDS)
    for case_id in IDS:
        rel = store.case_relpath(case_id)
        assert (out / rel).read_bytes() == (tiny_dir / rel).read_bytes()


def test_scheduler_joins_a_running_cluster(tiny_dir: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        out = tmp_path / "sched"
        golden.generate(TINY, out, scheduler=cluster.scheduler_address, progress=False)
    for case_id in IDS:
        rel = store.case_relpath(case_id)
        assert (out / rel).read_bytes() == (tiny_dir / rel).read_bytes()


def test_missing_dask_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'sparse-ref\[dask\]'"):
        golden.generate(TINY, tmp_path / "x", workers=2, progress=False)


def test_workers_and_scheduler_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        golden.generate(TINY, tmp_path, workers=2, scheduler="tcp://x:1")


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def cli() -> typer.Typer:
    from sparse_ref.cli import app

    if not any(group.name == "golden" for group in app.registered_groups):  # not mounted (yet)
        app = typer.Typer()
        app.add_typer(golden_app, name="golden")
    return app


def test_cli_generate_list_verify_check(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = [
        "golden",
        "generate",
        "--suite",
        "smoke",
        "--out",
        str(out),
        "--only",
        "causal*",
        "--no-progress",
    ]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "computed" in r.output
    r = runner.invoke(cli, args)
    assert r.exit_code == 2 and "resume" in r.output
    r = runner.invoke(cli, args + ["--resume"])
    assert r.exit_code == 0 and "kept" in r.output
    r = runner.invoke(cli, ["golden", "list", str(out)])
    assert r.exit_code == 0 and "causal" in r.output
    r = runner.invoke(cli, ["golden", "verify", str(out), "--recompute"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["golden", "check", str(out), "--impl", "sparse_ref.oracle:attention"])
    assert r.exit_code == 0, r.output
    assert "passed, 0 failed" in r.output
    path = out / "cases" / os.listdir(out / "cases")[0]
    path.write_bytes(path.read_bytes()[:-1])
    r = runner.invoke(cli, ["golden", "verify", str(out)])
    assert r.exit_code == 1 and "truncated" in r.output


def test_cli_check_fails_a_wrong_impl(
    cli: typer.Typer, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "wrong_impl.py").write_text(
        "from sparse_ref import oracle\n"
        "def attention(q, k, v, pattern, *, scale, softcap):\n"
        "    return oracle.attention(q, k, v, pattern, scale=2 * scale, softcap=softcap)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    r = CliRunner().invoke(
        cli, ["golden", "check", str(tiny_dir), "--impl", "wrong_impl:attention"]
    )
    assert r.exit_code == 1 and "FAIL" in r.output
    r = CliRunner().invoke(cli, ["golden", "check", str(tiny_dir), "--impl", "no_such_mod:f"])
    assert r.exit_code == 2 and "cannot load" in r.output
