"""asv: the peers, FlexAttention (compiled, CPU) and torch SDPA with a boolean mask, against ours.

Each ratio is the peer's time over ours, both measured in the same process, calls interleaved,
best of repeats; float32, B = H = 1, 2 threads, the patterns and sizes of the forward suites.
Skipped without torch (``NotImplementedError`` in ``setup``), where a window covers the sequence,
and for SDPA above n = 16384 (its dense n x n boolean mask).

FlexAttention (``torch.compile(flex_attention, dynamic=False)``) runs with either block mask:
``create_block_mask`` (FlexAttention's own, default 128-blocks, what a user writes) or
``exact_blocks`` (our block form handed over as its BlockMask, full blocks skipping ``mask_mod``:
its best case for the same structure). It is compiled once, in ``setup_cache``
(:func:`compile_flex`, shared by :class:`FlexForward` and :class:`FlexCompile` through the mixin
:class:`FlexGrid`, so asv runs it once for both): every case, one after the other, into a private
Inductor cache in asv's cache directory (the working directory that ``setup_cache`` and the
benchmarks share), timing the first call against a steady one; the compile times are reported
separately by ``FlexCompile.track_compile_s``. The first case compiles cold; later ones reuse
what Inductor already generated for identical kernels, as later compiles in a user's process
would. Compiling the whole grid takes about 5 minutes on 2 cores, once per run.

Warm-ups (see ``_common``): ``setup`` sets 2 threads (torch too) and makes ``malloc`` keep freed
memory, builds the inputs and the block mask, and calls every timed function once: FlexAttention's
recompilation, which finds ``setup_cache``'s Inductor cache warm, our kernels' Numba compilation or
cache load, torch's lazy initialisation and the first touch of all outputs happen there, outside
every measurement. FlexAttention has no backward on the CPU (torch 2.13), so the backward peer is
SDPA's: its forward runs in ``setup``, each timed call is ``out.backward(dout, retain_graph=True)``.

The peers' times are in their ``track_*_gflops`` (useful flops over the best of 3 calls); there
are no ``time_`` benchmarks of the peers, since ``make bench-compare`` compares commits of ours and
a full run spends its time better on the ratios. ``python -m asv_benchmarks.bench_peers [REGEX]``
prints the ``track_`` figures without asv.
"""

from __future__ import annotations

import math
import os
from itertools import product
from typing import Any

from . import _common as common

FLEX_MASKS = ["create_block_mask", "exact_blocks"]


def _flex_key(pattern: str, n: int, d: int, kind: str) -> str:
    return f"{pattern}-{n}-{d}-{kind}"


def _flex_runner(case: common.Case, pattern: str, kind: str) -> Any:
    """FlexAttention's runner for a case, with the block mask of ``kind``."""
    mask_mod = common.flex_mask_mod(pattern, case.pattern)
    block_mask = common.flex_block_mask(kind, case.pattern, mask_mod)
    return common.flex_runner(*case.qkv, block_mask)


