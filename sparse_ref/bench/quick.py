"""The quick table of ``sparse-ref bench``: our kernels against the peers, in one process, no asv.

For each case (:class:`QuickCase`): our forward and backward and, with ``peers``, the dense
float64 oracle, FlexAttention compiled on the CPU and torch SDPA with a boolean mask. How the
figures are kept stable on a shared machine:

1. every function is called :data:`WARMUP_CALLS` times first (compilation or cache load,
   first-touch memory, the allocator's pool, torch's lazy start, FlexAttention's compile, whose
   first call is timed apart);
2. then all of them are timed in ``repeat`` interleaved rounds, each round starting at the next
   function (:func:`.timing.interleaved_times` with ``rotate``), so a change of load hits them
   alike and none always runs right after the same peer;
3. the figure is the median, shown with its spread (interquartile range over the median), not the
   best: one lucky call does not make a figure;
4. the machine's float32 GEMM peak and memory bandwidth are measured the same way
   (:func:`measure_peaks`).

Times are seconds here (:class:`.timing.Timing`); :class:`Row` holds milliseconds, as the table
and the JSON show them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .cases import make_case, window_of
from .flops import useful_flops
from .peaks import gemm_runner, triad_runner
from .peers import dense_mask, flex_block_mask, flex_mask_mod, flex_runner, sdpa_runner
from .process import PeerUnavailable, import_torch
from .runners import backward_runner, forward_runner, oracle_runner
from .timing import Timing, first_call_s, interleaved_times, warm

__all__ = [
    "QuickCase",
    "Row",
    "Peaks",
    "PATTERN_FORMS",
    "DEFAULT_CASES",
    "ORACLE_MAX_N",
    "SDPA_MAX_N",
    "FLEX_MASK",
    "WARMUP_CALLS",
    "PEAK_REPEAT",
    "OURS_FWD",
    "OURS_BWD",
    "ORACLE",
    "FLEX",
    "SDPA",
    "quick_cases",
    "measure_peaks",
    "run_case",
    "write_json",
]


class QuickCase(NamedTuple):
    """A case of the quick table: a benchmark pattern (named as in :mod:`.cases`), n, and the form
    our kernels run it in (``"csr"``: token CSR, ``"bsr"``: block form)."""

    pattern: str
    n: int
    form: str

    @property
    def label(self) -> str:
        return f"{self.pattern} n={self.n} {self.form.upper()}"


#: the form each pattern of the quick table runs in
PATTERN_FORMS = {"causal_window_256": "csr", "bigbird_64": "bsr", "causal_window_4096": "bsr"}
#: the default cases (DESIGN §12's targets at the sizes a quick run affords)
DEFAULT_CASES = [
    QuickCase("causal_window_256", 4096, "csr"),
    QuickCase("causal_window_256", 16384, "csr"),
    QuickCase("bigbird_64", 16384, "bsr"),
    QuickCase("causal_window_4096", 16384, "bsr"),
]
#: the dense float64 oracle runs at n <= this (it costs 4 * n**2 * d flops in float64)
ORACLE_MAX_N = 4096
#: SDPA with a dense n x n boolean mask runs at n <= this
SDPA_MAX_N = 16384
#: FlexAttention's block mask: its own ``create_block_mask``, what a user writes (as in the asv
#: report's targets)
FLEX_MASK = "create_block_mask"
#: untimed calls of every function before the timed rounds (the first compiles or loads)
WARMUP_CALLS = 2
#: timed rounds of the GEMM and the triad that measure the peaks (about 0.1 s a GEMM call)
PEAK_REPEAT = 10
OURS_FWD, OURS_BWD = "ours {form} forward", "ours {form} backward"
ORACLE, FLEX, SDPA = "oracle float64", "FlexAttention compiled", "SDPA bool mask"


@dataclass
class Row:
    """One line of the quick table (and of its JSON). ``ms``: the median time in milliseconds;
    ``spread_pct``: its interquartile range in percent of the median; ``ms_best``: the shortest
    time; ``gflops``: useful GFLOP/s at the median (:func:`.flops.useful_flops`); ``peak_pct``:
    ``gflops`` in percent of the median float32 GEMM peak; ``x_flex``, ``x_oracle``: the peer's
    median over ours (forward rows of ours only); ``compile_s``: FlexAttention's first call minus
    its median; ``skipped``: why it did not run."""

    case: str
    pattern: str
    n: int
    form: str
    nnz: int
    density: float
    kernel: str
    ms: float | None = None
    spread_pct: float | None = None
    ms_best: float | None = None
    gflops: float | None = None
    peak_pct: float | None = None
    x_flex: float | None = None
    x_oracle: float | None = None
    compile_s: float | None = None
    note: str = ""
    skipped: str | None = None


class Peaks(NamedTuple):
    """The machine's peaks, measured like the kernels: the GEMM's and the triad's times and the
    work of one call of each."""

    gemm: Timing
    gemm_flops: int
    triad: Timing
    triad_bytes: int

    @property
    def gemm_gflops(self) -> float:
        """Float32 GEMM GFLOP/s at the median time."""
        return self.gemm_flops / self.gemm.median / 1e9

    @property
    def memory_gbytes(self) -> float:
        """Triad GB/s at the median time."""
        return self.triad_bytes / self.triad.median / 1e9


def quick_cases(ns: Sequence[int] | None) -> list[QuickCase]:
    """:data:`DEFAULT_CASES`, or every pattern of :data:`PATTERN_FORMS` at each of ``ns``."""
    if not ns:
        return list(DEFAULT_CASES)
    return [QuickCase(p, n, form) for n in ns for p, form in PATTERN_FORMS.items()]


def measure_peaks(repeat: int = PEAK_REPEAT) -> Peaks:
    """The float32 GEMM (2048³) and the memory triad (2**24 float32), each warmed up
    (:data:`WARMUP_CALLS`) and then timed in ``repeat`` interleaved rounds."""
    gemm, flops = gemm_runner()
    triad, nbytes = triad_runner(1 << 24)
    warm(gemm, triad, calls=WARMUP_CALLS)
    t_gemm, t_triad = interleaved_times([gemm, triad], repeat, rotate=True)
    return Peaks(t_gemm, flops, t_triad, nbytes)


def _reason(err: BaseException) -> str:
    """Why a peer did not run: :class:`.process.PeerUnavailable`'s message, else the exception's
    type and first line."""
    text = (str(err).strip().splitlines() or [""])[0]
    return (text if isinstance(err, PeerUnavailable) else f"{type(err).__name__}: {text}")[:120]


def run_case(
    case: QuickCase,
    d: int,
    dtype: str,
    repeat: int,
    peers: bool,
    gemm_peak: float,
    stage: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Measure one case as the module docstring says: our forward and backward and (``peers``)
    the oracle, FlexAttention and SDPA. ``gemm_peak`` (GFLOP/s) scales ``peak_pct``; ``stage`` is
    told what is running (for a progress bar)."""
    pattern, n, form = case
    w = window_of(pattern)
    if w is not None and w >= n:
        why = f"window {w} covers n = {n}"
        return [Row(case.label, pattern, n, form, 0, 0.0, "-", skipped=why)]
    stage("building the pattern and inputs")
    c = make_case(pattern, n, d, dtype, form=form, count=4)
    p = c.pattern
    nnz = int(p.nnz)
    base = dict(case=case.label, pattern=pattern, n=n, form=form, nnz=nnz, density=p.density)
    flops = {"fwd": useful_flops(nnz, d), "bwd": useful_flops(nnz, d, backward=True)}
    fns: dict[str, Callable[[], Any]] = {
        "fwd": forward_runner(*c.qkv, p),
        "bwd": backward_runner(*c.qkv, c.dout, p),
    }
    skipped: dict[str, str] = {}
    first_flex = math.nan
    stage("warming up ours (Numba compile or cache load, first touch)")
    warm(fns["fwd"], fns["bwd"], calls=WARMUP_CALLS)
    if peers:
        if n <= ORACLE_MAX_N:
            stage("warming up the oracle")
            fns["oracle"] = oracle_runner(*c.qkv, p)
            warm(fns["oracle"], calls=WARMUP_CALLS)
        else:
            skipped["oracle"] = f"n > {ORACLE_MAX_N} (dense, slow)"
        try:
            stage("compiling FlexAttention")
            torch = import_torch()
            torch._dynamo.reset()  # a fresh compile per case (dynamo's recompile limit)
            mask = flex_block_mask(FLEX_MASK, p, flex_mask_mod(pattern, p))
            fns["flex"] = flex_runner(*c.qkv, mask)
            first_flex = first_call_s(fns["flex"])
            warm(fns["flex"], calls=WARMUP_CALLS - 1)
        except Exception as err:  # a peer that cannot run is reported, not fatal
            fns.pop("flex", None)
            skipped["flex"] = _reason(err)
        if n > SDPA_MAX_N:
            skipped["sdpa"] = f"n > {SDPA_MAX_N} (dense n x n mask)"
        else:
            try:
                stage("warming up SDPA")
                fns["sdpa"] = sdpa_runner(*c.qkv, dense_mask(p))
                warm(fns["sdpa"], calls=WARMUP_CALLS)
            except Exception as err:
                fns.pop("sdpa", None)
                skipped["sdpa"] = _reason(err)
    stage(f"timing, {repeat} interleaved rounds")
    times = dict(zip(fns, interleaved_times(list(fns.values()), repeat, rotate=True)))
    del fns

    def figures(key: str, kind: str = "fwd") -> dict[str, Any]:
        t = times[key]
        g = flops[kind] / t.median / 1e9
        return dict(
            ms=t.median * 1e3,
            spread_pct=100 * t.spread,
            ms_best=t.best * 1e3,
            gflops=g,
            peak_pct=100 * g / gemm_peak,
        )

    def x(peer: str) -> float | None:
        return times[peer].median / times["fwd"].median if peer in times else None

    label = form.upper()
    rows = [
        Row(
            **base,
            kernel=OURS_FWD.format(form=label),
            **figures("fwd"),
            x_flex=x("flex"),
            x_oracle=x("oracle"),
        ),
        Row(
            **base,
            kernel=OURS_BWD.format(form=label),
            **figures("bwd", "bwd"),
            note=f"{times['bwd'].median / times['fwd'].median:.1f}x forward time",
        ),
    ]
    if not peers:
        return rows
    for key, name in (("oracle", ORACLE), ("flex", FLEX), ("sdpa", SDPA)):
        if key in skipped:
            rows.append(Row(**base, kernel=name, skipped=skipped[key]))
            continue
        row = Row(**base, kernel=name, **figures(key))
        if key == "flex":
            row.compile_s = max(0.0, first_flex - times["flex"].median)
            row.note = f"compile {row.compile_s:.1f} s"
        rows.append(row)
    return rows


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file beside it, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
