"""asv: the Numba BSR forward kernel against FlexAttention on CPU (DESIGN §12 targets).

Cases (float32, d = 64, B = 1, H = 1, 2 threads):

- ``window4096_n65536``: causal sliding window 4096 at n = 65536, blocks of 128 (the block form
  built directly by ``blocks.causal_sliding_window``).
- ``bigbird64_n16384``: a BigBird-like layout of 64-blocks at n = 16384: 3 window blocks, the first
  and last block rows and columns global, 3 random blocks per other row (seed 0).

FlexAttention is compiled once in ``setup``, with either its own ``create_block_mask`` (what the
brief prescribes and a user writes) or our block form as its BlockMask (its best case).

``track_gflops`` is useful GFLOP/s (``4 * nnz * d`` per forward), ``track_ratio_to_flex`` the
FlexAttention time over ours, both measured in the same process, interleaved, minimum of repeats;
``track_gemm_peak`` is NumPy float32 GEMM GFLOP/s on the same threads, so the figures can be read as
a fraction of the machine's peak. ``python asv_benchmarks/bench_bsr_forward.py`` prints the same
as a table without asv.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

THREADS = 2
CASES = ["window4096_n65536", "bigbird64_n16384"]
FLEX_MASKS = ["create_block_mask", "exact_blocks"]
D = 64


def _threads() -> None:
    import numba

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass


def bigbird_like_layout(nb: int, seed: int = 0) -> np.ndarray:
    """``(nb, nb)`` bool: window ``|i - j| <= 1``, global first/last rows and columns, and 3
    distinct random blocks per other row drawn from the blocks not already set."""
    i = np.arange(nb)
    layout = np.abs(i[:, None] - i[None, :]) <= 1
    layout[[0, -1], :] = True
    layout[:, [0, -1]] = True
    rng = np.random.default_rng(seed)
    for r in range(1, nb - 1):
        free = np.flatnonzero(~layout[r])
        layout[r, rng.choice(free, size=min(3, len(free)), replace=False)] = True
    return layout


def make_case(case: str) -> tuple[Any, ...]:
    """``(q, k, v, pattern, mask_mod)`` for ``case`` (``mask_mod``: the rule for FlexAttention)."""
    from sparse_ref import Pattern, blocks

    rng = np.random.default_rng(0)
    if case == "window4096_n65536":
        n, window = 65536, 4096
        pattern = Pattern.from_bsr(blocks.causal_sliding_window(n, window, block=128))

        def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    elif case == "bigbird64_n16384":
        n, block = 16384, 64
        layout = bigbird_like_layout(n // block)
        pattern = Pattern.from_block_layout(layout, block)
        try:
            import torch

            layout_t = torch.from_numpy(layout)
        except ImportError:
            layout_t = None

        def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return layout_t[q_idx // block, kv_idx // block]

    else:
        raise ValueError(f"unknown case {case!r}")
    q, k, v = (rng.standard_normal((1, 1, n, D), dtype=np.float32) for _ in range(3))
    return q, k, v, pattern, mask_mod


def numba_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, pattern: Any) -> Callable[[], Any]:
    """The backend call that ``sparse_ref.attention`` makes, without the input validation."""
    from sparse_ref.backends import numba as backend

    scale = 1.0 / np.sqrt(q.shape[-1])
    return lambda: backend.forward(q, k, v, pattern, scale, None)


def flex_block_mask(pattern: Any, mask_mod: Any) -> Any:
    """FlexAttention ``BlockMask`` of a block-form pattern: its full blocks as ``full_kv_*`` (no
    mask_mod), its partial blocks as ``kv_*`` (mask_mod applied). Built from the block form, since
    ``create_block_mask`` on the CPU evaluates all n x n entries (32 GiB at n = 65536)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    bs = pattern.to_bsr()
    nbq, nbk = bs.grid
    rows = bs.block_rows()

    def table(sel: np.ndarray) -> tuple[Any, Any]:
        counts = np.bincount(rows[sel], minlength=nbq).astype(np.int32)
        indices = np.zeros((nbq, nbk), dtype=np.int32)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(int(sel.sum())) - np.repeat(start, counts)
        indices[rows[sel], slot] = bs.indices[sel]
        return torch.from_numpy(counts)[None, None], torch.from_numpy(indices)[None, None]

    kv_num, kv_idx = table(~bs.full)
    full_num, full_idx = table(bs.full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=bs.block,
        mask_mod=mask_mod,
        seq_lengths=pattern.shape,
    )


def flex_create_block_mask(n: int, mask_mod: Any) -> Any:
    """FlexAttention's own ``create_block_mask`` on the CPU (default 128 blocks; ``_compile=True``
    evaluates the mask block by block instead of materialising n x n entries)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu", _compile=True
    )


def flex_runner(q: np.ndarray, k: np.ndarray, v: np.ndarray, block_mask: Any) -> Callable[[], Any]:
    """Compiled FlexAttention on the CPU (``torch.compile(flex_attention)``), block mask given."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention)
    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))

    def run() -> Any:
        with torch.no_grad():
            return flex(qt, kt, vt, block_mask=block_mask)

    return run