def compile_flex(self: Any) -> dict[str, Any]:
    """``setup_cache`` of the FlexAttention classes: compile every case into a private Inductor
    cache; returns ``{"inductor_cache": dir, "compile_s": {case: seconds}}`` (empty without
    torch, so that ``setup`` skips rather than fails)."""
    cache_dir = os.path.abspath("inductor-cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    common.prepare_process()
    try:
        torch = common.import_torch()
    except NotImplementedError:
        return {"inductor_cache": cache_dir, "compile_s": {}}
    compile_s = {}
    for pattern, n, d, kind in product(*FlexGrid.params):
        try:
            case = common.setup_case(pattern, n, d)
        except NotImplementedError:
            continue
        torch._dynamo.reset()
        flex = _flex_runner(case, pattern, kind)
        first = common.first_call_s(flex)
        compile_s[_flex_key(pattern, n, d, kind)] = max(0.0, first - common.best_time(flex, 2))
    return {"inductor_cache": cache_dir, "compile_s": compile_s}


class FlexGrid:
    """Mixin: the FlexAttention grid, its ``setup_cache`` and the skip of ``setup``."""

    params = (common.PATTERNS, common.NS, common.DS, FLEX_MASKS)
    param_names = ["pattern", "n", "d", "flex_mask"]
    timeout = 3600
    processes = common.PROCESSES
    setup_cache = compile_flex

    def use_cache(self, cache: dict[str, Any], pattern: str, n: int, d: int, kind: str) -> None:
        """Skip what ``setup_cache`` did not compile; point Inductor at its cache."""
        common.check_case(pattern, n, d)
        if _flex_key(pattern, n, d, kind) not in cache["compile_s"]:
            common.import_torch()  # NotImplementedError without torch
            raise NotImplementedError("not compiled in setup_cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache["inductor_cache"]


class FlexCompile(FlexGrid):
    """FlexAttention's compile time per case, measured in ``setup_cache`` (:func:`compile_flex`)."""

    def setup(self, cache: dict[str, Any], pattern: str, n: int, d: int, kind: str) -> None:
        self.use_cache(cache, pattern, n, d, kind)

    @common.unit("s")
    def track_compile_s(self, cache: dict[str, Any], pattern: str, n: int, d: int, kind: str):
        return cache["compile_s"][_flex_key(pattern, n, d, kind)]


class FlexForward(FlexGrid):
    """FlexAttention's useful GFLOP/s, and our forwards' speed-ups over it."""

    def setup(self, cache: dict[str, Any], pattern: str, n: int, d: int, kind: str) -> None:
        self.use_cache(cache, pattern, n, d, kind)
        self.case = common.setup_case(pattern, n, d)
        self.flex = _flex_runner(self.case, pattern, kind)
        self.bsr = common.forward_runner(*self.case.qkv, self.case.pattern)
        common.warm(self.flex, self.bsr)

    @common.unit("GFLOP/s")
    def track_flex_gflops(self, cache: dict[str, Any], pattern: str, n: int, d: int, kind: str):
        return self.case.flops / common.best_time(self.flex, 3) / 1e9

    @common.unit("x FlexAttention (BSR forward)")
    def track_ratio_bsr_to_flex(self, cache: dict[str, Any], pattern: str, n: int, d: int, kind):
        return common.ratio(self.flex, self.bsr, 5)

    @common.unit("x FlexAttention (CSR forward)")
    def track_ratio_csr_to_flex(self, cache: dict[str, Any], pattern: str, n: int, d: int, kind):
        try:
            common.check_case(pattern, n, d, form="csr")
        except NotImplementedError:
            return math.nan  # token CSR too large: see bench_csr_forward
        csr = common.build_pattern(pattern, n, form="csr")
        run = common.forward_runner(*self.case.qkv, csr)
        common.warm(run)
        return common.ratio(self.flex, run, 5)


class SDPAForward(common.PeerGrid):
    """torch SDPA with the pattern as a dense boolean mask: useful GFLOP/s, our speed-up."""

    def setup(self, pattern: str, n: int, d: int) -> None:
        case = common.setup_case(pattern, n, d, dense=True)
        self.flops = case.flops
        self.sdpa = common.sdpa_runner(*case.qkv, common.dense_mask(case.pattern))
        self.ours = common.forward_runner(*case.qkv, case.pattern)
        common.warm(self.sdpa, self.ours)

    @common.unit("GFLOP/s")
    def track_sdpa_gflops(self, pattern: str, n: int, d: int) -> float:
        return self.flops / common.best_time(self.sdpa, 3) / 1e9

    @common.unit("x SDPA bool mask (BSR forward)")
    def track_ratio_bsr_to_sdpa(self, pattern: str, n: int, d: int) -> float:
        return common.ratio(self.sdpa, self.ours, 3)


class SDPABackward(common.PeerGrid):
    """SDPA's backward with a dense boolean mask against our backward (block form)."""

    def setup(self, pattern: str, n: int, d: int) -> None:
        case = common.setup_case(pattern, n, d, dense=True, count=4, backward=True)
        self.flops = case.flops
        mask = common.dense_mask(case.pattern)
        self.sdpa = common.sdpa_backward_runner(*case.qkv, case.dout, mask)
        self.ours = common.backward_runner(*case.qkv, case.dout, case.pattern)
        common.warm(self.sdpa, self.ours)

    @common.unit("GFLOP/s")
    def track_sdpa_backward_gflops(self, pattern: str, n: int, d: int) -> float:
        return self.flops / common.best_time(self.sdpa, 3) / 1e9

    @common.unit("x SDPA backward bool mask (BSR backward)")
    def track_ratio_backward_to_sdpa(self, pattern: str, n: int, d: int) -> float:
        return common.ratio(self.sdpa, self.ours, 3)


if __name__ == "__main__":
    common.main([FlexCompile, FlexForward, SDPAForward, SDPABackward])
