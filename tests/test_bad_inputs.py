"""The bad-input matrix (issue 10): one table of calls that must fail with a clear error.

Every row of ``ROWS`` is ``Row(id, call, exc, match)``: ``call()`` makes one bad call through a
public entry point (``attention``, ``attention_backward``, the ``Pattern`` constructors and
algebra, the catalog and ``patterns.build``, ``sparse_ref.interop``, golden suite reading, the
``sparse-ref`` command), and must raise exactly ``exc`` with a message matching the regex
``match``, which names the argument (or option, or golden case) and what was expected. Rows that
need torch (or matplotlib) carry ``needs="torch"`` and are skipped, with the reason, where it is
missing.

CLI rows run the typer app in-process (``CliRunner``): a clean non-zero exit becomes
:class:`CliFailed` carrying the exit code and the printed message; a traceback (any other
exception) fails the row.

Golden rows corrupt a copy of a real one-case suite generated once per session into a temporary
directory (``tmp_path_factory`` under pytest).

Crash safety: Numba kernels do no bounds checks, so an input that slipped past validation could
crash the interpreter instead of raising. Every row already runs in the pytest process (which must
survive it), and ``test_every_row_in_one_subprocess`` runs the whole table again in one child
process that announces each row before running it, so a segfault fails that test naming the row.

Inputs that must *work* (non-writeable, non-contiguous, negative-stride, Fortran-ordered,
broadcast and big-endian arrays; valid zero-size dimensions) are tested below the table.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import scipy.sparse as sp

import sparse_ref
from sparse_ref import Pattern, golden, oracle, patterns, testing, viz
from sparse_ref.blocks import BlockSparse
from sparse_ref.golden.suites import CaseSpec, Suite
from sparse_ref.interop import deepspeed, flashinfer, huggingface


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Row(NamedTuple):
    """One bad call: ``call()`` must raise ``exc`` with a message matching regex ``match``."""

    id: str
    call: Callable[[], Any]
    exc: type[BaseException]
    match: str
    needs: str | None = None  # a module ("torch", "matplotlib"): skipped where it is missing


# ------------------------------------------------------------------------------------- helpers
def _arr(*shape: int, dtype: Any = np.float64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _full(n_q: int = 6, n_k: int = 6) -> Pattern:
    return Pattern.from_dense(np.ones((n_q, n_k), dtype=bool))


def _attn(**over: Any) -> Any:
    """``attention`` on valid 2-D float64 inputs ``(6, 4)`` and a full pattern, with ``over``
    replacing any argument."""
    args: dict[str, Any] = {"q": _arr(6, 4), "k": _arr(6, 4, seed=1), "v": _arr(6, 4, seed=2)}
    args["pattern"] = _full()
    args.update(over)
    q, k, v, p = (args.pop(name) for name in ("q", "k", "v", "pattern"))
    return sparse_ref.attention(q, k, v, p, **args)


def _floats(dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Valid ``q, k, v`` for :func:`_attn` / :func:`_bw` in ``dtype``."""
    return {
        "q": _arr(6, 4, dtype=dtype),
        "k": _arr(6, 4, seed=1, dtype=dtype),
        "v": _arr(6, 4, seed=2, dtype=dtype),
    }


def _bw(**over: Any) -> Any:
    """``attention_backward`` on valid inputs like :func:`_attn` plus ``dout``, ``out`` and
    ``lse`` from a real forward, with ``over`` replacing any argument."""
    q, k, v, p = _arr(6, 4), _arr(6, 4, seed=1), _arr(6, 4, seed=2), _full()
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True)
    args: dict[str, Any] = {"q": q, "k": k, "v": v, "pattern": p, "dout": _arr(6, 4, seed=3)}
    args.update(out=out, lse=lse)
    args.update(over)
    q, k, v, p, dout = (args.pop(name) for name in ("q", "k", "v", "pattern", "dout"))
    return sparse_ref.attention_backward(q, k, v, p, dout, **args)


def _csr(indptr: Any, indices: Any, shape: Any = (2, 3), **kw: Any) -> Pattern:
    return Pattern.from_csr((indptr, indices, shape), **kw)


def _two_heads() -> Pattern:
    return Pattern.stack([patterns.causal(8), patterns.dense(8)])


class _GpuOnly:
    """Looks like a CuPy array to the CPU path: only ``__cuda_array_interface__``."""

    __cuda_array_interface__ = {"shape": (6, 4), "typestr": "<f8", "version": 3}


# golden: a one-case suite generated once, corrupted copy by copy -----------------------------
_MINI = Suite("mini", (CaseSpec("causal-f32", "causal", {"n_q": 6}, d=4),))
_WORK: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _workdir_in_tmp_path(tmp_path_factory: pytest.TempPathFactory) -> None:
    _WORK["root"] = tmp_path_factory.mktemp("bad_inputs")


def _workdir() -> Path:
    if "root" not in _WORK:  # outside pytest (the subprocess runner sets it too)
        _WORK["root"] = Path(tempfile.mkdtemp(prefix="sparse-ref-bad-inputs-"))
    return _WORK["root"]


def _suite(edit: Callable[[Path, dict[str, Any], dict[str, Any]], None] | None = None) -> Path:
    """A fresh copy of the one-case suite after ``edit(dir, manifest, entry)``; the manifest is
    written back afterwards unless the edit replaced the file."""
    base = _workdir() / "base"
    if not (base / "manifest.json").exists():
        golden.generate(_MINI, base, progress=False)
    dst = Path(tempfile.mkdtemp(prefix="suite-", dir=_workdir()))
    shutil.copytree(base, dst, dirs_exist_ok=True)
    if edit is not None:
        path = dst / "manifest.json"
        manifest = json.loads(path.read_text())
        before = path.read_bytes()
        edit(dst, manifest, manifest["cases"][0])
        if path.read_bytes() == before:
            path.write_text(json.dumps(manifest))
    return dst


def _case_file(d: Path) -> Path:
    return d / "cases" / "causal-f32.safetensors"