def flex_mask(kind: str, pattern: Any, mask_mod: Any) -> Any:
    """``"create_block_mask"``: FlexAttention's usual path; ``"exact_blocks"``: our block form as
    a BlockMask (full blocks skip mask_mod): FlexAttention's best case for the same structure."""
    if kind == "create_block_mask":
        return flex_create_block_mask(pattern.shape[0], mask_mod)
    if kind == "exact_blocks":
        return flex_block_mask(pattern, mask_mod)
    raise ValueError(f"unknown flex mask kind {kind!r}")


def interleaved_min(fns: list[Callable[[], Any]], repeat: int = 5) -> list[float]:
    """Best wall time of each function, calls interleaved so that load changes hit all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def gemm_peak(n: int = 2048, repeat: int = 5) -> float:
    """NumPy float32 GEMM GFLOP/s (``n x n`` matrices, best of ``repeat``)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b
    (t,) = interleaved_min([lambda: a @ b], repeat)
    return 2 * n**3 / t / 1e9


class BSRForward:
    """Time and useful GFLOP/s of the Numba BSR forward."""

    params = CASES
    param_names = ["case"]
    timeout = 900

    def setup(self, case: str) -> None:
        _threads()
        q, k, v, self.pattern, _ = make_case(case)
        self.flops = 4 * self.pattern.nnz * q.shape[-1]
        self.run = numba_runner(q, k, v, self.pattern)
        self.run()  # compile / load from cache

    def time_forward(self, case: str) -> None:
        self.run()

    def track_gflops(self, case: str) -> float:
        (t,) = interleaved_min([self.run], 5)
        return self.flops / t / 1e9

    track_gflops.unit = "GFLOP/s"  # type: ignore[attr-defined]


class FlexForward:
    """FlexAttention (``torch.compile``, CPU) on the same cases, and our speed-up over it.

    ``flex_mask``: ``create_block_mask`` (FlexAttention's own block mask, default 128 blocks, what a
    user writes) or ``exact_blocks`` (our block form handed over as a BlockMask; for the BigBird
    case that means 64-blocks, all full: FlexAttention's best case).
    """

    params = [CASES, FLEX_MASKS]
    param_names = ["case", "flex_mask"]
    timeout = 1800

    def setup(self, case: str, kind: str) -> None:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        _threads()
        q, k, v, pattern, mask_mod = make_case(case)
        self.flops = 4 * pattern.nnz * q.shape[-1]
        self.ours = numba_runner(q, k, v, pattern)
        self.flex = flex_runner(q, k, v, flex_mask(kind, pattern, mask_mod))
        self.ours()
        self.flex()  # compile

    def time_flex(self, case: str, kind: str) -> None:
        self.flex()

    def track_flex_gflops(self, case: str, kind: str) -> float:
        (t,) = interleaved_min([self.flex], 3)
        return self.flops / t / 1e9

    track_flex_gflops.unit = "GFLOP/s"  # type: ignore[attr-defined]

    def track_ratio_to_flex(self, case: str, kind: str) -> float:
        ours, flex = interleaved_min([self.ours, self.flex], 5)
        return flex / ours

    track_ratio_to_flex.unit = "x FlexAttention"  # type: ignore[attr-defined]


class GemmPeak:
    """NumPy float32 GEMM throughput on this machine (the denominator of "fraction of peak")."""

    timeout = 300

    def setup(self) -> None:
        _threads()

    def track_gemm_peak(self) -> float:
        return gemm_peak()

    track_gemm_peak.unit = "GFLOP/s"  # type: ignore[attr-defined]


def main() -> None:
    """Print ours vs FlexAttention for every case, all timed in this process (wall clock,
    interleaved, best of 5)."""
    _threads()
    peak = gemm_peak()
    print(f"NumPy float32 GEMM peak: {peak:.1f} GFLOP/s ({THREADS} threads)")
    for case in CASES:
        q, k, v, pattern, mask_mod = make_case(case)
        flops = 4 * pattern.nnz * q.shape[-1]
        names, fns = ["sparse-ref BSR"], [numba_runner(q, k, v, pattern)]
        try:
            for kind in FLEX_MASKS:
                fns.append(flex_runner(q, k, v, flex_mask(kind, pattern, mask_mod)))
                names.append(f"flex ({kind})")
        except ImportError:
            pass
        for fn in fns:
            fn()
        times = interleaved_min(fns, 5)
        for name, t in zip(names, times, strict=True):
            gf = flops / t / 1e9
            print(
                f"{case:18s} {name:28s} {t * 1e3:8.1f} ms {gf:7.1f} GFLOP/s "
                f"{gf / peak:5.0%} of GEMM"
                f"  ours/this: {t / times[0]:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
