"""Tuning run for the tensor-core kernels (``bsr_forward.cu``'s ``bsr_forward_mma``,
``bsr_forward_wgmma.cu``, ``bsr_backward_mma.cu``) on the bench cases of ``gpu/bench.py`` (B=1,
H=16, d=128, bfloat16): times the forward per kernel and CTA shape (``--fwd-shapes 4x2 wgmma2
wgmma3``; optionally an older ``bsr_forward.cu`` beside it) and the whole backward per CTA size,
next to FlexAttention's forward (and backward, unless ``--no-backward``); checks out and dq on
sampled rows against float64 and dk/dv against FlexAttention's. ``--once`` runs one forward and
backward for a profiler (``ncu -k regex:bsr_ ... --once --no-flex`` gives each kernel's time).

    PYTHONPATH=. python gpu/tune_backward_mma.py [--cases window1k bigbird] [--warps 4 8]
    python gpu/tune_backward_mma.py --write-ref a81de5f .tune/fw_orig.cu   # here, with git
    PYTHONPATH=. python gpu/tune_backward_mma.py --ref-forward .tune/fw_orig.cu  # there
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "gpu" / "bench.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["window1k", "bigbird"])
    ap.add_argument("--warps", nargs="+", type=int, default=[4, 8], help="backward CTA sizes")
    ap.add_argument("--fwd-shapes", nargs="+", default=["4x2", "8x1"],
                    help="forward kernels: mma.sync CTA shapes WARPSxMT, 'wgmma', 'wgmmaS' "
                         "(S stages), 'wgmmaWxS' (W warpgroups), each wgmma one with '-kN' for "
                         "N keys per step")  # fmt: skip
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-backward", action="store_true", help="time the forward only")
    ap.add_argument("--once", action="store_true", help="one forward and backward, no timing")
    ap.add_argument(
        "--ref-forward",
        metavar="SRC",
        help="time another bsr_forward.cu beside ours: a file (includes inlined, e.g. written here "
        "by --write-ref) or a git commit (where the history is present)",
    )
    ap.add_argument("--write-ref", nargs=2, metavar=("COMMIT", "FILE"),
                    help="no run: write bsr_forward.cu at COMMIT, includes inlined, to FILE")  # fmt: skip
    args = ap.parse_args()
    if args.write_ref:
        Path(args.write_ref[1]).write_text(source_at(args.write_ref[0], "bsr_forward.cu"))
        return
    import cupy as cp
    import torch

    bench = _bench()
    stream = bench.torch_stream_for_cupy(cp, torch)
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"GPU: {torch.cuda.get_device_name()}", flush=True)
    sys.modules.setdefault("gpu_bench", bench)  # torch.compile imports mask_mod's module
    for cname in args.cases:
        run_case(bench, bench.CASES[cname](), args, stream, gen)
        torch.cuda.empty_cache()


def run_case(bench: Any, case: Any, args: Any, stream: Any, gen: Any) -> None:
    """Time and check one bench case."""
    import cupy as cp
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    from sparse_ref.backends import cupy as gpu
    from sparse_ref.backends.cupy import backward_mma
    from sparse_ref.bench.flops import useful_flops

    B, H, D = bench.B, bench.H, bench.D
    scale = 1.0 / math.sqrt(D)
    n = case.n
    if case.layout is not None:
        case.layout_t = torch.as_tensor(case.layout, device="cuda")
    ip, bc, mi, masks = case.block_form()
    with stream:
        bsr = gpu.device_bsr((case.block, case.block), ip, bc, mi, masks, n, n)
        tbsr = backward_mma.device_bsr_transpose(bsr)
    q, k, v, dout = (
        torch.randn(B, H, n, D, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(4)
    )
    views = [cp.from_dlpack(x.view(torch.int16)).view(cp.uint16) for x in (q, k, v, dout)]
    flops = useful_flops(case.nnz() * H, D, backward=True)
    print(f"\n== {case.name}: useful backward {flops / 1e9:.0f} GFLOP", flush=True)

    def fwd() -> Any:
        with stream:
            return gpu.forward_bsr(*views[:3], bsr, scale, None, dtype="bfloat16", mma=True)

    out, lse = fwd()
    if args.once:
        with stream:
            backward_mma.backward_bsr_mma(
                *views[:3], views[3], bsr, tbsr, scale, None, dtype="bfloat16", out=out,
                lse=lse,
            )  # fmt: skip
        torch.cuda.synchronize()
        return
    fwd_flops = useful_flops(case.nnz() * H, D)
    for shape in args.fwd_shapes:
        if shape.startswith("wgmma"):  # wgmma[[W x]S][-kN]
            cta, _, keys = shape[5:].partition("-k")
            wgs, _, st = cta.rpartition("x")
            kw: dict[str, Any] = {
                "wgmma": True,
                "stages": int(st) if st else None,
                "warpgroups": int(wgs) if wgs else None,
                "key_tile": int(keys) if keys else None,
            }
        else:
            kw = dict(zip(("warps", "mt"), (int(x) for x in shape.split("x")), strict=True))

        def fwd_shape(kw: dict[str, Any] = kw) -> Any:
            with stream:
                return gpu.forward_bsr(
                    *views[:3], bsr, scale, None, dtype="bfloat16", mma=True, **kw
                )

        ms, _ = bench.timed(fwd_shape, torch)
        o_s = torch.from_dlpack(fwd_shape()[0].view(cp.int16)).view(torch.bfloat16)
        rows = torch.randint(0, n, (64,), device="cuda", generator=gen)
        ref = bench.sampled_reference(case, q, k, v, rows, torch)
        err = (o_s[0][:, rows].double() - ref).abs().max().item()
        print(f"  forward {shape:14s}     {ms:8.3f} ms  {fwd_flops / ms / 1e9:6.1f} "
              f"TFLOP/s useful  out err64 {err:.2e}", flush=True)  # fmt: skip
    if args.ref_forward:
        ref = ref_forward(args.ref_forward, views, bsr, scale, stream)
        ms, _ = bench.timed(ref, torch)
        o2, l2 = ref()
        same = bool((o2 == out).all()) and bool((l2 == lse).all())
        print(f"  forward mma (reference src) {ms:8.3f} ms  same bits: {same}", flush=True)
    for warps in [] if args.no_backward else args.warps:

        def bwd(w: int = warps) -> Any:
            with stream:
                return backward_mma.backward_bsr_mma(
                    *views[:3], views[3], bsr, tbsr, scale, None, dtype="bfloat16", out=out,
                    lse=lse, warps=w,
                )  # fmt: skip

        ms, _ = bench.timed(bwd, torch)
        print(f"  backward mma warps={warps}       {ms:8.3f} ms  {flops / ms / 1e9:6.1f} "
              "TFLOP/s useful", flush=True)  # fmt: skip
        grads = [torch.from_dlpack(g.view(cp.int16)).view(torch.bfloat16) for g in bwd()]
        rows = torch.randint(0, n, (64,), device="cuda", generator=gen)
        ref = bench.sampled_grad_reference(case, q, k, v, dout, rows, torch)
        err = (grads[0][0][:, rows].double() - ref).abs().max().item()
        print(f"    dq err64 on 64 rows {err:.2e} (max |dq| {ref.abs().max().item():.2e})")
    if not args.no_flex:
        flex = torch.compile(flex_attention, dynamic=False)
        bm = bench.flex_block_mask(case, torch)
        ms, _ = bench.timed(lambda: flex(q, k, v, block_mask=bm, scale=scale), torch)
        print(f"  FlexAttention forward       {ms:8.3f} ms", flush=True)
        if not args.no_backward:
            qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
            out_f = flex(qg, kg, vg, block_mask=bm, scale=scale)
            ms, _ = bench.timed(
                lambda: torch.autograd.grad(out_f, (qg, kg, vg), dout, retain_graph=True), torch
            )
            print(f"  FlexAttention backward      {ms:8.3f} ms", flush=True)
            fg = torch.autograd.grad(out_f, (qg, kg, vg), dout, retain_graph=True)
            for name, a, b in zip(("dq", "dk", "dv"), grads, fg, strict=True):
                rel = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                print(f"    {name} vs Flex: max diff / max |flex| = {rel:.2e}")
            del out_f, fg, qg, kg, vg
        torch._dynamo.reset()


def source_at(commit: str, name: str) -> str:
    """``gpu/kernels/<name>`` at ``commit`` with its local includes inlined once each (as the
    backend's ``kernel_source`` does for the working tree)."""
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""
        seen.add(fname)
        text = subprocess.run(
            ["git", "show", f"{commit}:gpu/kernels/{fname}"], cwd=ROOT, check=True,
            capture_output=True, text=True,
        ).stdout.replace("#pragma once", "")  # fmt: skip
        return re.sub(r'^\s*#\s*include\s+"([^"]+)"\s*$', lambda m: expand(m.group(1)), text,
                      flags=re.MULTILINE)  # fmt: skip

    return expand(name)


def ref_forward(commit: str, views: list[Any], bsr: Any, scale: float, stream: Any) -> Any:
    """``bsr_forward_mma<bf16, 128, 4, 2>`` compiled from ``bsr_forward.cu`` at ``commit``."""
    import cupy as cp
    import numpy as np

    from sparse_ref.backends.cupy.tiles import _mma_smem, mma_kernel_name

    name = mma_kernel_name("bfloat16", 128, 4, 2)
    path = Path(commit)
    code = path.read_text() if path.is_file() else source_at(commit, "bsr_forward.cu")
    mod = cp.RawModule(code=code, options=("-std=c++17",), name_expressions=[name])
    kern = mod.get_function(name)
    smem = _mma_smem(128, 4, 2)
    kern.max_dynamic_shared_size_bytes = smem
    q, k, v = views[:3]
    B, H, n, _ = q.shape
    bq, bk = bsr.block

    def fn() -> Any:
        out = cp.empty_like(q)
        lse = cp.empty((B, H, n), dtype=cp.float32)
        args = (
            q, k, v, out, lse, bsr.indptr, bsr.bcols, bsr.mask_index, bsr.mbits, bsr.order,
            np.int32(H), np.int32(k.shape[1]), np.int32(bsr.indptr.shape[0]), np.int32(n),
            np.int32(n), np.int32(128), np.int32(128), np.int32(bq), np.int32(bk),
            np.int32(bsr.mbits.shape[-1]), np.int32(-(-bq // 128)), np.float32(scale),
            np.float32(1.0), np.int32(0),
        )  # fmt: skip
        with stream:
            kern((H * -(-n // bq) * -(-bq // 128), B), (128,), args, shared_mem=smem)
        return out, lse

    return fn


if __name__ == "__main__":
    main()