def _truncate(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    _case_file(d).write_bytes(_case_file(d).read_bytes()[:-16])


def _flip_last_byte(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    data = bytearray(_case_file(d).read_bytes())
    data[-1] ^= 0x01
    _case_file(d).write_bytes(bytes(data))


def _bad_json(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    (d / "manifest.json").write_text('{"schema_version": 1, "cases": [')


def _future_schema(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    m["schema_version"] = 99


def _dotdot(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    e["file"] = "cases/../../outside.safetensors"


def _absolute(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    e["file"] = "/etc/passwd"


def _shape_disagrees(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    e["shapes"]["q"] = [1, 2, 6, 5]


def _missing_file(d: Path, m: dict[str, Any], e: dict[str, Any]) -> None:
    _case_file(d).unlink()


def _load(d: Path) -> list[Any]:
    return list(golden.load(d))


def _oracle_impl(q: Any, k: Any, v: Any, pattern: Pattern, *, scale: Any, softcap: Any) -> Any:
    return sparse_ref.attention(q, k, v, pattern, scale=scale, softcap=softcap, backend="oracle")


# CLI -----------------------------------------------------------------------------------------
class CliFailed(Exception):
    """A ``sparse-ref`` call that exited non-zero without a traceback; the message holds the exit
    code and the printed output (whitespace and box-drawing characters collapsed)."""


_BOX = str.maketrans("", "", "│╭╮╰╯─┃━")


def _cli(*args: str) -> None:
    from typer.testing import CliRunner

    from sparse_ref.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code == 0:
        return
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an uncaught error: a traceback for the user, the row fails
    text = " ".join(result.output.translate(_BOX).split())
    if "Traceback" in text:
        raise AssertionError(f"the command printed a traceback: {text}")
    raise CliFailed(f"exit {result.exit_code}: {text}")


def _missing_dir() -> str:
    return str(_workdir() / "no-such-suite")


# torch ---------------------------------------------------------------------------------------
def _torch() -> Any:
    import torch

    return torch


def _torch_csr(crow: list[int], col: list[int], shape: tuple[int, int]) -> Any:
    torch = _torch()
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.tensor(crow),
            torch.tensor(col),
            torch.ones(len(col)),
            size=shape,
            check_invariants=False,  # a corrupt tensor, as user code can build one
        )


def _flex_mask() -> Any:
    from sparse_ref.interop import torch as ti

    return ti.to_flex_block_mask(patterns.causal(8), 4)


def _ti() -> Any:
    from sparse_ref.interop import torch as ti

    return ti


_HF_PLAN = [[[3], [4], [1], [2]]]  # one head, nb = 6 blocks, one random block per row

# ----------------------------------------------------------------------------------- the table
# fmt: off
ROWS: list[Row] = [
    # attention: ranks and shapes --------------------------------------------------------------
    Row("attn-q-5d", lambda: _attn(q=np.ones((1, 1, 1, 6, 4))), ValueError, r"q must be 2-D .* got 5-D"),
    Row("attn-q-1d", lambda: _attn(q=np.ones(4)), ValueError, r"q must be 2-D .* got 1-D"),
    Row("attn-k-rank", lambda: _attn(k=np.ones((1, 6, 4))), ValueError, r"k must have the same rank as q \(2-D\), got 3-D"),
    Row("attn-k-d", lambda: _attn(k=np.ones((6, 5))), ValueError, r"k must have the head dimension of q \(d = 4\), got 5"),
    Row("attn-v-length", lambda: _attn(v=np.ones((5, 4))), ValueError, r"v must have the heads and length of k .*n_k = 6"),
    Row("attn-v-heads", lambda: _attn(q=np.ones((2, 6, 4)), k=np.ones((2, 6, 4)), v=np.ones((1, 6, 4))), ValueError, r"v must have the heads and length of k \(H_kv = 2"),
    Row("attn-batch", lambda: _attn(q=np.ones((2, 1, 6, 4)), k=np.ones((1, 1, 6, 4)), v=np.ones((1, 1, 6, 4))), ValueError, r"batch sizes differ: q has 2, k has 1"),
    Row("attn-gqa-ratio", lambda: _attn(q=np.ones((3, 6, 4)), k=np.ones((2, 6, 4)), v=np.ones((2, 6, 4))), ValueError, r"q heads H = 3 must be a multiple of k/v heads H_kv = 2"),
    Row("attn-zero-kv-heads", lambda: _attn(q=np.ones((0, 6, 4)), k=np.ones((0, 6, 4)), v=np.ones((0, 6, 4))), ValueError, r"multiple of k/v heads H_kv = 0"),
    Row("attn-zero-d", lambda: _attn(q=np.ones((6, 0)), k=np.ones((6, 0))), ValueError, r"q must have head dimension d >= 1, got d = 0"),
    Row("attn-pattern-nq", lambda: _attn(pattern=_full(5, 6)), ValueError, r"pattern has shape \(5, 6\) but q/k give \(n_q, n_k\) = \(6, 6\)"),
    Row("attn-pattern-nk", lambda: _attn(pattern=_full(6, 7)), ValueError, r"pattern has shape \(6, 7\) but q/k give"),
    Row("attn-pattern-empty-shape", lambda: _attn(pattern=Pattern.from_csr(sp.csr_array((0, 6)))), ValueError, r"pattern has shape \(0, 6\)"),
    Row("attn-pattern-heads", lambda: _attn(q=np.ones((4, 6, 4)), k=np.ones((4, 6, 4)), v=np.ones((4, 6, 4)), pattern=Pattern.from_dense(np.ones((2, 6, 6), dtype=bool))), ValueError, r"pattern has 2 heads; expected 1 \(shared\) or H = 4"),
    Row("attn-pattern-type", lambda: _attn(pattern=np.ones((6, 6), dtype=bool)), TypeError, r"pattern must be a sparse_ref.Pattern, got ndarray"),
    # attention: dtypes and array types --------------------------------------------------------
    Row("attn-int", lambda: _attn(q=np.ones((6, 4), dtype=np.int64)), TypeError, r"q must have a floating dtype .* got int64"),
    Row("attn-complex", lambda: _attn(k=np.ones((6, 4), dtype=np.complex128)), TypeError, r"k must have a floating dtype .* got complex128"),
    Row("attn-object", lambda: _attn(v=np.ones((6, 4), dtype=object)), TypeError, r"v must have a floating dtype .* got object"),
    Row("attn-bool", lambda: _attn(q=np.ones((6, 4), dtype=bool)), TypeError, r"q must have a floating dtype .* got bool"),
    Row("attn-longdouble", lambda: _attn(q=np.ones((6, 4), dtype=np.longdouble)), TypeError, r"q must have a floating dtype \(float64, float32, float16, bfloat16\)"),
    Row("attn-strings", lambda: _attn(q=np.full((6, 4), "a")), TypeError, r"q must have a floating dtype .* got <U1"),
    Row("attn-mixed", lambda: _attn(q=np.ones((6, 4), dtype=np.float32)), TypeError, r"mixed dtypes: q is float32 but k is float64"),
    Row("attn-mixed-big-endian", lambda: _attn(q=np.ones((6, 4), dtype=">f4")), TypeError, r"mixed dtypes: q is float32 but k is float64"),
    Row("attn-big-endian-int", lambda: _attn(q=np.ones((6, 4), dtype=">i4")), TypeError, r"q must have a floating dtype .* got int32"),
    Row("attn-list", lambda: _attn(q=[[1.0] * 4] * 6), TypeError, r"q must be an array \(NumPy, or any object with __dlpack__ or __array__\), got list"),
    Row("attn-str", lambda: _attn(q="abc"), TypeError, r"q must be an array .* got str"),
    Row("attn-gpu-array", lambda: _attn(k=_GpuOnly()), TypeError, r"k is a GPU array; pass backend='cupy'"),
    # attention: values and options ------------------------------------------------------------
    Row("attn-nan", lambda: _attn(q=np.full((6, 4), np.nan)), ValueError, r"q contains NaN or Inf; pass check_finite=False"),
    Row("attn-inf", lambda: _attn(v=np.full((6, 4), np.inf)), ValueError, r"v contains NaN or Inf"),
    Row("attn-minus-inf", lambda: _attn(k=np.where(np.eye(6, 4) > 0, -np.inf, 1.0)), ValueError, r"k contains NaN or Inf"),
    Row("attn-scale-str", lambda: _attn(scale="x"), TypeError, r"scale must be a real number or None, got str"),
    Row("attn-scale-complex", lambda: _attn(scale=1j), TypeError, r"scale must be a real number or None, got complex"),
    Row("attn-scale-nan", lambda: _attn(scale=float("nan")), ValueError, r"scale must be finite, got nan"),
    Row("attn-scale-inf", lambda: _attn(scale=float("inf")), ValueError, r"scale must be finite, got inf"),
    Row("attn-scale-overflows-float32", lambda: _attn(**_floats(), scale=1e39), ValueError, r"scale = 1e\+39 overflows in float32, the compute dtype of float32 inputs"),
    Row("attn-softcap-overflows-float32", lambda: _attn(**_floats(), softcap=1e39), ValueError, r"softcap = 1e\+39 overflows in float32"),
    Row("attn-softcap-underflows-float32", lambda: _attn(**_floats(), softcap=1e-50), ValueError, r"softcap = 1e-50 rounds to 0 in float32"),
    Row("bw-softcap-underflows-float16", lambda: _bw(**_floats(np.float16), out=None, lse=None, dout=np.ones((6, 4), np.float16), softcap=1e-50), ValueError, r"softcap = 1e-50 rounds to 0 in float32, the compute dtype of float16 inputs"),
    Row("attn-softcap-negative", lambda: _attn(softcap=-1.0), ValueError, r"softcap must be a positive finite number or None, got -1.0"),
    Row("attn-softcap-zero", lambda: _attn(softcap=0), ValueError, r"softcap must be a positive finite number or None, got 0"),
    Row("attn-softcap-bool", lambda: _attn(softcap=True), TypeError, r"softcap must be a positive real number or None, got bool"),
    Row("attn-backend-name", lambda: _attn(backend="torch"), ValueError, r"backend must be one of \['cupy', 'numba', 'oracle'\] or 'auto', got 'torch'"),
    Row("attn-backend-none", lambda: _attn(backend=None), ValueError, r"backend must be one of .* got None"),
    Row("attn-check-finite-str", lambda: _attn(check_finite="yes"), TypeError, r"check_finite must be a bool, got str"),
    Row("attn-return-lse-str", lambda: _attn(return_lse="yes"), TypeError, r"return_lse must be a bool, got str"),
    # attention_backward -----------------------------------------------------------------------
    Row("bw-dout-shape", lambda: _bw(dout=np.ones((5, 4))), ValueError, r"dout must have shape \(6, 4\), got \(5, 4\)"),
    Row("bw-dout-rank", lambda: _bw(dout=np.ones((1, 6, 4))), ValueError, r"dout must have the same rank as q \(2-D\), got 3-D"),
    Row("bw-dout-mixed", lambda: _bw(dout=np.ones((6, 4), dtype=np.float32)), TypeError, r"mixed dtypes: q is float64 but dout is float32"),
    Row("bw-dout-int", lambda: _bw(dout=np.ones((6, 4), dtype=np.int32)), TypeError, r"dout must have a floating dtype .* got int32"),
    Row("bw-dout-nan", lambda: _bw(dout=np.full((6, 4), np.nan)), ValueError, r"dout contains NaN or Inf"),
    Row("bw-out-shape", lambda: _bw(out=np.ones((5, 4))), ValueError, r"out must have shape \(6, 4\), got \(5, 4\)"),
    Row("bw-out-without-lse", lambda: _bw(lse=None), ValueError, r"pass both out and lse .*or neither"),
    Row("bw-lse-without-out", lambda: _bw(out=None), ValueError, r"pass both out and lse"),
    Row("bw-lse-dtype", lambda: _bw(lse=np.zeros(6, dtype=np.float32)), TypeError, r"lse must be float64 for float64 inputs .* got float32"),
    Row("bw-lse-shape", lambda: _bw(lse=np.zeros(5)), ValueError, r"lse must have shape \(6,\) \(q's shape without d\), got \(5,\)"),
    Row("bw-lse-nan", lambda: _bw(lse=np.full(6, np.nan)), ValueError, r"lse contains NaN or \+inf"),
    Row("bw-lse-plus-inf", lambda: _bw(lse=np.full(6, np.inf)), ValueError, r"lse contains NaN or \+inf \(-inf is allowed"),
    Row("bw-gqa-ratio", lambda: _bw(q=np.ones((3, 6, 4)), k=np.ones((2, 6, 4)), v=np.ones((2, 6, 4)), dout=np.ones((3, 6, 4)), out=None, lse=None), ValueError, r"q heads H = 3 must be a multiple of k/v heads H_kv = 2"),
    Row("bw-pattern-shape", lambda: _bw(pattern=_full(6, 5)), ValueError, r"pattern has shape \(6, 5\) but q/k give"),
    Row("bw-backend", lambda: _bw(backend="jax"), ValueError, r"backend must be one of .* got 'jax'"),
    Row("bw-check-finite-int", lambda: _bw(check_finite=1), TypeError, r"check_finite must be a bool, got int"),
    # the oracle -------------------------------------------------------------------------------
    Row("oracle-rows-out-of-range", lambda: oracle.attention_rows(_arr(6, 4), _arr(6, 4), _arr(6, 4), _full(), rows=[6]), ValueError, r"rows must lie in \[0, n_q = 6\)"),
    Row("oracle-rows-float", lambda: oracle.attention_rows(_arr(6, 4), _arr(6, 4), _arr(6, 4), _full(), rows=[1.5]), TypeError, r"rows must be a 1-D integer array, got float64"),
    Row("oracle-chunk-zero", lambda: oracle.attention(_arr(6, 4), _arr(6, 4), _arr(6, 4), _full(), chunk=0), ValueError, r"chunk must be a positive int or None, got 0"),
    Row("oracle-compute-dtype-int", lambda: oracle.attention(_arr(6, 4), _arr(6, 4), _arr(6, 4), _full(), compute_dtype=np.int32), TypeError, r"compute_dtype must be a NumPy floating dtype, got int32"),
    Row("oracle-compute-dtype-junk", lambda: oracle.attention_backward(_arr(6, 4), _arr(6, 4), _arr(6, 4), _full(), _arr(6, 4), compute_dtype="nope"), TypeError, r"compute_dtype must be a NumPy floating dtype, got 'nope'"),
    Row("oracle-rows-compute-dtype", lambda: oracle.attention_rows(_arr(6, 4), _arr(6, 4), _arr(6, 4), _full(), rows=[0], compute_dtype=np.complex128), TypeError, r"compute_dtype must be a NumPy floating dtype, got complex128"),
    # pictures ---------------------------------------------------------------------------------
    Row("viz-text-width-zero", lambda: viz.text_picture(_full(), width=0), ValueError, r"width must be a positive int, got 0"),
    Row("viz-text-height-float", lambda: viz.text_picture(_full(), height=2.5), TypeError, r"height must be a positive int, got float"),
    Row("viz-max-pixels-str", lambda: viz.density_image(_full(), max_pixels="8"), TypeError, r"max_pixels must be a positive int, got str"),
    Row("oracle-gqa-ratio", lambda: oracle.attention(np.ones((3, 6, 4)), np.ones((2, 6, 4)), np.ones((2, 6, 4)), _full()), ValueError, r"q heads H = 3 must be a multiple of k/v heads H_kv = 2"),
    # Pattern.from_dense -----------------------------------------------------------------------
    Row("dense-int-mask", lambda: Pattern.from_dense(np.ones((3, 3), dtype=int)), TypeError, r"mask must be a bool array, got dtype int64"),
    Row("dense-1d", lambda: Pattern.from_dense(np.ones(3, dtype=bool)), ValueError, r"mask must be 2-D \(n_q, n_k\) or 3-D \(H, n_q, n_k\), got 1-D"),
    Row("dense-4d", lambda: Pattern.from_dense(np.ones((1, 1, 3, 3), dtype=bool)), ValueError, r"mask must be 2-D .* got 4-D"),
    Row("dense-zero-heads", lambda: Pattern.from_dense(np.ones((0, 3, 3), dtype=bool)), ValueError, r"mask must have at least one head"),
    # Pattern.from_csr -------------------------------------------------------------------------
    Row("csr-index-out-of-range", lambda: _csr([0, 1, 2], [0, 5]), ValueError, r"indices out of range: row 1 has key 5, expected 0 <= key < n_k = 3"),
    Row("csr-index-negative", lambda: _csr([0, 1, 2], [0, -1]), ValueError, r"indices out of range: row 1 has key -1"),
    Row("csr-index-huge-uint64", lambda: _csr([0, 1, 2], np.array([0, 2**63 + 5], dtype=np.uint64)), ValueError, r"indices\[1\] = 9223372036854775813 is out of range"),
    Row("csr-unsorted", lambda: _csr([0, 2, 2], [2, 1]), ValueError, r"indices must be strictly increasing within each row .*row 0 is not. Pass sort=True"),
    Row("csr-duplicate", lambda: _csr([0, 0, 2], [1, 1]), ValueError, r"indices must be strictly increasing .*row 1 is not"),
    Row("csr-indptr-decreasing", lambda: _csr([0, 2, 1], [1]), ValueError, r"indptr must be non-decreasing: indptr\[2\] = 1 < indptr\[1\] = 2 \(row 1\)"),
    Row("csr-indptr-length", lambda: _csr([0, 1], [1]), ValueError, r"indptr must have length n_q \+ 1 = 3, got 2"),
    Row("csr-indptr-start", lambda: _csr([1, 1, 1], []), ValueError, r"indptr\[0\] must be 0, got 1"),
    Row("csr-indptr-end", lambda: _csr([0, 1, 1], [1, 2]), ValueError, r"indptr\[-1\] = 1 must equal len\(indices\) = 2"),
    Row("csr-float-indices", lambda: _csr([0, 1, 1], [1.0]), TypeError, r"indices must have an integer dtype, got float64"),
    Row("csr-bool-indices", lambda: _csr([0, 1, 1], [True]), TypeError, r"indices must have an integer dtype, got bool"),
    Row("csr-float-indptr", lambda: _csr(np.array([0.0, 1.0, 1.0]), [1]), TypeError, r"indptr must have an integer dtype, got float64"),
    Row("csr-indices-2d", lambda: _csr([0, 1, 1], [[1]]), ValueError, r"indices must be 1-D, got shape \(1, 1\)"),
    Row("csr-shape-negative", lambda: _csr([0, 1, 1], [1], (2, -3)), ValueError, r"shape must be a pair \(n_q, n_k\) of non-negative ints, got \(2, -3\)"),
    Row("csr-not-csr", lambda: Pattern.from_csr(np.eye(3)), TypeError, r"csr must be a scipy sparse matrix/array or a tuple \(indptr, indices, shape\), got ndarray"),
    Row("csr-sort-str", lambda: _csr([0, 1, 1], [1], sort="yes"), TypeError, r"sort must be a bool, got str"),
    # Pattern.from_predicate -------------------------------------------------------------------
    Row("pred-int-result", lambda: Pattern.from_predicate(lambda i, j: i + j, 4), TypeError, r"fn must return a bool array, got dtype int64"),
    Row("pred-shape", lambda: Pattern.from_predicate(lambda i, j: np.ones((2, 2), dtype=bool), 4), ValueError, r"fn returned shape \(2, 2\), not broadcastable to \(4, 4\)"),
    Row("pred-not-callable", lambda: Pattern.from_predicate(3, 4), TypeError, r"fn must be callable"),
    Row("pred-n-negative", lambda: Pattern.from_predicate(lambda i, j: j <= i, -1), ValueError, r"n_q must be >= 0, got -1"),
    Row("pred-n-float", lambda: Pattern.from_predicate(lambda i, j: j <= i, 4, 4.0), TypeError, r"n_k must be an int, got float"),
    Row("pred-tile-zero", lambda: Pattern.from_predicate(lambda i, j: j <= i, 4, tile=0), ValueError, r"tile must be a positive int, got 0"),
    # Pattern.from_block_layout / from_bsr / BlockSparse.from_arrays ---------------------------
    Row("layout-block-zero", lambda: Pattern.from_block_layout([[True]], 0), ValueError, r"block must be >= 1, got 0"),
    Row("layout-block-negative", lambda: Pattern.from_block_layout([[True]], -2), ValueError, r"block must be >= 1, got -2"),
    Row("layout-block-float", lambda: Pattern.from_block_layout([[True]], 2.0), TypeError, r"block must be an int, got float"),
    Row("layout-block-triple", lambda: Pattern.from_block_layout([[True]], (2, 2, 2)), TypeError, r"block must be an int or a pair \(bq, bk\), got \(2, 2, 2\)"),
    Row("layout-bk-zero", lambda: Pattern.from_block_layout([[True]], (2, 0)), ValueError, r"block\[1\] \(bk\) must be >= 1, got 0"),
    Row("layout-int", lambda: Pattern.from_block_layout([[1]], 2), TypeError, r"layout must be a bool array, got dtype int64"),
    Row("layout-4d", lambda: Pattern.from_block_layout(np.ones((1, 1, 1, 1), dtype=bool), 2), ValueError, r"layout must be 2-D \(nbq, nbk\) or 3-D \(H, nbq, nbk\), got 4-D"),
    Row("layout-nq-does-not-fit", lambda: Pattern.from_block_layout([[True]], 2, n_q=5), ValueError, r"n_q = 5 does not fit the layout's 1 blocks of 2: need 0 < n_q <= 2"),
    Row("layout-nk-negative", lambda: Pattern.from_block_layout([[True]], 2, n_k=-1), ValueError, r"n_k must be >= 0, got -1"),
    Row("bsr-not-bsr", lambda: Pattern.from_bsr(sp.csr_array(np.eye(2))), TypeError, r"bsr must be a BlockSparse or a scipy BSR array/matrix, got csr_array"),
    Row("bsr-shape-does-not-fit", lambda: Pattern.from_bsr(sp.bsr_array(np.eye(4, dtype=bool), blocksize=(2, 2)), shape=(1, 4)), ValueError, r"shape: n_q = 1 does not fit the 2 blocks of 2 of the BSR array"),
    Row("bsr-sort-int", lambda: Pattern.from_bsr(sp.bsr_array(np.eye(4, dtype=bool), blocksize=(2, 2)), sort=1), TypeError, r"sort must be a bool, got int"),
    Row("blocks-column-out-of-range", lambda: BlockSparse.from_arrays([0, 1, 1], [3], 2, (4, 4)), ValueError, r"block column out of range: block row 0 has 3, expected 0 <= block column < nbk = 2"),
    Row("blocks-unsorted", lambda: BlockSparse.from_arrays([0, 2, 2], [1, 0], 2, (4, 4)), ValueError, r"block columns must be strictly increasing within each block row; block row 0"),
    Row("blocks-indptr-decreasing", lambda: BlockSparse.from_arrays([0, 2, 1], [0], 2, (4, 4)), ValueError, r"indptr must start at 0 and be non-decreasing \(head 0, block row 1\)"),
    Row("blocks-indptr-length", lambda: BlockSparse.from_arrays([0, 1], [0], 2, (4, 4)), ValueError, r"indptr must have length nbq \+ 1 = 3 per head"),
    Row("blocks-masks-shape", lambda: BlockSparse.from_arrays([0, 1, 1], [0], 2, (4, 4), full=[False]), ValueError, r"masks must be bool of shape \(n_partial = 1, 2, 2\)"),
    # Pattern: algebra, stack, conversions -----------------------------------------------------
    Row("stack-empty", lambda: Pattern.stack([]), ValueError, r"heads must hold at least one Pattern"),
    Row("stack-not-pattern", lambda: Pattern.stack([_full(), 3]), TypeError, r"heads\[1\] must be a Pattern, got int"),
    Row("stack-shape", lambda: Pattern.stack([_full(), _full(5, 6)]), ValueError, r"heads\[1\] has shape \(5, 6\), heads\[0\] has \(6, 6\)"),
    Row("union-shape", lambda: _full() | _full(5, 6), ValueError, r"shapes differ: \(6, 6\) vs \(5, 6\)"),
    Row("intersection-heads", lambda: Pattern.from_dense(np.ones((2, 3, 3), dtype=bool)) & Pattern.from_dense(np.ones((3, 3, 3), dtype=bool)), ValueError, r"head counts differ: 2 vs 3"),
    Row("pattern-truth-value", lambda: bool(_full()), TypeError, r"truth value of a Pattern is ambiguous; use p \| q"),
    Row("pattern-direct", lambda: Pattern(), TypeError, r"Pattern is not built directly"),
    Row("pattern-causal-align", lambda: _full().causal("left"), ValueError, r"align must be 'top_left' or 'bottom_right', got 'left'"),
    Row("to-csr-head", lambda: _two_heads().to_csr(5), ValueError, r"head must be in \[0, 2\), got 5"),
    Row("to-csr-head-float", lambda: _two_heads().to_csr(1.0), TypeError, r"head must be an int, got float"),
    Row("to-bsr-block-zero", lambda: _full().to_bsr(0), ValueError, r"block must be >= 1, got 0"),
    Row("to-dense-limit", lambda: patterns.dense(1 << 15, block=1024).to_dense(), ValueError, r"to_dense would build \d+ bools .*pass force=True"),
    # catalog ----------------------------------------------------------------------------------
    Row("cat-window-left-negative", lambda: patterns.sliding_window(8, -1, 0), ValueError, r"left must be >= 0, got -1"),
    Row("cat-window-right-float", lambda: patterns.sliding_window(8, 1, 1.5), TypeError, r"right must be an int, got float 1.5"),
    Row("cat-causal-window-negative", lambda: patterns.causal_sliding_window(8, -3), ValueError, r"window must be >= 0, got -3"),
    Row("cat-causal-window-bool", lambda: patterns.causal_sliding_window(8, True), TypeError, r"window must be an int, got bool"),
    Row("cat-causal-align", lambda: patterns.causal(8, align="x"), ValueError, r"align must be one of 'top_left', 'bottom_right', got 'x'"),
    Row("cat-causal-n-negative", lambda: patterns.causal(-1), ValueError, r"n_q must be >= 0, got -1"),
    Row("cat-block-zero", lambda: patterns.causal(8, block=0), ValueError, r"block must be >= 1, got 0"),
    Row("cat-block-one-element", lambda: patterns.sliding_window(8, 1, 1, block=(2,)), TypeError, r"block must be an int or a pair \(bq, bk\), got \(2,\)"),
    Row("cat-random-seed-float", lambda: patterns.random(8, per_row=2, seed=1.5), TypeError, r"seed must be an int, got float 1.5"),
    Row("cat-random-seed-str", lambda: patterns.random(8, per_row=2, seed="1"), TypeError, r"seed must be an int, got str"),
    Row("cat-random-seed-none", lambda: patterns.random(8, per_row=2, seed=None), TypeError, r"seed must be an int, got NoneType"),
    Row("cat-random-seed-generator", lambda: patterns.random(8, per_row=2, seed=np.random.default_rng(0)), TypeError, r"seed must be an int, got Generator"),
    Row("cat-random-seed-negative", lambda: patterns.random(8, per_row=2, seed=-1), ValueError, r"seed must be >= 0, got -1"),
    Row("cat-random-per-row-missing", lambda: patterns.random(8), TypeError, r"per_row is required"),
    Row("cat-random-per-row-negative", lambda: patterns.random(8, per_row=-1), ValueError, r"per_row must be >= 0, got -1"),
    Row("cat-bigbird-block-zero", lambda: patterns.bigbird(64, 0), ValueError, r"block must be >= 1, got 0"),
    Row("cat-bigbird-seed-float", lambda: patterns.bigbird(64, 8, seed=0.5), TypeError, r"seed must be an int, got float"),
    Row("cat-bigbird-global-out-of-range", lambda: patterns.bigbird(64, 8, global_blocks=(0, 99)), ValueError, r"global_blocks out of range: 99 is not in \[-8, 8\)"),
    Row("cat-bigbird-heads-zero", lambda: patterns.bigbird(64, 8, num_heads=0), ValueError, r"num_heads must be >= 1, got 0"),
    Row("cat-dilated-dilation-zero", lambda: patterns.dilated(8, 3, 0), ValueError, r"dilation must be >= 1, got 0"),
    Row("cat-strided-stride-zero", lambda: patterns.strided(8, 0), ValueError, r"stride must be >= 1, got 0"),
    Row("cat-strided-causal-int", lambda: patterns.strided(8, 2, causal=1), TypeError, r"causal must be a bool, got int"),
    Row("cat-fixed-c-above-stride", lambda: patterns.sparse_transformer_fixed(8, 2, 3), ValueError, r"c must be <= stride = 2, got 3"),
    Row("cat-global-token-out-of-range", lambda: patterns.global_local(8, 1, 1, [9]), ValueError, r"global_tokens out of range: 9 is not in \[-8, 8\)"),
    Row("cat-global-token-float", lambda: patterns.global_local(8, 1, 1, [1.5]), TypeError, r"global_tokens must hold ints, got dtype float64"),
    Row("cat-document-both", lambda: patterns.document([0, 0, 1], lengths=[2, 1]), ValueError, r"pass exactly one of seq_ids, lengths and cu_seqlens"),
    Row("cat-document-length-negative", lambda: patterns.document(lengths=[2, -1]), ValueError, r"lengths must be >= 0, got lengths\[1\] = -1"),
    Row("cat-document-seq-ids-float", lambda: patterns.document([0.5, 1.0]), TypeError, r"seq_ids must hold ints, got dtype float64"),
    Row("cat-neighborhood-kernel-too-big", lambda: patterns.neighborhood_2d(4, 4, 5), ValueError, r"kernel \* dilation along height must be <= height = 4, got 5 \* 1"),
    Row("cat-neighborhood-dilation-triple", lambda: patterns.neighborhood_2d(4, 4, 3, dilation=(1, 1, 1)), ValueError, r"dilation must be a single value or a pair \(rows, cols\)"),
    Row("cat-vertical-slash-negative", lambda: patterns.vertical_slash(8, [0], [-1]), ValueError, r"slash out of range: offset -1"),
    Row("cat-vertical-out-of-range", lambda: patterns.vertical_slash(8, [9], [0]), ValueError, r"vertical out of range: 9"),
    Row("cat-hierarchical-block-zero", lambda: patterns.hierarchical(8, 0, 1, 1), ValueError, r"block must be >= 1, got 0"),
    Row("cat-sinks-negative", lambda: patterns.sinks(8, -1, 2), ValueError, r"num_sinks must be >= 0, got -1"),
    Row("cat-prefix-negative", lambda: patterns.prefix_lm(8, -1), ValueError, r"prefix must be >= 0, got -1"),
    Row("cat-lsh-buckets-odd", lambda: patterns.lsh(_arr(8, 4), 3), ValueError, r"num_buckets must be even .* got 3"),
    Row("cat-lsh-x-1d", lambda: patterns.lsh(_arr(4), 2), ValueError, r"x must be 2-D \(n, d\), got shape \(4,\)"),
    Row("cat-lsh-x-int", lambda: patterns.lsh(np.ones((8, 4), dtype=int), 2), TypeError, r"x must have dtype float16, float32 or float64, got int64"),
    Row("cat-lsh-x-nan", lambda: patterns.lsh(np.full((8, 4), np.nan), 2), ValueError, r"x must be finite"),
    Row("cat-lsh-seed-float", lambda: patterns.lsh(_arr(8, 4), 2, seed=0.5), TypeError, r"seed must be an int, got float"),
    Row("cat-routing-clusters-zero", lambda: patterns.routing(_arr(8, 4), _arr(8, 4), 0), ValueError, r"num_clusters must be >= 1, got 0"),
    Row("cat-routing-d-mismatch", lambda: patterns.routing(_arr(8, 4), _arr(8, 3), 2), ValueError, r"q and k must have the same d, got \(8, 4\) and \(8, 3\)"),
    Row("cat-routing-seed-str", lambda: patterns.routing(_arr(8, 4), _arr(8, 4), 2, seed="0"), TypeError, r"seed must be an int, got str"),
    Row("cat-topk-per-row-negative", lambda: patterns.topk(_arr(8, 4), _arr(8, 4), -1), ValueError, r"per_row must be >= 0, got -1"),
    Row("cat-topk-scale-negative", lambda: patterns.topk(_arr(8, 4), _arr(8, 4), 2, scale=-1.0), ValueError, r"scale must be a positive finite float, got -1.0"),
    Row("cat-topk-complex", lambda: patterns.topk(_arr(8, 4).astype(complex), _arr(8, 4), 2), TypeError, r"q must have dtype float16, float32 or float64, got complex128"),
    Row("cat-block-topk-block-zero", lambda: patterns.block_topk(_arr(8, 4), _arr(8, 4), 0, 1), ValueError, r"block must be >= 1, got 0"),
    Row("cat-block-sparse-int-layout", lambda: patterns.block_sparse([[1]], 2), TypeError, r"layout must be a bool array, got dtype int64"),
    Row("build-unknown", lambda: patterns.build("nope", n=4), ValueError, r"unknown family 'nope'; available: .*causal"),
    Row("build-family-not-str", lambda: patterns.build(["causal"]), TypeError, r"family must be a str .* got list"),
    Row("build-bad-keyword", lambda: patterns.build("causal", n=4), TypeError, r"unexpected keyword argument 'n'"),
    Row("build-bad-value", lambda: patterns.build("causal", n_q="4"), TypeError, r"n_q must be an int, got str"),
    Row("build-custom", lambda: patterns.build("custom"), ValueError, r"family 'custom' .* cannot be rebuilt from params"),
    Row("build-union-spec", lambda: patterns.build("union", of=[1]), ValueError, r"union: of must be a list of two specs"),
    Row("build-spec-params", lambda: patterns.build("transpose", of={"family": "causal", "params": 3}), ValueError, r"of\['params'\] must be a dict, got int"),
    # interop without torch --------------------------------------------------------------------
    Row("flashinfer-R-zero", lambda: flashinfer.to_flashinfer_bsr(patterns.causal(8), 0), ValueError, r"R must be >= 1, got 0"),
    Row("flashinfer-C-negative", lambda: flashinfer.to_flashinfer_bsr(patterns.causal(8), 2, -1), ValueError, r"C must be >= 1, got -1"),
    Row("flashinfer-R-float", lambda: flashinfer.to_flashinfer_bsr(patterns.causal(8), 2.0), TypeError, r"R must be an int, got float"),
    Row("flashinfer-not-divisible", lambda: flashinfer.to_flashinfer_bsr(patterns.causal(8), 3), ValueError, r"N = 8 is not a multiple of C = 3"),
    Row("flashinfer-heads", lambda: flashinfer.to_flashinfer_bsr(_two_heads(), 2), ValueError, r"the pattern has 2 heads .* pass head=h"),
    Row("flashinfer-head-out-of-range", lambda: flashinfer.to_flashinfer_bsr(_two_heads(), 2, head=5), ValueError, r"head must be in \[0, 2\), got 5"),
    Row("flashinfer-not-pattern", lambda: flashinfer.to_flashinfer_bsr(np.ones((8, 8), dtype=bool), 2), TypeError, r"pattern must be a sparse_ref.Pattern, got ndarray"),
    Row("hf-block-size-zero", lambda: huggingface.from_hf_bigbird_rand_attn(_HF_PLAN, 0), ValueError, r"block_size must be >= 1, got 0"),
    Row("hf-block-size-float", lambda: huggingface.from_hf_bigbird_rand_attn(_HF_PLAN, 1.5), TypeError, r"block_size must be an int, got float"),
    Row("hf-seq-len-mismatch", lambda: huggingface.from_hf_bigbird_rand_attn(_HF_PLAN, 2, seq_len=20), ValueError, r"seq_len = 20 does not match the plan: nb = 6 blocks of 2 = 12 tokens"),
    Row("hf-seq-len-str", lambda: huggingface.from_hf_bigbird_rand_attn(_HF_PLAN, 2, seq_len="12"), TypeError, r"seq_len must be an int, got str"),
    Row("hf-plan-float", lambda: huggingface.from_hf_bigbird_rand_attn([[[3.0], [4], [1], [2]]], 2), TypeError, r"rand_attn must hold integer block indices, got dtype float64"),
    Row("hf-plan-out-of-range", lambda: huggingface.from_hf_bigbird_rand_attn([[[9], [4], [1], [2]]], 2), ValueError, r"rand_attn block indices must be in \[0, nb = 6\)"),
    Row("hf-plan-negative", lambda: huggingface.from_hf_bigbird_rand_attn([[[-1], [4], [1], [2]]], 2), ValueError, r"rand_attn block indices must be in \[0, nb = 6\)"),
    Row("hf-plan-1d", lambda: huggingface.from_hf_bigbird_rand_attn([3, 4, 1, 2], 2), ValueError, r"rand_attn must be \(nb - 2, r\), .* got shape \(4,\)"),
    Row("hf-plan-duplicate", lambda: huggingface.from_hf_bigbird_rand_attn([[[0], [4], [1], [2]]], 2), ValueError, r"rand_attn\[0, 0\] = \[0\] repeats a key block of query block 1"),
    Row("hf-duplicates-option", lambda: huggingface.hf_bigbird_layout(_HF_PLAN, duplicates="drop"), ValueError, r"duplicates must be 'error' or 'merge', got 'drop'"),
    Row("deepspeed-heads-zero", lambda: deepspeed.FixedSparsityConfig(num_heads=0), ValueError, r"num_heads must be >= 1, got 0"),
    Row("deepspeed-block-zero", lambda: deepspeed.FixedSparsityConfig(num_heads=1, block=0), ValueError, r"block must be >= 1, got 0"),
    Row("deepspeed-seq-len-not-multiple", lambda: deepspeed.FixedSparsityConfig(num_heads=1, block=16).make_layout(100), ValueError, r"seq_len must be a non-negative multiple of block = 16, got 100"),
    Row("deepspeed-seq-len-negative", lambda: deepspeed.DenseSparsityConfig(num_heads=1, block=16).make_layout(-16), ValueError, r"seq_len must be a non-negative multiple of block = 16, got -16"),
    Row("deepspeed-seed-str", lambda: deepspeed.BigBirdSparsityConfig(num_heads=1, seed="0"), TypeError, r"seed must be an int, got str"),
    Row("deepspeed-attention", lambda: deepspeed.FixedSparsityConfig(num_heads=1, attention="causal"), ValueError, r"attention must be one of 'unidirectional', 'bidirectional', got 'causal'"),
    Row("deepspeed-window-zero", lambda: deepspeed.VariableSparsityConfig(num_heads=1, local_window_blocks=[0]), ValueError, r"local_window_blocks\[0\] must be >= 1, got 0"),
    Row("deepspeed-sliding-negative", lambda: deepspeed.LocalSlidingWindowSparsityConfig(num_heads=1, num_sliding_window_blocks=-1), ValueError, r"num_sliding_window_blocks must be >= 0, got -1"),
    Row("deepspeed-per-head-str", lambda: deepspeed.FixedSparsityConfig(num_heads=1, different_layout_per_head="no"), TypeError, r"different_layout_per_head must be a bool, got str"),
    Row("deepspeed-random-too-many", lambda: deepspeed.BigBirdSparsityConfig(num_heads=1, block=16, num_random_blocks=5).make_layout(64), ValueError, r"num_random_blocks \(5\) must be <= the number of blocks 4"),
    # interop with torch -----------------------------------------------------------------------
    Row("torch-csr-head", lambda: _ti().to_torch_sparse_csr(_two_heads(), head=3), ValueError, r"head must be in \[0, 2\), got 3", "torch"),
    Row("torch-csr-uneven-heads", lambda: _ti().to_torch_sparse_csr(_two_heads()), ValueError, r"heads have different nnz; .*pass head=h", "torch"),
    Row("torch-csr-not-pattern", lambda: _ti().to_torch_sparse_csr("causal"), TypeError, r"pattern must be a sparse_ref.Pattern, got str", "torch"),
    Row("torch-from-not-tensor", lambda: _ti().from_torch_sparse_csr(np.eye(3)), TypeError, r"t must be a torch.Tensor, got ndarray", "torch"),
    Row("torch-from-1d", lambda: _ti().from_torch_sparse_csr(_torch().ones(3)), ValueError, r"t must be a 2-D or batched 3-D tensor, got 1-D", "torch"),
    Row("torch-from-bad-crow", lambda: _ti().from_torch_sparse_csr(_torch_csr([0, 2, 1], [0, 1], (2, 3))), ValueError, r"t \(indptr = crow_indices\(\), indices = col_indices\(\)\): indptr must be non-decreasing: .*\(row 1\)", "torch"),
    Row("torch-from-bad-col", lambda: _ti().from_torch_sparse_csr(_torch_csr([0, 1, 2], [0, 7], (2, 3))), ValueError, r"indices out of range: row 1 has key 7", "torch"),
    Row("torch-flex-block-zero", lambda: _ti().to_flex_block_mask(patterns.causal(8), 0), ValueError, r"block must be >= 1, got 0", "torch"),
    Row("torch-flex-not-pattern", lambda: _ti().to_flex_block_mask(np.eye(8, dtype=bool), 4), TypeError, r"pattern must be a sparse_ref.Pattern, got ndarray", "torch"),
    Row("torch-from-flex-batch", lambda: _ti().from_flex_block_mask(_flex_mask(), batch=3), ValueError, r"batch must be in \[0, 1\), got 3", "torch"),
    Row("torch-from-flex-batch-str", lambda: _ti().from_flex_block_mask(_flex_mask(), batch="0"), TypeError, r"batch must be an int, got str", "torch"),
    Row("torch-from-flex-not-mask", lambda: _ti().from_flex_block_mask("mask"), TypeError, r"bm must be a FlexAttention BlockMask", "torch"),
    # golden suites ----------------------------------------------------------------------------
    Row("golden-truncated", lambda: _load(_suite(_truncate)), golden.GoldenFormatError, r"case 'causal-f32': truncated: file has \d+ bytes, manifest says \d+"),
    Row("golden-sha256", lambda: _load(_suite(_flip_last_byte)), golden.GoldenFormatError, r"case 'causal-f32': sha256 mismatch"),
    Row("golden-sha256-in-check", lambda: golden.check(_oracle_impl, _suite(_flip_last_byte)), golden.GoldenFormatError, r"case 'causal-f32': sha256 mismatch"),
    Row("golden-bad-json", lambda: _load(_suite(_bad_json)), golden.GoldenFormatError, r"manifest.json is not valid JSON"),
    Row("golden-schema-version", lambda: _load(_suite(_future_schema)), golden.GoldenFormatError, r"manifest has unknown schema_version 99; this sparse-ref reads version 1"),
    Row("golden-path-dotdot", lambda: _load(_suite(_dotdot)), golden.GoldenFormatError, r"case 'causal-f32': file path 'cases/\.\./\.\./outside\.safetensors' contains '\.\.'"),
    Row("golden-path-absolute", lambda: _load(_suite(_absolute)), golden.GoldenFormatError, r"case 'causal-f32': file path '/etc/passwd' is absolute"),
    Row("golden-shape-disagreement", lambda: _load(_suite(_shape_disagrees)), golden.GoldenFormatError, r"case 'causal-f32': manifest/case shape disagreement: tensor 'q' has shape \[1, 2, 6, 4\], manifest says \[1, 2, 6, 5\]"),
    Row("golden-missing-file", lambda: _load(_suite(_missing_file)), golden.GoldenFormatError, r"case 'causal-f32': file cases/causal-f32.safetensors is missing"),
    Row("golden-not-a-suite", lambda: _load(_workdir()), golden.GoldenFormatError, r"holds no manifest.json: not a golden suite"),
    Row("golden-check-dtype", lambda: golden.check(_oracle_impl, _suite(), dtype="int8"), ValueError, r"dtype must name a floating dtype \(bfloat16, float16, float32, float64\), got 'int8'"),
    Row("golden-impl-spec", lambda: golden.load_impl("no_colon_here"), ValueError, r"impl must look like 'package.module:function', got 'no_colon_here'"),
    Row("golden-generate-suite", lambda: golden.generate("nope", _workdir() / "g1", progress=False), ValueError, r"unknown suite 'nope'"),
    Row("golden-generate-workers", lambda: golden.generate(_MINI, _workdir() / "g2", workers=0, progress=False), ValueError, r"workers must be a positive int, got 0"),
    Row("golden-generate-dtypes", lambda: golden.generate(_MINI, _workdir() / "g3", dtypes="int8", progress=False), ValueError, r"dtypes: cases are float32 or float64, got 'int8'"),
    # the sparse-ref command -------------------------------------------------------------------
    Row("cli-demo-n-zero", lambda: _cli("demo", "--n", "0"), CliFailed, r"exit 2: .*--n must be >= 1, got 0"),
    Row("cli-demo-heads-negative", lambda: _cli("demo", "--heads", "-2"), CliFailed, r"exit 2: .*--heads must be >= 1, got -2"),
    Row("cli-demo-n-not-int", lambda: _cli("demo", "--n", "abc"), CliFailed, r"exit 2: .*Invalid value for '--n'"),
    Row("cli-golden-suite", lambda: _cli("golden", "generate", "--suite", "nope", "--out", _workdir() / "c1"), CliFailed, r"exit 2: error: unknown suite 'nope'; choose one of smoke"),
    Row("cli-golden-workers", lambda: _cli("golden", "generate", "--out", _workdir() / "c2", "--workers", "0", "--no-progress"), CliFailed, r"exit 2: error: workers must be a positive int, got 0"),
    Row("cli-golden-both", lambda: _cli("golden", "generate", "--out", _workdir() / "c3", "--workers", "2", "--scheduler", "tcp://x:1"), CliFailed, r"exit 2: error: pass --workers or --scheduler, not both"),
    Row("cli-golden-dtype", lambda: _cli("golden", "generate", "--out", _workdir() / "c4", "--dtype", "int8", "--no-progress"), CliFailed, r"exit 2: error: dtypes: cases are float32 or float64, got 'int8'"),
    Row("cli-golden-verify-missing", lambda: _cli("golden", "verify", _missing_dir()), CliFailed, r"exit 2: error: .*no-such-suite is not a directory"),
    Row("cli-golden-list-corrupt", lambda: _cli("golden", "list", _suite(_future_schema)), CliFailed, r"exit 2: error: manifest has unknown schema_version 99"),
    Row("cli-golden-check-impl", lambda: _cli("golden", "check", _suite(), "--impl", "nocolon"), CliFailed, r"exit 2: error: cannot load implementation: impl must look like 'package.module:function'"),
    Row("cli-golden-check-dtype", lambda: _cli("golden", "check", _suite(), "--impl", "sparse_ref.oracle:attention", "--dtype", "int8"), CliFailed, r"exit 2: error: dtype must name a floating dtype .* got 'int8'"),
    Row("cli-golden-check-corrupt", lambda: _cli("golden", "check", _suite(_truncate), "--impl", "sparse_ref.oracle:attention"), CliFailed, r"exit 2: error: case 'causal-f32': truncated"),
    Row("cli-show-family", lambda: _cli("patterns", "show", "nope"), CliFailed, r"exit 2: error: unknown family 'nope'; available:"),
    Row("cli-show-n-zero", lambda: _cli("patterns", "show", "causal", "--n", "0"), CliFailed, r"exit 2: error: --n must be >= 1, got 0"),
    Row("cli-show-param-syntax", lambda: _cli("patterns", "show", "causal", "-p", "bad"), CliFailed, r"exit 2: error: expected key=value, got 'bad'"),
    Row("cli-show-param-value", lambda: _cli("patterns", "show", "sliding_window", "-p", "left=-1"), CliFailed, r"exit 2: error: left must be >= 0, got -1"),
    Row("cli-show-width-zero", lambda: _cli("patterns", "show", "causal", "--width", "0"), CliFailed, r"exit 2: error: --width must be >= 1, got 0"),
    Row("cli-show-max-pixels-zero", lambda: _cli("patterns", "show", "causal", "--max-pixels", "0"), CliFailed, r"exit 2: error: --max-pixels must be >= 1, got 0"),
    Row("cli-show-head-negative", lambda: _cli("patterns", "show", "causal", "--head", "-1"), CliFailed, r"exit 2: error: --head must be >= 0, got -1"),
    Row("cli-show-png-unwritable", lambda: _cli("patterns", "show", "causal", "--png", _workdir() / "no-dir" / "p.png"), CliFailed, r"exit 2: .*error: --png: cannot write .*p\.png", "matplotlib"),
    Row("cli-compare-n-one", lambda: _cli("patterns", "compare", "--n", "1"), CliFailed, r"exit 2: error: --n must be >= 2, got 1"),
    Row("cli-compare-pattern-quote", lambda: _cli("patterns", "compare", "--n", "64", "--pattern", "causal 'x"), CliFailed, r"exit 2: error: --pattern \"causal 'x\": No closing quotation"),
    Row("cli-compare-pattern-value", lambda: _cli("patterns", "compare", "--n", "64", "--pattern", "sliding_window left=x"), CliFailed, r"exit 2: error: left must be an int, got str 'x'"),
    Row("cli-bench-window-negative", lambda: _cli("bench", "scale", "--window", "-1"), CliFailed, r"exit 2: .*window >= 0"),
]
# fmt: on


def _params() -> list[Any]:
    out = []
    for row in ROWS:
        marks = []
        if row.needs is not None:
            reason = f"{row.needs} is not installed"
            marks.append(pytest.mark.skipif(not _installed(row.needs), reason=reason))
        out.append(pytest.param(row, id=row.id, marks=marks))
    return out


def test_rows_are_unique_and_cover_the_issue() -> None:
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    assert len(ROWS) >= 45
    prefixes = {row.id.split("-")[0] for row in ROWS}
    wanted = {"attn", "bw", "oracle", "dense", "csr", "pred", "layout", "bsr", "cat", "build"}
    wanted |= {"flashinfer", "hf", "deepspeed", "torch", "golden", "cli"}
    assert wanted <= prefixes, sorted(wanted - prefixes)


@pytest.mark.parametrize("row", _params())
def test_bad_input_gives_a_clear_error(row: Row) -> None:
    with pytest.raises(row.exc, match=row.match) as info:
        row.call()
    assert type(info.value) is row.exc  # exactly the documented type, not a subclass


# --------------------------------------------------------------------------- the crash check
def _outcome(row: Row) -> str | None:
    """``None`` when ``row`` raises its exception with a matching message, else what happened."""
    try:
        row.call()
    except row.exc as err:
        if re.search(row.match, str(err)):
            return None
        return f"message {str(err)[:300]!r} does not match {row.match!r}"
    except BaseException as err:  # noqa: BLE001 - report anything, the parent decides
        return f"raised {type(err).__name__}: {str(err)[:300]}"
    return "did not raise"


def _main() -> int:
    """Run every row in this process, announcing each before it runs (see the module docstring).

    Prints ``START id`` and then ``OK id`` / ``FAIL id: why`` / ``SKIP id`` per row, and ``DONE``
    at the end, flushing each line, so the parent can name the row that a crash interrupted.
    """
    import faulthandler

    faulthandler.enable()
    with tempfile.TemporaryDirectory(prefix="sparse-ref-bad-inputs-") as tmp:
        _WORK["root"] = Path(tmp)
        for row in ROWS:
            if row.needs is not None and not _installed(row.needs):
                print(f"SKIP {row.id}", flush=True)
                continue
            print(f"START {row.id}", flush=True)
            problem = _outcome(row)
            status = "OK" if problem is None else "FAIL"
            print(f"{status} {row.id}" + ("" if problem is None else f": {problem}"), flush=True)
    print("DONE", flush=True)
    return 0


def test_every_row_in_one_subprocess(tmp_path: Path) -> None:
    """The whole table in one child process: a crash (segfault, abort) fails naming the row."""
    here = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path.insert(0, {str(here)!r}); "
        f"import {Path(__file__).stem} as matrix; sys.exit(matrix._main())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    lines = proc.stdout.splitlines()
    started = [line.split(" ", 1)[1] for line in lines if line.startswith("START ")]
    if "DONE" not in lines or proc.returncode != 0:
        where = f"during row {started[-1]!r}" if started else "before the first row"
        pytest.fail(
            f"the process died (exit code {proc.returncode}) {where}; stderr:\n"
            f"{proc.stderr[-3000:]}"
        )
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert not failed, "\n".join(failed)
    runnable = [row.id for row in ROWS if row.needs is None or _installed(row.needs)]
    assert started == runnable
    assert sum(line.startswith("OK ") for line in lines) == len(runnable)


# ------------------------------------------------------------------ inputs that must work
def _layouts(x: np.ndarray, kind: str) -> np.ndarray:
    """``x`` (C-contiguous, native) with the same values in another memory layout."""
    if kind == "big_endian":
        return x.astype(x.dtype.newbyteorder(">"))
    if kind == "read_only":
        y = x.copy()
        y.flags.writeable = False
        return y
    if kind == "strided":  # every other element of a wider buffer
        wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if kind == "reversed":  # negative strides along the sequence
        return np.flip(np.flip(x, axis=-2).copy(), axis=-2)
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "big_endian_read_only_strided":
        wide = np.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype.newbyteorder(">"))
        wide[..., ::2] = x
        view = wide[..., ::2]
        view.flags.writeable = False
        return view
    raise AssertionError(kind)


LAYOUTS = ["big_endian", "read_only", "strided", "reversed", "fortran"]
LAYOUTS += ["big_endian_read_only_strided"]


def _work_inputs(dtype: Any) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(7)
    q = rng.standard_normal((2, 4, 37, 8)).astype(dtype)
    k = rng.standard_normal((2, 2, 41, 8)).astype(dtype)
    v = rng.standard_normal((2, 2, 41, 5)).astype(dtype)
    dout = rng.standard_normal((2, 4, 37, 5)).astype(dtype)
    return q, k, v, dout


def _work_pattern(form: str) -> Pattern:
    mask = np.random.default_rng(8).random((37, 41)) < 0.3
    mask[3] = False  # a row with no keys
    p = Pattern.from_dense(mask) | patterns.causal(37, 41, "bottom_right")
    return p if form == "csr" else p.with_block_form(16)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("form", ["csr", "bsr"])
def test_unusual_memory_layouts_work_and_match_the_oracle(
    layout: str, dtype: Any, form: str
) -> None:
    """Non-writeable, non-contiguous, negative-stride, Fortran and big-endian arrays are accepted,
    left untouched, and give bit for bit what contiguous native copies give (and pass the rule)."""
    q, k, v, dout = _work_inputs(dtype)
    p = _work_pattern(form)
    odd = [_layouts(x, layout) for x in (q, k, v, dout)]
    before = [x.copy() for x in odd]
    out, lse = sparse_ref.attention(*odd[:3], p, return_lse=True)
    want_out, want_lse = sparse_ref.attention(q, k, v, p, return_lse=True)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.tobytes() == want_out.tobytes() and lse.tobytes() == want_lse.tobytes()
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse)
    grads = sparse_ref.attention_backward(*odd[:3], p, odd[3])
    want = sparse_ref.attention_backward(q, k, v, p, dout)
    for got, ref in zip(grads, want, strict=True):
        assert got.dtype == np.dtype(dtype) and got.tobytes() == ref.tobytes()
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)
    for x, y in zip(odd, before, strict=True):  # inputs are not written to
        assert np.array_equal(x, y) and x.dtype == y.dtype


def test_broadcast_views_work() -> None:
    """A zero-stride, read-only view (``np.broadcast_to``) is accepted like its copy."""
    rng = np.random.default_rng(3)
    row = rng.standard_normal((1, 8))
    q = rng.standard_normal((10, 8))
    k = np.broadcast_to(row, (12, 8))
    v = rng.standard_normal((12, 3))
    p = Pattern.from_dense(rng.random((10, 12)) < 0.5)
    got = sparse_ref.attention(q, k, v, p)
    assert got.tobytes() == sparse_ref.attention(q, np.array(k), v, p).tobytes()
    testing.assert_close_to_oracle(got, q, k, v, p)


@pytest.mark.parametrize(
    "q_shape, kv_shape, d_v, n",
    [
        ((0, 1, 6, 4), (0, 1, 6, 4), 4, (6, 6)),  # B = 0
        ((1, 0, 6, 4), (1, 1, 6, 4), 4, (6, 6)),  # H = 0 query heads
        ((0, 4), (6, 4), 4, (0, 6)),  # n_q = 0
        ((6, 4), (0, 4), 4, (6, 0)),  # n_k = 0: every row empty
        ((6, 4), (6, 4), 0, (6, 6)),  # d_v = 0
    ],
    ids=["batch", "heads", "n_q", "n_k", "d_v"],
)
@pytest.mark.parametrize("form", ["csr", "bsr"])
def test_valid_zero_size_dimensions_give_empty_results(
    q_shape: tuple[int, ...], kv_shape: tuple[int, ...], d_v: int, n: tuple[int, int], form: str
) -> None:
    """Zero-size dimensions other than d are valid: the results are empty (or 0 / -inf for rows
    without keys) and no kernel reads out of bounds."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal(q_shape)
    k = rng.standard_normal(kv_shape)
    v = rng.standard_normal((*kv_shape[:-1], d_v))
    p = Pattern.from_dense(np.ones(n, dtype=bool))
    p = p if form == "csr" else p.with_block_form(4)
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True)
    assert out.shape == (*q_shape[:-1], d_v) and lse.shape == q_shape[:-1]
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse)
    if n[1] == 0:
        assert np.isneginf(lse).all()
    dout = rng.standard_normal(out.shape)
    grads = sparse_ref.attention_backward(q, k, v, p, dout)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout)
