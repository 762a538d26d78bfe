"""GPU benchmark: the sparse-ref CuPy kernels against FlexAttention and torch SDPA.

Cases (B=1, H=16, d=128, DESIGN §12): causal window 1024 at n=16384; causal window 4096 at n=65536;
BigBird-like 128-blocks at n=65536 (3 window, 2 global, 3 random blocks per block row); each in
float32 and bfloat16. Forward and backward: prints a table (median of CUDA-event timings, warm-up
excluded; useful TFLOP/s = 4*nnz*d / time forward, 8*nnz*d / time backward, from
``sparse_ref.bench.flops.useful_flops``; ratio = FlexAttention time / ours in the same pass;
fraction of the H100 peak: fp32 SIMT 67 TFLOP/s, bf16 dense 990 TFLOP/s) and writes JSON and a
markdown table named after the card with ``--out DIR``.

Backward, ours: bfloat16 ``backward_bsr_mma`` (tensor cores over the block form and its transpose,
given the forward's out and lse, made once outside the timing); float32 ``backward_bsr``
(``bsr_backward_dq`` + ``bsr_backward_dkdv``, SIMT over the block form and its transpose) and
``backward_csr`` (the same math over the token CSR and its device transpose); with
``--variants`` also the SIMT kernels on bfloat16 inputs and other tile shapes. Every pattern form
is built once per case outside the timing. FlexAttention's is ``torch.autograd.grad`` through the compiled
``flex_attention``: each timed call runs a fresh forward before the start event (not timed), so
the graph is used once and freed (no ``retain_graph``, which FlexAttention's donated buffers
refuse). FlexAttention is compiled afresh for every case (``torch._dynamo.reset()``), so the
recompile limit is never reached and it never falls back to the unfused path.

Run from the repository root on a GPU machine::

    PYTHONPATH=. python gpu/bench.py --out /tmp/bench            # all cases, fp32 and bf16
    PYTHONPATH=. python gpu/bench.py --cases window1k --dtypes bfloat16 --no-sdpa
    python gpu/bench.py --publish /tmp/bench/<card>.json         # no GPU: gpu/results/, docs/gpu.md

Every implementation is also checked on 64 sampled rows against a float64 reference (``err64``:
out forward, dq backward); backward rows also give ``dkdv_vs_flex``, the largest difference of dk
and dv from FlexAttention's (relative to their largest magnitude).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from sparse_ref.bench.flops import useful_flops  # noqa: E402
from sparse_ref.golden.store import write_atomic  # noqa: E402

PEAK = {"float32": 67e12, "bfloat16": 990e12}
T0 = time.perf_counter()
#: backward tile shapes ``(TM, TN)`` timed with ``--variants`` besides the default
BWD_VARIANTS = [(2, 4), (4, 2), (2, 2)]


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


B, H, D = 1, 16, 128


# ------------------------------------------------------------------------------ patterns
class Case:
    """A benchmark pattern: token rule, block form, useful nonzeros."""

    def __init__(self, name: str, n: int, block: int, kind: str, **params: Any) -> None:
        self.name, self.n, self.block, self.kind, self.params = name, n, block, kind, params
        self.layout: np.ndarray | None = None
        if kind == "bigbird":
            self.layout = bigbird_layout(n, block, seed=params.get("seed", 0))

    # token rule, vectorised over broadcast index arrays (NumPy or torch)
    def allowed(self, i: Any, j: Any) -> Any:
        if self.kind == "window":
            w = self.params["window"]
            return (j <= i) & (i - j < w)
        lay = self.layout if isinstance(i, np.ndarray) else self.layout_t
        return lay[i // self.block, j // self.block]

    def nnz(self) -> int:
        n = self.n
        if self.kind == "window":
            w = self.params["window"]
            i = np.arange(n, dtype=np.int64)
            return int(np.minimum(i + 1, w).sum())
        assert self.layout is not None
        sizes = np.minimum(self.block, n - np.arange(self.layout.shape[0]) * self.block)
        return int((self.layout * sizes[:, None] * sizes[None, :]).sum())

    def block_form(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr (1, nb+1), bcols, mask_index, masks)`` with block (block, block)."""
        n, b = self.n, self.block
        nb = -(-n // b)
        ip, cols, mis, masks = [0], [], [], []
        for bi in range(nb):
            r_lo, r_hi = bi * b, min(n, bi * b + b) - 1
            if self.kind == "window":
                w = self.params["window"]
                bjs = range(max(0, r_lo - w + 1) // b, r_hi // b + 1)
            else:
                assert self.layout is not None
                bjs = np.flatnonzero(self.layout[bi])
            for bj in bjs:
                c_lo, c_hi = bj * b, min(n, bj * b + b) - 1
                if self.kind == "window":
                    full = c_hi <= r_lo and c_lo > r_hi - self.params["window"]
                else:
                    full = True
                cols.append(bj)
                if full:
                    mis.append(-1)
                else:
                    i = np.arange(r_lo, r_lo + b)[:, None]
                    j = np.arange(c_lo, c_lo + b)[None, :]
                    m = self.allowed(i, j) & (i < n) & (j < n)
                    mis.append(len(masks))
                    masks.append(m)
            ip.append(len(cols))
        masks_arr = np.stack(masks) if masks else np.zeros((0, b, b), dtype=bool)
        return (
            np.asarray([ip], dtype=np.int64),
            np.asarray(cols, dtype=np.int32),
            np.asarray(mis, dtype=np.int32),
            masks_arr,
        )


def token_csr(case: Case, stream: Any) -> Any:
    """The case's token CSR on the device (one head), built without a host copy."""
    import cupy as cp

    from sparse_ref.backends import cupy as gpu

    n, b = case.n, case.block
    with stream:
        if case.kind == "window":
            w = case.params["window"]
            starts = np.maximum(0, np.arange(n) - w + 1)
            counts = np.arange(n) - starts + 1
            first = cp.asarray(starts)
        else:  # every row of a block row lists the keys of the block row's blocks
            assert case.layout is not None
            nb = case.layout.shape[0]
            keys = [np.arange(bj * b, min(n, bj * b + b)) for bi in range(nb)
                    for bj in np.flatnonzero(case.layout[bi])]  # fmt: skip
            per_brow = np.array([sum(min(n, bj * b + b) - bj * b
                                     for bj in np.flatnonzero(case.layout[bi])) for bi in range(nb)])  # fmt: skip
            counts = np.repeat(per_brow, b)[:n]
            koff = cp.asarray(np.concatenate([[0], np.cumsum(per_brow)[:-1]]))
            keys_d = cp.asarray(np.concatenate(keys))
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ip_d = cp.asarray(indptr)
        pos = cp.arange(int(indptr[-1]), dtype=cp.int64)
        row = cp.searchsorted(ip_d, pos, side="right") - 1
        if case.kind == "window":
            idx = (pos - ip_d[row] + first[row]).astype(cp.int32)
        else:
            idx = keys_d[koff[row // b] + pos - ip_d[row]].astype(cp.int32)
        del pos, row
    return gpu.DeviceCSR(ip_d[None, :], idx, n, n, {})


def bigbird_layout(n: int, block: int, seed: int = 0) -> np.ndarray:
    """Block layout: 3 window blocks, global first/last block rows and columns, 3 random blocks
    per non-global block row drawn outside its window and the global blocks."""
    nb = -(-n // block)
    lay = np.zeros((nb, nb), dtype=bool)
    idx = np.arange(nb)
    lay[np.abs(idx[:, None] - idx[None, :]) <= 1] = True
    glob = [0, nb - 1]
    lay[glob, :] = True
    lay[:, glob] = True
    rng = np.random.default_rng(seed)
    for bi in range(1, nb - 1):
        cand = np.flatnonzero(~lay[bi])
        if len(cand):
            lay[bi, rng.choice(cand, size=min(3, len(cand)), replace=False)] = True
    return lay


CASES = {
    "window1k": lambda: Case("causal window 1024, n=16384", 16384, 128, "window", window=1024),
    "window4k": lambda: Case("causal window 4096, n=65536", 65536, 128, "window", window=4096),
    "bigbird": lambda: Case("BigBird 128-blocks, n=65536", 65536, 128, "bigbird"),
}


# ------------------------------------------------------------------------------ timing
def timed(
    fn: Callable[[], Any],
    torch: Any,
    budget_ms: float = 1500.0,
    setup: Callable[[], Any] | None = None,
) -> tuple[float, list[float]]:
    """Median CUDA-event time (ms) of ``fn``; warm-up excluded; the GPU is kept busy while the host
    enqueues (``torch.cuda._sleep``) so launch overhead does not count as idle GPU time.
    ``setup`` (untimed) runs before each call of ``fn``, its work enqueued before the start event."""

    def once() -> None:
        if setup is not None:
            setup()
        fn()

    once()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    once()
    torch.cuda.synchronize()
    first = (time.perf_counter() - t0) * 1e3
    reps = int(min(20, max(3, budget_ms / max(first, 1e-3))))
    times = []
    for _ in range(reps):
        torch.cuda._sleep(200_000)
        if setup is not None:
            setup()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times), times


def make_mask_mod(case: Case) -> Callable[[Any, Any, Any, Any], Any]:
    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return case.allowed(q_idx, kv_idx)

    return mask_mod


def flex_block_mask(case: Case, torch: Any) -> Any:
    """FlexAttention's 128-block mask of the case (``torch.compile`` of ``create_block_mask``: the
    first one of a process compiles for minutes on a fresh machine)."""
    from torch.nn.attention.flex_attention import create_block_mask

    n = case.n
    return torch.compile(create_block_mask)(
        make_mask_mod(case), None, None, n, n, device="cuda", BLOCK_SIZE=128
    )


def torch_stream_for_cupy(cp: Any, torch: Any) -> Any:
    """torch's current CUDA stream as a CuPy stream, so that our kernels and torch's run in order."""
    current = torch.cuda.current_stream()
    if hasattr(cp.cuda.Stream, "from_external"):  # CuPy >= 14 (ExternalStream is deprecated)
        return cp.cuda.Stream.from_external(current)
    return cp.cuda.ExternalStream(current.cuda_stream)


def sampled_reference(case: Case, q: Any, k: Any, v: Any, rows: Any, torch: Any) -> Any:
    """float64 attention for the given rows of every head (dense over keys, masked)."""
    n = case.n
    j = torch.arange(n, device=q.device)
    mask = case.allowed(rows[:, None], j[None, :])
    s = torch.einsum("hrd,hnd->hrn", q[0][:, rows].double(), k[0].double()) / math.sqrt(D)
    s = s.masked_fill(~mask[None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("hrn,hnd->hrd", p, v[0].double())


def sampled_grad_reference(
    case: Case, q: Any, k: Any, v: Any, dout: Any, rows: Any, torch: Any
) -> Any:
    """float64 dq for the given rows of every head (dense over keys, masked)."""
    n = case.n
    j = torch.arange(n, device=q.device)
    mask = case.allowed(rows[:, None], j[None, :])
    kd, vd = k[0].double(), v[0].double()
    s = torch.einsum("hrd,hnd->hrn", q[0][:, rows].double(), kd) / math.sqrt(D)
    s = s.masked_fill(~mask[None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    del s
    dp = torch.einsum("hrd,hnd->hrn", dout[0][:, rows].double(), vd)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    return torch.einsum("hrn,hnd->hrd", ds, kd) / math.sqrt(D)


class Forms(NamedTuple):
    """A case's pattern on the device: token CSR and its transpose (``None`` where not needed),
    block form and its transpose (``None`` without backward)."""

    csr: Any
    tcsr: Any
    bsr: Any
    tbsr: Any


def run_dtype(
    case: Case,
    dtype: str,
    forms: Forms,
    block_mask: Any,
    rows: Any,
    flex: Any,
    gen: Any,
    stream: Any,
    args: Any,
) -> list[dict[str, Any]]:
    """Time every implementation of one case in one dtype; rows of the result table."""
    import cupy as cp
    import torch
    import torch.nn.functional as F

    from sparse_ref.backends import cupy as gpu

    n = case.n
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    q, k, v = (torch.randn(B, H, n, D, device="cuda", generator=gen).to(tdt) for _ in range(3))
    ref = sampled_reference(case, q, k, v, rows, torch)
    scale = 1.0 / math.sqrt(D)
    if dtype == "bfloat16":
        qa, ka, va = (cp.from_dlpack(x.view(torch.int16)).view(cp.uint16) for x in (q, k, v))
    else:
        qa, ka, va = (cp.from_dlpack(x) for x in (q, k, v))

    def ours(kind: str, **kw: Any) -> Callable[[], Any]:
        def fn() -> Any:
            with stream:
                if kind == "csr":
                    return gpu.forward_csr(qa, ka, va, forms.csr, scale, None, dtype=dtype, **kw)[0]
                return gpu.forward_bsr(qa, ka, va, forms.bsr, scale, None, dtype=dtype, **kw)[0]

        return fn

    impls: list[tuple[str, Callable[[], Any]]] = []
    if args.no_forward:
        pass
    elif dtype == "float32":
        configs = sorted(gpu.SIMT_CONFIGS) if args.variants else [None]
        for cfg in configs:
            tag = f" {cfg}" if cfg else ""
            if forms.csr is not None:
                impls.append((f"sparse-ref csr simt{tag}", ours("csr", simt=cfg)))
            impls.append((f"sparse-ref bsr simt{tag}", ours("bsr", mma=False, simt=cfg)))
    else:
        if gpu.has_wgmma():  # the default on Hopper; the mma.sync kernel beside it
            impls.append(("sparse-ref bsr wgmma", ours("bsr", wgmma=True)))
        shapes = [(8, 1), (4, 1), (4, 2)] if args.variants else [(None, None)]
        for warps, mt in shapes:
            tag = f" {warps}w x{mt}" if warps else ""
            impl = ours("bsr", wgmma=False, warps=warps, mt=mt)
            impls.append((f"sparse-ref bsr mma.sync{tag}", impl))
    if flex is not None and not args.no_forward:
        impls.append(("FlexAttention", lambda: flex(q, k, v, block_mask=block_mask, scale=scale)))
    if not args.no_sdpa and not args.no_forward and n <= 16384:
        ii = torch.arange(n, device="cuda")
        dense = case.allowed(ii[:, None], ii[None, :])
        impls.append(
            (
                "SDPA dense + bool mask",
                lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=scale),
            )
        )
    nnz_head = case.nnz()
    flops = useful_flops(nnz_head * H, D)
    out_rows: list[dict[str, Any]] = []
    flex_ms = None
    for name, fn in impls:
        log(f"{dtype} forward: {name}")
        row: dict[str, Any] = {
            "case": case.name,
            "dtype": dtype,
            "pass": "forward",
            "impl": name,
            "nnz_per_head": nnz_head,
        }
        try:
            ms, times = timed(fn, torch)
            out = fn()
            if not isinstance(out, torch.Tensor):
                if dtype == "bfloat16":
                    out = torch.from_dlpack(out.view(cp.int16)).view(torch.bfloat16)
                else:
                    out = torch.from_dlpack(out)
            err = (out[0][:, rows].double() - ref).abs().max().item()
            row.update(ms=ms, times_ms=times, tflops=flops / ms / 1e9, err64=err,
                       frac_peak=flops / ms / 1e-3 / PEAK[dtype])  # fmt: skip
            if name == "FlexAttention":
                flex_ms = ms
            msg = f"{ms:9.3f} ms {row['tflops']:7.1f} TFLOP/s err64 {err:.2e}"
        except Exception as exc:  # keep going: the failure is reported in the table
            row.update(error=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
            msg = row["error"]
        out_rows.append(row)
        print(f"  {dtype:9s} {name:28s} {msg}", flush=True)
    for r in out_rows:
        if "ms" in r and flex_ms:
            r["flex_over_this"] = flex_ms / r["ms"]
    if not args.no_backward:
        out_rows += run_backward(case, dtype, q, k, v, (qa, ka, va), forms, block_mask, rows,
                                 flex, gen, stream, args)  # fmt: skip
    return out_rows


def run_backward(
    case: Case,
    dtype: str,
    q: Any,
    k: Any,
    v: Any,
    views: tuple[Any, Any, Any],
    forms: Forms,
    block_mask: Any,
    rows: Any,
    flex: Any,
    gen: Any,
    stream: Any,
    args: Any,
) -> list[dict[str, Any]]:
    """Time the backward passes of one case in one dtype; rows of the result table."""
    import cupy as cp
    import torch

    from sparse_ref.backends import cupy as gpu

    n = case.n
    scale = 1.0 / math.sqrt(D)
    dout = torch.randn(B, H, n, D, device="cuda", generator=gen).to(q.dtype)
    ref_dq = sampled_grad_reference(case, q, k, v, dout, rows, torch)
    if dtype == "bfloat16":
        ga = cp.from_dlpack(dout.view(torch.int16)).view(cp.uint16)
    else:
        ga = cp.from_dlpack(dout)

    def as_torch(x: Any) -> Any:
        if dtype == "bfloat16":
            return torch.from_dlpack(x.view(cp.int16)).view(torch.bfloat16)
        return torch.from_dlpack(x)

    # (name, timed call, untimed setup before each call)
    impls: list[tuple[str, Callable[[], Any], Callable[[], Any] | None]] = []

    def ours(form: str, tiles: tuple[int, int] | None) -> Callable[[], Any]:
        def fn() -> Any:
            with stream:
                if form == "bsr":
                    return gpu.backward_bsr(*views, ga, forms.bsr, forms.tbsr, scale, None,
                                            dtype=dtype, tiles=tiles)  # fmt: skip
                return gpu.backward_csr(*views, ga, forms.csr, forms.tcsr, scale, None,
                                        dtype=dtype, tiles=tiles)  # fmt: skip

        return fn

    if dtype == "bfloat16":  # tensor cores; the forward's out and lse made once, untimed
        with stream:
            out_f, lse_f = gpu.forward_bsr(*views, forms.bsr, scale, None, dtype=dtype, mma=True)

        def mma() -> Any:
            with stream:
                return gpu.backward_bsr_mma(*views, ga, forms.bsr, forms.tbsr, scale, None,
                                            dtype=dtype, out=out_f, lse=lse_f)  # fmt: skip

        impls.append(("sparse-ref bsr backward mma", mma, None))
    # SIMT (float32 arithmetic): the float32 rows; for bfloat16 only with --variants
    simt_forms = ("bsr", "csr") if forms.csr is not None else ("bsr",)
    for form in simt_forms if (dtype == "float32" or args.variants) else ():
        impls.append((f"sparse-ref {form} backward simt", ours(form, None), None))
        if args.variants:
            for tiles in BWD_VARIANTS:
                tag = f"{tiles[0]}x{tiles[1]}"
                impls.append((f"sparse-ref {form} backward simt {tag}", ours(form, tiles), None))
    if flex is not None:
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        graph: dict[str, Any] = {}

        def flex_forward() -> None:  # a fresh graph per call: backward frees it
            graph["out"] = flex(qg, kg, vg, block_mask=block_mask, scale=scale)

        def flex_backward() -> Any:
            return torch.autograd.grad(graph.pop("out"), (qg, kg, vg), dout)

        impls.append(("FlexAttention backward", flex_backward, flex_forward))
    flops = useful_flops(case.nnz() * H, D, backward=True)
    out_rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for name, fn, setup in impls:
        log(f"{dtype} backward: {name}")
        row: dict[str, Any] = {
            "case": case.name,
            "dtype": dtype,
            "pass": "backward",
            "impl": name,
            "nnz_per_head": case.nnz(),
        }
        try:
            ms, times = timed(fn, torch, setup=setup)
            if setup is not None:
                setup()
            grads = [g if isinstance(g, torch.Tensor) else as_torch(g) for g in fn()]
            torch.cuda.synchronize()
            results[name] = grads
            err = (grads[0][0][:, rows].double() - ref_dq).abs().max().item()
            row.update(ms=ms, times_ms=times, tflops=flops / ms / 1e9, err64=err,
                       frac_peak=flops / ms / 1e-3 / PEAK[dtype])  # fmt: skip
            msg = f"{ms:9.3f} ms {row['tflops']:7.1f} TFLOP/s dq err64 {err:.2e}"
        except Exception as exc:  # keep going: the failure is reported in the table
            row.update(error=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
            msg = row["error"]
        out_rows.append(row)
        print(f"  {dtype:9s} {name:28s} {msg}", flush=True)
    flex_row = next((r for r in out_rows if r["impl"] == "FlexAttention backward"), None)
    flex_grads = results.get("FlexAttention backward")
    for r in out_rows:
        if "ms" in r and flex_row is not None and "ms" in flex_row:
            r["flex_over_this"] = flex_row["ms"] / r["ms"]
        if r["impl"] in results and flex_grads is not None and r is not flex_row:
            diffs = []
            for a, b in zip(results[r["impl"]][1:], flex_grads[1:], strict=True):
                diffs.append(((a.float() - b.float()).abs().max() / b.float().abs().max()).item())
            r["dkdv_vs_flex"] = max(diffs)
    del results, flex_grads
    return out_rows


# ------------------------------------------------------------------------------ output
ROOT = Path(__file__).resolve().parent.parent
DOCS_BEGIN = "<!-- gpu-bench:begin (written by gpu/bench.py --publish) -->"
DOCS_END = "<!-- gpu-bench:end -->"


def card_slug(device: str) -> str:
    """File name stem for a card: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return "-".join("".join(c if c.isalnum() else " " for c in device.lower()).split())


def markdown_table(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The results as a markdown table, the card and versions named above it."""
    lines = [
        f"GPU: **{meta['device']}**; torch {meta['torch']}, CuPy {meta['cupy']}; "
        f"B={meta['B']}, H={meta['H']}, d={meta['d']}; {meta.get('date', '')}. One process, "
        "FlexAttention timed in the same run as ours. Flex / this: FlexAttention's time over this "
        "one in the same pass (higher is better). Useful FLOPs: 4·nnz·d forward, 8·nnz·d backward; "
        "% peak of the H100 figures (fp32 SIMT 67 TFLOP/s, bf16 dense 990). err: largest error "
        "against float64 on 64 sampled rows (out forward, dq backward).",
        "",
        "| case | dtype | pass | implementation | ms | useful TFLOP/s | Flex / this | % peak | err |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    last_case = None
    for r in results:
        case = r["case"] if r["case"] != last_case else ""
        last_case = r["case"]
        head = f"| {case} | {r['dtype']} | {r['pass']} | {r['impl']} "
        if "ms" not in r:
            lines.append(f"{head}| failed: {r['error'][:80]} | | | | |")
            continue
        ratio = f"{r['flex_over_this']:.2f}×" if "flex_over_this" in r else "-"
        lines.append(
            f"{head}| {r['ms']:.3f} | {r['tflops']:.1f} | {ratio} | {100 * r['frac_peak']:.1f}% "
            f"| {r['err64']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def publish(json_path: Path) -> None:
    """Copy a run's JSON to ``gpu/results/<card>.json``, its table to ``gpu/results/<card>.md``,
    and the table into docs/gpu.md between the bench markers (no GPU needed)."""
    data = json.loads(json_path.read_text())
    slug = card_slug(data["meta"]["device"])
    results_dir = ROOT / "gpu" / "results"
    results_dir.mkdir(exist_ok=True)
    table = markdown_table(data["meta"], data["results"])
    write_atomic(results_dir / f"{slug}.json", (json.dumps(data, indent=1) + "\n").encode())
    write_atomic(
        results_dir / f"{slug}.md",
        f"# gpu/bench.py on {data['meta']['device']}\n\n{table}".encode(),
    )
    docs = ROOT / "docs" / "gpu.md"
    text = docs.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        raise SystemExit(f"{docs} has no {DOCS_BEGIN!r} ... {DOCS_END!r} section to replace")
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    write_atomic(docs, f"{head}{DOCS_BEGIN}\n{table}{DOCS_END}{tail}".encode())
    print(f"wrote {results_dir / slug}.json, {results_dir / slug}.md and {docs}")


# ------------------------------------------------------------------------------ main
def fresh_flex(torch: Any) -> Any:
    """FlexAttention compiled afresh (one compiled function per case: its guards then never exceed
    the recompile limit, which would fall back to the unfused, dense path)."""
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(flex_attention, dynamic=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--out", type=Path, default=None, help="write <card>.json and <card>.md here")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON to this file")
    ap.add_argument("--publish", type=Path, default=None, metavar="JSON",
                    help="no run: put a run's JSON and table in gpu/results/ and docs/gpu.md")  # fmt: skip
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--variants", action="store_true", help="also time alternative kernel configs")
    ap.add_argument("--no-forward", action="store_true", help="time the backward passes only")
    ap.add_argument("--no-backward", action="store_true", help="time the forward passes only")
    args = ap.parse_args()
    if args.publish is not None:
        publish(args.publish)
        return

    import cupy as cp
    import torch

    from sparse_ref.backends import cupy as gpu

    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}; cupy {cp.__version__}", flush=True)
    results: list[dict[str, Any]] = []
    meta = {
        "device": dev,
        "torch": torch.__version__,
        "cupy": cp.__version__,
        "B": B,
        "H": H,
        "d": D,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(sys.argv),
    }

    def dump() -> None:
        blob = json.dumps({"meta": meta, "results": results}, indent=1)
        if args.json:
            write_atomic(args.json, blob.encode())
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_atomic(args.out / f"{card_slug(dev)}.json", blob.encode())
            write_atomic(args.out / f"{card_slug(dev)}.md", markdown_table(meta, results).encode())

    stream = torch_stream_for_cupy(cp, torch)
    gen = torch.Generator(device="cuda").manual_seed(0)

    for cname in args.cases:
        case = CASES[cname]()
        n = case.n
        if case.layout is not None:
            case.layout_t = torch.as_tensor(case.layout, device="cuda")
        t0 = time.perf_counter()
        nnz_head = case.nnz()
        ip, bc, mi, masks = case.block_form()
        bsr = gpu.device_bsr((case.block, case.block), ip, bc, mi, masks, n, n)
        csr = token_csr(case, stream) if (case.kind == "window" or not args.no_backward) else None
        tcsr = tbsr = None
        if not args.no_backward:
            with stream:
                tcsr = gpu.device_csr_transpose(csr)
                tbsr = gpu.device_bsr_transpose(bsr)
        forms = Forms(csr, tcsr, bsr, tbsr)
        print(f"\n== {case.name}: nnz/head {nnz_head:.4g} (density {nnz_head / n / n:.4f}), "
              f"{len(bc)} blocks ({int((mi >= 0).sum())} partial); built in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
        flex = block_mask = None
        if not args.no_flex:
            flex = fresh_flex(torch)
            log("building FlexAttention's block mask (torch.compile of create_block_mask)")
            block_mask = flex_block_mask(case, torch)
        log("block mask built")
        rows = torch.randint(0, n, (64,), device="cuda", generator=gen)
        for dtype in args.dtypes:
            results += run_dtype(case, dtype, forms, block_mask, rows, flex, gen, stream, args)
            dump()
            torch.cuda.empty_cache()
        del forms, csr, tcsr, bsr, tbsr, block_mask
        torch.cuda.empty_cache()
        cp.get_default_memory_pool().free_all_blocks()

    print()
    print(markdown_table(meta, results))
    dump()
    failed = [r for r in results if "ms" not in r]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(results)} measurements failed (see the table)")


if __name__ == "__main__":
    main()
