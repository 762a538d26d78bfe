"""Bitwise check of the CUDA kernels against an earlier revision's sources (refactors must keep
every bit): the CuPy backend's forward and backward on fixed inputs, once with the kernel sources
of the working tree and once with the sources exported from a git revision.

Two steps, the first where git is (no GPU needed), the second on the GPU machine::

    python gpu/bitwise_check.py export 6c7c18c .old_kernels     # gpu/kernels at that revision
    PYTHONPATH=. python gpu/bitwise_check.py compare .old_kernels

``compare`` runs the kernels both trees have and exits non-zero if any output differs in any bit
(NaN equal to NaN): always the backward over token CSR (``kernel="csr"``) and the forward with
``kernel="csr"`` and ``"bsr"``; the SIMT block-form backward (``kernel="bsr_simt"``) when the old
tree has ``bsr_backward_simt.cu``; the tensor-core forward and backward on float16 and bfloat16
cases when it has ``bsr_backward_mma.cu``. The cases cover float32, float64, float16 and bfloat16,
GQA, softcap, ragged tiles, empty rows, a block form and head dims up to 256.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (dtype, softcap, (B, H, H_kv, n, d, d_v), backward tiles)
CASES = [
    ("float32", None, (2, 4, 2, 333, 64, 64), None),
    ("float32", 4.0, (1, 2, 1, 300, 128, 96), None),
    ("float32", None, (1, 2, 2, 257, 40, 40), (2, 2)),
    ("float64", None, (1, 4, 2, 290, 64, 64), None),
    ("float64", 3.0, (1, 2, 1, 200, 256, 256), None),
]
#: tensor-core cases (d <= 128): (dtype, softcap, (B, H, H_kv, n, d, d_v))
MMA_CASES = [
    ("float16", None, (2, 4, 2, 333, 64, 64)),
    ("bfloat16", 4.0, (1, 2, 1, 300, 128, 96)),
    ("bfloat16", None, (1, 4, 4, 257, 40, 40)),
]


def kernels_of(kernel_dir: Path) -> set[str]:
    """Which optional kernel families a kernel tree has: ``bsr_simt`` (block-form SIMT backward),
    ``mma`` (tensor-core backward)."""
    have = {"bsr_simt": "bsr_backward_simt.cu", "mma": "bsr_backward_mma.cu"}
    return {name for name, file in have.items() if (kernel_dir / file).exists()}


def export(rev: str, dest: Path) -> None:
    """Write ``gpu/kernels`` of ``rev`` into ``dest`` (``git archive``)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "gpu/kernels"], check=True, capture_output=True
    ).stdout
    subprocess.run(
        ["tar", "-x", "--strip-components=2", "-C", str(dest)], input=archive, check=True
    )
    print(f"gpu/kernels of {rev} in {dest}: {sorted(p.name for p in dest.iterdir())}")


def _mask(n: int, rng: np.random.Generator) -> np.ndarray:
    """A causal window of 150 plus 5% random entries, rows 3 and n - 1 empty."""
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = ((j <= i) & (j > i - 150)) | (rng.random((n, n)) < 0.05)
    mask[[3, n - 1]] = False
    return mask


def outputs(kernel_dir: Path | None, families: set[str]) -> list[tuple[str, tuple[Any, ...]]]:
    """Every case's outputs with the sources of ``kernel_dir`` (None: the working tree's), for the
    optional kernel ``families`` (see :func:`kernels_of`) besides the ones every tree has."""
    import cupy as cp

    from sparse_ref import Pattern
    from sparse_ref.backends import cupy as gpu
    from sparse_ref.backends.cupy import sources

    saved: Callable[[], Path] = sources.kernel_dir
    sources.kernel_source.cache_clear()
    gpu.clear_cache()
    if kernel_dir is not None:
        sources.kernel_dir = lambda: kernel_dir  # type: ignore[assignment]
    try:
        results = []
        for dtype, softcap, (B, H, Hkv, n, d, dv), tiles in CASES:
            rng = np.random.default_rng(n + d)
            pattern = Pattern.from_dense(_mask(n, rng))
            blocked = pattern.with_block_form((64, 64))
            shapes = [(B, H, n, d), (B, Hkv, n, d), (B, Hkv, n, dv), (B, H, n, dv)]
            q, k, v, g = (cp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes)
            tag = f"{dtype} softcap={softcap} {(B, H, Hkv, n, d, dv)} tiles={tiles}"
            results.append(
                (
                    f"backward csr {tag}",
                    gpu.backward(
                        q, k, v, pattern, g, None, None, 0.2, softcap, tiles=tiles, kernel="csr"
                    ),
                )  # fmt: skip
            )
            results.append(
                (f"forward csr {tag}", gpu.forward(q, k, v, pattern, 0.2, softcap, kernel="csr"))
            )
            results.append(
                (f"forward bsr {tag}", gpu.forward(q, k, v, blocked, 0.2, softcap, kernel="bsr"))
            )
            if "bsr_simt" in families:
                grads = gpu.backward(
                    q, k, v, blocked, g, None, None, 0.2, softcap, tiles=tiles, kernel="bsr_simt"
                )
                results.append((f"backward bsr_simt {tag}", grads))
        for dtype, softcap, (B, H, Hkv, n, d, dv) in MMA_CASES if "mma" in families else []:
            rng = np.random.default_rng(n + d)
            blocked = Pattern.from_dense(_mask(n, rng)).with_block_form((64, 64))
            shapes = [(B, H, n, d), (B, Hkv, n, d), (B, Hkv, n, dv), (B, H, n, dv)]
            arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            q, k, v, g = (cp.asarray(_half_bits(a, dtype)) for a in arrays)
            tag = f"{dtype} softcap={softcap} {(B, H, Hkv, n, d, dv)}"
            out, lse = gpu.forward(q, k, v, blocked, 0.2, softcap, dtype=dtype, kernel="bsr")
            results.append((f"forward bsr mma {tag}", (out, lse)))
            grads = gpu.backward(
                q, k, v, blocked, g, out, lse, 0.2, softcap, dtype=dtype, kernel="bsr_mma"
            )
            results.append((f"backward bsr_mma {tag}", grads))
        return results
    finally:
        sources.kernel_dir = saved
        sources.kernel_source.cache_clear()
        gpu.clear_cache()


def _half_bits(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as float16, or as bfloat16 bits (uint16, round to nearest even)."""
    if dtype == "float16":
        return a.astype(np.float16)
    import ml_dtypes

    return a.astype(ml_dtypes.bfloat16).view(np.uint16)


def compare(old_dir: Path) -> int:
    import cupy as cp

    families = kernels_of(old_dir) & kernels_of(ROOT / "gpu" / "kernels")
    print(f"optional kernels compared: {sorted(families) or 'none'}")
    old = outputs(old_dir.resolve(), families)
    new = outputs(None, families)
    differ = 0
    for (name, a), (_, b) in zip(old, new, strict=True):
        same = all(bool(cp.array_equal(x, y, equal_nan=True)) for x, y in zip(a, b, strict=True))
        differ += not same
        print(f"{'same  ' if same else 'DIFFER'} {name}")
    print(f"{len(old) - differ} of {len(old)} outputs bitwise identical")
    return 1 if differ else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="gpu/kernels of a git revision into a directory")
    ex.add_argument("rev")
    ex.add_argument("dest", type=Path)
    co = sub.add_parser("compare", help="run both source trees on the GPU, compare the bits")
    co.add_argument("old_dir", type=Path)
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.rev, args.dest)
    else:
        raise SystemExit(compare(args.old_dir))


if __name__ == "__main__":
    main()
