"""Bitwise behaviour check for refactors (issue 19): the same inputs must give the same bits.

    python tests/bitwise/check.py save OUT.npz          # compute every array with the imported sparse_ref
    python tests/bitwise/check.py compare A.npz B.npz   # bitwise comparison, exit 1 on any difference
    python tests/bitwise/check.py base REV [--keep DIR] # save at REV (a git worktree) and here, compare

``save`` uses only long-stable public API (``sparse_ref.attention``, ``attention_backward``, the
``patterns`` catalog, ``Pattern`` constructors and algebra, ``sparse_ref.oracle``,
``sparse_ref.golden.generate``), so the same script runs against the code of any revision. It
stores, for each case of :func:`cases`, the forward ``out``/``lse`` and the gradients
``dq``/``dk``/``dv`` of fixed seeded inputs, and the pattern's ``fingerprint()``; and every tensor
of every case of the golden ``smoke`` suite (not its manifest, whose metadata may change).

``base`` runs ``save`` twice with the interpreter running this script, each in a fresh process
with ``NUMBA_NUM_THREADS=2`` and a fresh ``NUMBA_CACHE_DIR`` (so no kernel compiled from other
code is reused): once with ``PYTHONPATH`` set to a temporary ``git worktree add --detach`` of REV
(removed afterwards, also on error), once with ``PYTHONPATH`` set to this checkout; each run
checks that ``sparse_ref`` was imported from the tree it was meant to test.
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    """One attention problem: ``pattern()`` builds the pattern (called after the import, so the
    catalog of the tree under test is used); q ``(B, H, n_q, d)``, k ``(B, H_kv, n_k, d)``, v
    ``(B, H_kv, n_k, d_v)`` drawn from ``default_rng(crc32(name))``."""

    name: str
    pattern: Callable[[], Any]
    n_q: int
    n_k: int
    B: int = 1
    H: int = 2
    H_kv: int | None = None
    d: int = 32
    d_v: int | None = None
    dtype: str = "float32"
    softcap: float | None = None
    backend: str = "numba"
    backward: bool = True
    nan_rows: tuple[int, ...] = field(default=())  # q rows set to NaN (check_finite=False)


def cases() -> list[Case]:
    """The fixed case list (numba backend unless named ``oracle-*``)."""
    import sparse_ref
    from sparse_ref import Pattern, patterns

    def layout(seed: int, heads: int, nbq: int, nbk: int, density: float) -> np.ndarray:
        lay = np.random.default_rng(seed).random((heads, nbq, nbk)) < density
        lay[:, np.arange(min(nbq, nbk)), np.arange(min(nbq, nbk))] = True
        return lay

    def empty_rows() -> Any:  # hand-written CSR, rows 0, 2, 5, 9.. empty
        rng = np.random.default_rng(7)
        rows = [[] if i % 3 != 1 else sorted(rng.choice(48, 5, replace=False)) for i in range(40)]
        indptr = np.cumsum([0] + [len(r) for r in rows])
        indices = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
        return Pattern.from_csr((indptr, indices, (40, 48)))

    def stacked() -> Any:
        return Pattern.stack(
            [patterns.causal(256), patterns.sliding_window(256, 8, 3), patterns.strided(256, 7)]
            + [patterns.dense(256)]
        )

    sw, csw = patterns.sliding_window, patterns.causal_sliding_window
    f64 = "float64"
    c = Case
    out = [
        # local windows, token CSR
        c("swin-l16r16-f32", lambda: sw(512, 16, 16), 512, 512, H=4),
        c("swin-l16r16-f64", lambda: sw(512, 16, 16), 512, 512, H=4, dtype=f64),
        c("swin-l5r0-b2-f32", lambda: sw(300, 5, 0), 300, 300, B=2, d=16, d_v=24),
        c("cswin-w64-f32", lambda: csw(1024, 64), 1024, 1024, d=64),
        c("cswin-w64-f64", lambda: csw(1024, 64), 1024, 1024, H=1, d=64, dtype=f64),
        # band path of the CSR backward (rows sharing >= 128 keys): big one-run windows
        c("band-cswin-w4096-n8192-f32", lambda: csw(8192, 4096), 8192, 8192, H=1, d=64),
        c("band-cswin-w512-f64", lambda: csw(2048, 512), 2048, 2048, H=1, d=32, dtype=f64),
        c("band-swin-l300r200-f32", lambda: sw(1500, 300, 200), 1500, 1500, H=2, d=48),
        # block forms (BSR kernels): BLAS tiles (bq*bk*d >= 16*16*64) and loop tiles
        c(
            "blk-cswin-w4096-b128-n8192-f32",
            lambda: csw(8192, 4096, block=128),
            8192,
            8192,
            H=1,
            d=64,
        ),
        c("blk-cswin-w256-b64-f32", lambda: csw(1000, 256, block=64), 1000, 1000, d=64),
        c("blk-cswin-w40-b16-f64", lambda: csw(500, 40, block=16), 500, 500, d=16, dtype=f64),
        c("blk-swin-b(32,16)-f32", lambda: sw(700, 50, 20, block=(32, 16)), 700, 700, d=32),
        c(
            "blk-causal-b64-ragged-f64",
            lambda: patterns.causal(777, block=64),
            777,
            777,
            d=64,
            dtype=f64,
        ),
        c(
            "blk-dense-q100k300-b32-f32",
            lambda: patterns.dense(100, 300, block=32),
            100,
            300,
            d=16,
            d_v=8,
        ),
        # BigBird (token CSR: band path kind 2; and per-head random blocks)
        c(
            "bigbird-b64-f32",
            lambda: patterns.bigbird(1024, 64, num_heads=2, seed=1),
            1024,
            1024,
            d=64,
        ),
        c(
            "bigbird-b16-gqa-f64",
            lambda: patterns.bigbird(400, 16, num_heads=4, seed=2),
            400,
            400,
            H=4,
            H_kv=2,
            d=32,
            dtype=f64,
        ),
        # globals, sinks, prefix
        c(
            "global_local-f32",
            lambda: patterns.global_local(1024, 32, 32, [0, 100, 511]),
            1024,
            1024,
        ),
        c(
            "global_local-f64",
            lambda: patterns.global_local(600, 3, 9, [5, 599]),
            600,
            600,
            dtype=f64,
        ),
        c(
            "blk-global_local-b64-f32",
            lambda: patterns.global_local(1024, 64, 64, [0, 700], block=64),
            1024,
            1024,
            d=64,
        ),
        c("sinks-s4w64-f32", lambda: patterns.sinks(1024, 4, 64), 1024, 1024, d=64),
        c("sinks-s1w200-f64", lambda: patterns.sinks(1024, 1, 200), 1024, 1024, H=1, dtype=f64),
        c("blk-sinks-b32-f64", lambda: patterns.sinks(900, 3, 100, block=32), 900, 900, dtype=f64),
        c("prefix_lm-f64", lambda: patterns.prefix_lm(512, 100), 512, 512, dtype=f64),
        c("blk-prefix_lm-b64-f32", lambda: patterns.prefix_lm(640, 130, block=64), 640, 640, d=64),
        # document, dilated, strided, sparse transformer, other families
        c("document-f32", lambda: patterns.document(lengths=[100, 300, 124]), 524, 524),
        c(
            "document&causal-f64",
            lambda: patterns.document(lengths=[50, 200, 6]) & patterns.causal(256),
            256,
            256,
            dtype=f64,
        ),
        c("dilated-w8d4-f32", lambda: patterns.dilated(512, 8, 4), 512, 512),
        c(
            "dilated-causal-f64",
            lambda: patterns.dilated(512, 6, 3, causal=True),
            512,
            512,
            dtype=f64,
        ),
        c("strided-s16-causal-f32", lambda: patterns.strided(512, 16, causal=True), 512, 512),
        c(
            "st-strided-split-f32",
            lambda: patterns.sparse_transformer_strided(512, 32, split_heads=True),
            512,
            512,
        ),
        c(
            "st-fixed-f64",
            lambda: patterns.sparse_transformer_fixed(512, 64, 8),
            512,
            512,
            dtype=f64,
        ),
        c(
            "vertical_slash-f32",
            lambda: patterns.vertical_slash(600, [0, 1, 77, 300], [0, 1, 2, 50]),
            600,
            600,
        ),
        c("neighborhood_2d-f32", lambda: patterns.neighborhood_2d(16, 20, 5, dilation=2), 320, 320),
        c("hierarchical-f64", lambda: patterns.hierarchical(256, 16, 8, 8), 256, 272, dtype=f64),
        # random
        c("random-k20-f32", lambda: patterns.random(512, per_row=20, seed=1), 512, 512),
        c(
            "random-causal-q300k500-f64",
            lambda: patterns.random(300, 500, per_row=12, seed=4, causal=True),
            300,
            500,
            dtype=f64,
        ),
        # block_sparse with ragged last block, per head
        c(
            "block_sparse-ragged-f32",
            lambda: patterns.block_sparse(layout(3, 2, 16, 16, 0.3), 32, n_q=500, n_k=500),
            500,
            500,
            d=64,
        ),
        c(
            "block_sparse-ragged-q(16,48)-f64",
            lambda: patterns.block_sparse(layout(5, 2, 20, 8, 0.4), (16, 48), n_q=310, n_k=380),
            310,
            380,
            dtype=f64,
        ),
        c(
            "from_block_layout-f32",
            lambda: Pattern.from_block_layout(layout(9, 1, 8, 8, 0.5)[0], 24, n_q=180, n_k=190),
            180,
            190,
            d=16,
        ),
        # GQA / MQA
        c("gqa-causal-h8kv2-f32", lambda: patterns.causal(512), 512, 512, H=8, H_kv=2),
        c("mqa-swin-h4kv1-f64", lambda: sw(400, 20, 20), 400, 400, H=4, H_kv=1, dtype=f64),
        c("gqa-blk-cswin-h4kv2-f32", lambda: csw(512, 128, block=32), 512, 512, H=4, H_kv=2, d=64),
        # softcap
        c("softcap-cswin-f32", lambda: csw(1024, 100), 1024, 1024, softcap=5.0),
        c(
            "softcap-bigbird-f64",
            lambda: patterns.bigbird(512, 32, seed=3),
            512,
            512,
            dtype=f64,
            softcap=2.0,
        ),
        c(
            "softcap-blk-causal-f32",
            lambda: patterns.causal(512, block=64),
            512,
            512,
            d=64,
            softcap=3.0,
        ),
        c("softcap-band-cswin-w600-f32", lambda: csw(2048, 600), 2048, 2048, H=1, softcap=10.0),
        # empty rows, per-head patterns, dense-made, non-finite inputs
        c("emptyrows-csr-f32", empty_rows, 40, 48, d=8),
        c("emptyrows-csr-f64", empty_rows, 40, 48, d=8, dtype=f64),
        c(
            "emptyrows-causal-br-f32",
            lambda: patterns.causal(40, 24, align="bottom_right"),
            40,
            24,
            d=8,
        ),
        c("stack-4heads-f32", stacked, 256, 256, H=4, H_kv=2),
        c(
            "from_dense-f64",
            lambda: Pattern.from_dense(np.tri(64, 80, 5, dtype=bool)),
            64,
            80,
            d=8,
            dtype=f64,
        ),
        c(
            "nan-q-rows-f32",
            lambda: patterns.causal(64, 40, align="bottom_right"),
            64,
            40,
            d=8,
            nan_rows=(3, 30, 50),
        ),
        # oracle backend and the oracle module
        c("oracle-swin-f64", lambda: sw(256, 10, 10), 256, 256, dtype=f64, backend="oracle"),
        c(
            "oracle-bigbird-f32",
            lambda: patterns.bigbird(256, 16, seed=5),
            256,
            256,
            backend="oracle",
        ),
        c(
            "oracle-softcap-gqa-f32",
            lambda: patterns.causal(128),
            128,
            128,
            H=4,
            H_kv=2,
            softcap=4.0,
            backend="oracle",
        ),
        c(
            "oracle-blk-sinks-f64",
            lambda: patterns.sinks(300, 2, 40, block=32),
            300,
            300,
            dtype=f64,
            backend="oracle",
        ),
        c(
            "oraclemod-document-f64",
            lambda: patterns.document(lengths=[30, 70, 28]),
            128,
            128,
            dtype=f64,
            backend="oracle-module",
        ),
    ]
    del sparse_ref
    return out


def _inputs(case: Case) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    h_kv = case.H if case.H_kv is None else case.H_kv
    d_v = case.d if case.d_v is None else case.d_v
    shapes = [
        (case.B, case.H, case.n_q, case.d),
        (case.B, h_kv, case.n_k, case.d),
        (case.B, h_kv, case.n_k, d_v),
        (case.B, case.H, case.n_q, d_v),
    ]
    q, k, v, dout = (rng.standard_normal(s).astype(case.dtype) for s in shapes)
    for r in case.nan_rows:
        q[..., r, :] = np.nan
    return q, k, v, dout


def _run(case: Case) -> Iterator[tuple[str, np.ndarray]]:
    import sparse_ref

    pattern = case.pattern()
    q, k, v, dout = _inputs(case)
    finite = not case.nan_rows
    common: dict[str, Any] = {"softcap": case.softcap, "check_finite": finite}
    yield "fingerprint", np.array(pattern.fingerprint())
    if case.backend == "oracle-module":
        out, lse = sparse_ref.oracle.attention(q, k, v, pattern, return_lse=True, **common)
        grads = sparse_ref.oracle.attention_backward(q, k, v, pattern, dout, **common)
    else:
        common["backend"] = case.backend
        if "form" in inspect.signature(sparse_ref.attention).parameters:
            # since 093f5d3 attention() takes form= and its default "auto" may run a token-CSR
            # pattern on a derived block form; pin the rule of a81de5f (each pattern runs its own
            # form) so that the kernels themselves are compared
            common["form"] = "csr" if pattern.block is None else "block"
        out, lse = sparse_ref.attention(q, k, v, pattern, return_lse=True, **common)
        grads = sparse_ref.attention_backward(q, k, v, pattern, dout, **common)
    yield "out", out
    yield "lse", lse
    yield from zip(("dq", "dk", "dv"), grads, strict=True)


# ----------------------------------------------------------------------------------- golden
_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file (read here, not through ``sparse_ref.golden.store``,
    whose internals may move)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(body[a:b], dtype=_ST_DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def _golden() -> Iterator[tuple[str, np.ndarray]]:
    from sparse_ref import golden

    with tempfile.TemporaryDirectory(prefix="bitwise-golden-") as tmp:
        golden.generate("smoke", Path(tmp) / "smoke", progress=False)
        files = sorted((Path(tmp) / "smoke").rglob("*.safetensors"))
        if not files:
            raise RuntimeError("golden.generate('smoke') wrote no .safetensors file")
        for path in files:
            for name, arr in sorted(_read_safetensors(path).items()):
                yield f"golden.{path.stem}.{name}", arr


# -------------------------------------------------------------------------------- commands
def save(out_path: str, expect_root: str | None, select: str | None) -> int:
    t0 = time.perf_counter()
    import numba

    import sparse_ref

    origin = Path(sparse_ref.__file__).resolve()
    print(f"sparse_ref imported from {origin}")
    print(f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS} NUMBA_CACHE_DIR="
          f"{os.environ.get('NUMBA_CACHE_DIR', '(default)')}")  # fmt: skip
    if "form" in inspect.signature(sparse_ref.attention).parameters:
        print("attention(form=...): pinned to each pattern's own form (the rule of a81de5f)")
    if expect_root is not None and not origin.is_relative_to(Path(expect_root).resolve()):
        print(f"ERROR: expected sparse_ref under {expect_root}", file=sys.stderr)
        return 2
    arrays: dict[str, np.ndarray] = {}
    for case in cases():
        if select is not None and not fnmatch.fnmatchcase(case.name, select):
            continue
        t = time.perf_counter()
        for key, arr in _run(case):
            arrays[f"{case.backend}.{case.name}.{key}"] = np.asarray(arr)
        print(f"  {case.name:<36} {time.perf_counter() - t:6.2f} s", flush=True)
    if select is None or fnmatch.fnmatchcase("golden", select):
        t = time.perf_counter()
        arrays.update(_golden())
        print(f"  {'golden smoke':<36} {time.perf_counter() - t:6.2f} s")
    np.savez(out_path, **arrays)
    print(f"{len(arrays)} arrays -> {out_path} in {time.perf_counter() - t0:.1f} s")
    return 0


def _describe(a: np.ndarray, b: np.ndarray) -> str:
    if a.dtype.kind not in "fc":
        return f"{int(np.sum(a != b))} elements differ"
    fa, fb = np.isfinite(a), np.isfinite(b)
    special = np.sum(
        (fa != fb) | (~fa & ~fb & (a.view(f"u{a.itemsize}") != b.view(f"u{b.itemsize}")))
    )
    both = fa & fb
    diff = float(np.max(np.abs(a[both].astype(np.float64) - b[both]), initial=0.0))
    n = int(np.sum(a.view(f"u{a.itemsize}") != b.view(f"u{b.itemsize}")))
    extra = f", {special} non-finite positions/values differ" if special else ""
    return f"max abs diff {diff:.3g} ({n} of {a.size} elements{extra})"


def compare(path_a: str, path_b: str) -> int:
    with np.load(path_a) as fa, np.load(path_b) as fb:
        a, b = dict(fa.items()), dict(fb.items())
    bad = 0
    width = max(map(len, a.keys() | b.keys()), default=0)
    for key in sorted(a.keys() | b.keys()):
        if key not in a or key not in b:
            status = f"MISSING in {path_a if key not in a else path_b}"
        elif a[key].dtype != b[key].dtype or a[key].shape != b[key].shape:
            status = f"DIFFERENT dtype/shape {a[key].dtype}{a[key].shape} vs {b[key].dtype}{b[key].shape}"
        elif np.ascontiguousarray(a[key]).tobytes() == np.ascontiguousarray(b[key]).tobytes():
            status = "identical"
        else:
            status = "DIFFERENT: " + _describe(a[key], b[key])
        bad += status != "identical"
        print(f"{key:<{width}}  {status}")
    total = len(a.keys() | b.keys())
    print(f"\n{total - bad} of {total} arrays identical" + (f", {bad} DIFFERENT" if bad else ""))
    return 1 if bad else 0


def _start_save(
    tree: Path, tag: str, script: Path, tmp: Path, select: str | None
) -> subprocess.Popen[bytes]:
    """``save`` of ``tree`` into ``tmp/<tag>.npz`` in a new process (log in ``tmp/<tag>.log``)."""
    cache = tmp / f"numba-cache-{tag}"
    cache.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_NUM_THREADS="2", NUMBA_CACHE_DIR=str(cache))
    cmd = [sys.executable, str(script), "save", str(tmp / f"{tag}.npz"), "--expect-root", str(tree)]
    cmd += [] if select is None else ["--select", select]
    log = (tmp / f"{tag}.log").open("wb")
    return subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)


def base(rev: str, keep: str | None, select: str | None) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bitwise-base-"))
    tree = tmp / "tree"
    procs: list[subprocess.Popen[bytes]] = []
    git = ["git", "-C", str(REPO)]
    try:
        script = tmp / "check.py"  # one copy of this script for both runs
        shutil.copy2(__file__, script)
        subprocess.run([*git, "worktree", "add", "--quiet", "--detach", str(tree), rev], check=True)
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        print(f"base: {rev} in {tree}")
        print(f"current: {REPO} (HEAD {head.stdout.strip()} plus uncommitted changes)", flush=True)
        t0 = time.perf_counter()
        runs = {"base": tree, "current": REPO}
        procs = [_start_save(t, tag, script, tmp, select) for tag, t in runs.items()]
        codes = [p.wait() for p in procs]
        for tag, code in zip(runs, codes, strict=True):
            print(f"== save [{tag}] exit {code}\n" + (tmp / f"{tag}.log").read_text(), flush=True)
        print(f"== both saves (in parallel): {time.perf_counter() - t0:.1f} s wall", flush=True)
        if any(codes):
            print("ERROR: a save failed (see its log above)", file=sys.stderr)
            return 2
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for tag in runs:
                shutil.copy2(tmp / f"{tag}.npz", Path(keep) / f"{tag}.npz")
        print("== compare base current")
        return compare(str(tmp / "base.npz"), str(tmp / "current.npz"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if tree.exists():
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False)
        subprocess.run([*git, "worktree", "prune"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save", help="compute every array with the imported sparse_ref")
    p.add_argument("out")
    p.add_argument("--expect-root", help="fail unless sparse_ref is imported from under this dir")
    p.add_argument(
        "--select", help="only the cases whose name matches this glob ('golden': the suite)"
    )
    p = sub.add_parser("compare", help="bitwise comparison of two saved files")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("base", help="save at REV (git worktree) and on this tree, then compare")
    p.add_argument("rev")
    p.add_argument("--keep", help="copy base.npz and current.npz into this directory")
    p.add_argument(
        "--select", help="only the cases whose name matches this glob ('golden': the suite)"
    )
    args = parser.parse_args(argv)
    if args.command == "save":
        return save(args.out, args.expect_root, args.select)
    if args.command == "compare":
        return compare(args.a, args.b)
    return base(args.rev, args.keep, args.select)


if __name__ == "__main__":
    sys.exit(main())
