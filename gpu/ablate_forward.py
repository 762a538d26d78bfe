"""Where the ``wgmma`` forward's time goes: the bench cases (``gpu/bench.py``, bfloat16) timed with
parts of the kernel's 3-stage step removed, one source patch each, in one process.

The patched kernels compute wrong outputs on purpose (their ``err64`` is meaningless); only the
time counts. Against the unpatched kernel (``full``), a patch that saves much names a bottleneck:

* ``no-softmax``: the scores go to the P V product as they are (no mask, max, exp or sums);
* ``no-pv``: no O += P V (an empty ``wgmma`` group keeps the waits' counting);
* ``no-copy``: K and V are not copied after the first two chunks (the mbarriers still turn).

    PYTHONPATH=. python gpu/ablate_forward.py [--cases window4k] [--ablations full no-softmax]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gpu"))  # tune_backward_mma, which runs each case

SOURCE = "bsr_forward_wgmma.cu"
_WEIGHTS = "chunk_weights(s, ch, ss, mbits, sub * BM + wrow + g, bq, mwords, t4, m2, l, alpha);"
_PV = "issue_pv<T, KS, KV_PANEL>(o[0], cur, sV + (t % STAGES) * KV_BYTES);"
#: name -> [(text of bsr_forward_wgmma.cu, its replacement)]
ABLATIONS: dict[str, list[tuple[str, str]]] = {
    "full": [],
    "no-softmax": [(_WEIGHTS, "alpha[0][0] = alpha[0][1] = 1.f;")],
    "no-pv": [(_PV, "wgmma_fence();\n        wgmma_commit();")],
    "no-copy": [
        ("          put_k(t + 2, c2);", "          mbar_arrive_on_copies(bar(FULL_K, t + 2));"),
        ("          put_v(t + 2, c2);", "          mbar_arrive_on_copies(bar(FULL_V, t + 2));"),
    ],
}


def ablated_source(source: str, name: str) -> str:
    """``source`` (the kernel file, includes inlined) with ablation ``name`` applied; a
    ``ValueError`` when a text it patches is not there exactly once (the kernel changed)."""
    for old, new in ABLATIONS[name]:
        if source.count(old) != 1:
            raise ValueError(f"ablation {name!r}: {old!r} is not in {SOURCE} exactly once")
        source = source.replace(old, new)
    return source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=["window4k"])
    ap.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    ap.add_argument("--shape", default="wgmma2x3-k128", help="a --fwd-shapes entry (3 stages)")
    args = ap.parse_args()
    import tune_backward_mma as tune

    from sparse_ref.backends.cupy import sources

    original = sources.kernel_source
    for name in args.ablations:
        patched = ablated_source(original(SOURCE), name)
        sources.kernel_source = lambda f, p=patched: p if f == SOURCE else original(f)
        sources.compiled.cache_clear()
        print(f"#### {name}", flush=True)
        sys.argv = ["tune", "--cases", *args.cases, "--fwd-shapes", args.shape, "--no-backward",
                    "--no-flex"]  # fmt: skip
        tune.main()
    sources.kernel_source = original
    sources.compiled.cache_clear()


if __name__ == "__main__":
    main()
