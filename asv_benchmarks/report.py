"""The benchmark page's tables and plot, generated from asv's results (issue 11, DESIGN §12).

``python -m asv_benchmarks.report`` (``make bench-report``) reads the result files in
``.asv/results/<machine>/`` of the newest commit there (for each benchmark and parameter combination
the newest value its files hold: asv merges the runs of one commit and environment into one file,
so a partial run adds to a complete one), and writes

- the part of ``docs/benchmarks.md`` between the markers :data:`START` and :data:`END`: the machine,
  the DESIGN §12 targets with what was measured, and tables of useful GFLOP/s (each with its
  fraction of the float32 GEMM peak measured by ``bench_peaks`` in the same run), ratios to
  FlexAttention and SDPA, the dense oracle, the backward, pattern builds and FlexAttention's compile
  times;
- ``docs/img/benchmarks.png``: useful GFLOP/s per pattern and size for our kernels, FlexAttention,
  SDPA and the dense oracle (float32), on a log axis with the GEMM peak and a fraction-of-peak axis.

Without results it exits 1 and leaves the page alone (``--allow-empty`` writes the placeholder
note instead). The docs build never needs results: it shows what was last generated and committed.
Not a benchmark module: asv imports it while discovering and finds nothing to run.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

from . import _common as common

START = "<!-- bench-report:start -->"
END = "<!-- bench-report:end -->"
ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = (
    '!!! note "No results yet"\n'
    "    This section is generated from asv results by `make bench-report` (tables of useful\n"
    "    GFLOP/s with their fraction of the machine's peak, ratios to FlexAttention, and the plot\n"
    "    `img/benchmarks.png`). Run `make bench` on a quiet machine first; see below.\n"
)

# benchmark names (module.Class.method) that the report reads
PEAK_GEMM = "bench_peaks.MachinePeaks.track_gemm_gflops"
PEAK_MEMORY = "bench_peaks.MachinePeaks.track_memory_gbytes"
CSR_FWD = "bench_csr_forward.CSRForward.track_gflops"
CSR_PLAIN = "bench_csr_forward.CSRForward.track_ratio_to_plain"
BSR_FWD = "bench_bsr_forward.BSRForward.track_gflops"
FLEX = "bench_peers.FlexForward.track_flex_gflops"
FLEX_BSR = "bench_peers.FlexForward.track_ratio_bsr_to_flex"
FLEX_CSR = "bench_peers.FlexForward.track_ratio_csr_to_flex"
FLEX_COMPILE = "bench_peers.FlexCompile.track_compile_s"
SDPA = "bench_peers.SDPAForward.track_sdpa_gflops"
SDPA_BSR = "bench_peers.SDPAForward.track_ratio_bsr_to_sdpa"
SDPA_BWD = "bench_peers.SDPABackward.track_sdpa_backward_gflops"
SDPA_BWD_RATIO = "bench_peers.SDPABackward.track_ratio_backward_to_sdpa"
ORACLE = "bench_oracle.OracleForward.track_gflops"
ORACLE_SPEEDUP = "bench_oracle.OracleForward.track_speedup"
CSR_BWD = "bench_backward.CSRBackward.track_gflops"
CSR_BWD_RATIO = "bench_backward.CSRBackward.track_ratio_to_forward"
BSR_BWD = "bench_backward.BSRBackward.track_gflops"
BSR_BWD_RATIO = "bench_backward.BSRBackward.track_ratio_to_forward"
BUILD_TIME = "bench_patterns.PatternBuild.time_build"
BUILD_MEM = "bench_patterns.PatternBuild.peakmem_build"
HEADLINE_TIME = "bench_patterns.CausalWindowHeadline.time_causal_sliding_window_65536_4096"
HEADLINE_RATE = "bench_patterns.CausalWindowHeadline.track_nnz_per_second"
BLOCK_TIME = "bench_patterns.BlockFormBuild.time_causal_sliding_window_4096"
BLOCK_MEM = "bench_patterns.BlockFormBuild.peakmem_causal_sliding_window_4096"
GOLDEN = "bench_golden.GenerateSmoke.time_generate_smoke"
CBM, EXACT = "create_block_mask", "exact_blocks"


@dataclass
class Results:
    """Merged asv results of one machine: ``values[name][params] = value`` (params as a tuple of
    Python values, ``()`` for a benchmark without parameters)."""

    machine: dict[str, Any]
    commit: str
    date: datetime
    values: dict[str, dict[tuple[Any, ...], float]] = field(default_factory=dict)

    def get(self, name: str, *params: Any) -> float:
        """The value, NaN where it is missing, skipped or failed."""
        value = self.values.get(name, {}).get(tuple(params))
        return math.nan if value is None else float(value)


def _param_values(raw: list[list[str]]) -> list[list[Any]]:
    return [[ast.literal_eval(v) for v in values] for values in raw]


def load_results(results_dir: Path, machine: str | None = None) -> Results | None:
    """The results of ``machine`` (default: the one with the newest result file) for the commit
    of its newest result file, merged over its environments' files (newer values first); None
    where there are none. Results of other commits never mix in."""
    files: list[tuple[int, Path, dict[str, Any]]] = []
    for path in sorted(results_dir.glob("*/*.json")):
        if path.name == "machine.json" or (machine and path.parent.name != machine):
            continue
        data = json.loads(path.read_text())
        if "results" in data and "result_columns" in data:
            files.append((int(data.get("date") or 0), path, data))
    if not files:
        return None
    newest = max(files, key=lambda f: (f[0], f[1].stat().st_mtime))
    name, commit = newest[1].parent.name, newest[2].get("commit_hash")
    files = sorted(
        (f for f in files if f[1].parent.name == name and f[2].get("commit_hash") == commit),
        key=lambda f: f[0],
    )
    params = dict(newest[2].get("params", {}))
    res = Results(
        machine=params,
        commit=str(newest[2].get("commit_hash", "")),
        date=datetime.fromtimestamp(newest[0] / 1000, tz=UTC),
    )
    for _, _, data in files:  # oldest first: newer values overwrite older ones
        col = {c: i for i, c in enumerate(data["result_columns"])}
        for bench, row in data["results"].items():
            values = row[col["result"]]
            grid = _param_values(row[col["params"]]) if row[col["params"]] else []
            combos = list(product(*grid)) if grid else [()]
            if not isinstance(values, list):
                values = [values]
            for combo, value in zip(combos, values):
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    res.values.setdefault(bench, {})[combo] = value
    return res


# --- formatting ----------------------------------------------------------------------------------


def _num(x: float, fmt: str = ".1f", suffix: str = "") -> str:
    return "–" if math.isnan(x) else f"{x:{fmt}}{suffix}"


def _gf(x: float, peak: float) -> str:
    """GFLOP/s with its fraction of the GEMM peak."""
    if math.isnan(x):
        return "–"
    return f"{x:.1f} ({x / peak:.0%})" if peak > 0 and not math.isnan(peak) else f"{x:.1f}"


def _seconds(x: float) -> str:
    if math.isnan(x):
        return "–"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _mib(x: float) -> str:
    return "–" if math.isnan(x) else f"{x / 2**20:.0f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _keep(row: list[str], keys: int) -> bool:
    """Whether a row has a value after its ``keys`` key columns."""
    return any(cell != "–" for cell in row[keys:])


def _verdict(value: float, goal: float, higher: bool = True) -> str:
    if math.isnan(value):
        return "not measured"
    return "met" if (value >= goal if higher else value <= goal) else "not met"


def _density(pattern: str, n: int) -> float:
    p = common.build_pattern(pattern, n, form="bsr")
    return float(p.nnz) / (n * n)


# --- the section ---------------------------------------------------------------------------------


def render_section(res: Results | None, plot: str | None = "img/benchmarks.png") -> str:
    """The Markdown between the markers (the placeholder note without results)."""
    if res is None:
        return PLACEHOLDER
    peak = res.get(PEAK_GEMM)
    bandwidth = res.get(PEAK_MEMORY)
    m = res.machine
    ram = f"{int(m['ram']) / 2**30:.0f} GiB RAM" if str(m.get("ram", "")).isdigit() else ""
    out = [
        "_Generated by `make bench-report` from the asv results of machine "
        f"`{m.get('machine', '?')}` ({m.get('cpu', '?')}, {m.get('num_cpu', '?')} CPUs, {ram}), "
        f"commit `{res.commit[:8]}`, {res.date:%Y-%m-%d}; 2 threads, B = H = 1. "
        "Do not edit by hand._",
        "",
        "### This machine's peaks",
        "",
        *_table(
            ["peak", "measured", "benchmark"],
            [
                ["NumPy float32 GEMM (2048³)", _num(peak, ".1f", " GFLOP/s"), f"`{PEAK_GEMM}`"],
                ["memory bandwidth (triad)", _num(bandwidth, ".1f", " GB/s"), f"`{PEAK_MEMORY}`"],
            ],
        ),
        "",
        "Every GFLOP/s below is *useful* GFLOP/s (`4·nnz·d` per forward, `8·nnz·d` per backward "
        "over the time) with its fraction of the GEMM peak in parentheses.",
        "",
        "### DESIGN §12 targets",
        "",
        *_targets(res, peak),
        "",
    ]
    if plot:
        out += [f"![useful GFLOP/s per pattern]({plot})", ""]
    out += _forward_tables(res, peak)
    out += _oracle_table(res)
    out += _backward_table(res, peak)
    out += _build_tables(res, bandwidth)
    out += _compile_table(res)
    return "\n".join(out).rstrip() + "\n"


def _targets(res: Results, peak: float) -> list[str]:
    csr_flex = res.get(FLEX_CSR, "causal_window_256", 16384, 64, CBM)
    bsr_flex = res.get(FLEX_BSR, "causal_window_4096", 65536, 64, CBM)
    bsr_gf = res.get(BSR_FWD, "causal_window_4096", 65536, 64, "float32")
    bigbird = res.get(FLEX_BSR, "bigbird_64", 16384, 64, CBM)
    oracle_rows = [
        (res.get(ORACLE_SPEEDUP, p, n, 64) * _density(p, n), p, n)
        for p in common.PATTERNS
        for n in common.NS
        if not math.isnan(res.get(ORACLE_SPEEDUP, p, n, 64))
    ]
    worst_oracle = min(oracle_rows) if oracle_rows else (math.nan, "", 0)
    build = res.get(HEADLINE_TIME)
    ratios = [
        (res.get(name, p, n, 64, "float32"), name.split(".")[1], p, n)
        for name in (CSR_BWD_RATIO, BSR_BWD_RATIO)
        for p in common.PATTERNS
        for n in common.NS
        if not math.isnan(res.get(name, p, n, 64, "float32"))
    ]
    worst_bwd = max(ratios) if ratios else (math.nan, "", "", 0)
    frac = bsr_gf / peak if peak > 0 else math.nan
    rows = [
        [
            "CSR forward, causal window 256, n = 16384: time of FlexAttention / ours",
            _num(csr_flex, ".2f", "×"),
            "≥ 1.0× (moonshot 1.5×)",
            _verdict(csr_flex, 1.0),
        ],
        [
            "BSR forward, causal window 4096, n = 65536: time of FlexAttention / ours",
            _num(bsr_flex, ".2f", "×"),
            "≥ 1.0×",
            _verdict(bsr_flex, 1.0),
        ],
        [
            "BSR forward, causal window 4096, n = 65536: fraction of the GEMM peak",
            _num(100 * frac, ".0f", "%"),
            "moonshot ≥ 60%",
            _verdict(frac, 0.6),
        ],
        [
            "BSR forward, BigBird 64-blocks, n = 16384: time of FlexAttention / ours",
            _num(bigbird, ".2f", "×"),
            "≥ 2×",
            _verdict(bigbird, 2.0),
        ],
        [
            "speed-up over the dense oracle × density, worst case"
            + (f" ({worst_oracle[1]}, n = {worst_oracle[2]})" if worst_oracle[1] else ""),
            _num(worst_oracle[0], ".2f"),
            "≥ 0.5",
            _verdict(worst_oracle[0], 0.5),
        ],
        [
            "`causal_sliding_window(65536, 4096)` build",
            _seconds(build),
            "≤ 0.35 s",
            _verdict(build, 0.35, higher=False),
        ],
        [
            "backward time / forward time, worst case"
            + (f" ({worst_bwd[1]}, {worst_bwd[2]}, n = {worst_bwd[3]})" if worst_bwd[1] else ""),
            _num(worst_bwd[0], ".2f", "×"),
            "≤ 3×",
            _verdict(worst_bwd[0], 3.0, higher=False),
        ],
    ]
    return [
        "float32, d = 64; FlexAttention with its own `create_block_mask`.",
        "",
        *_table(["target", "measured", "goal", "status"], rows),
    ]


def _forward_tables(res: Results, peak: float) -> list[str]:
    out: list[str] = []
    for dtype in common.DTYPES:
        rows = []
        for p, n, d in product(common.PATTERNS, common.NS, common.DS):
            row = [p, str(n), str(d)]
            row += [_gf(res.get(name, p, n, d, dtype), peak) for name in (CSR_FWD, BSR_FWD)]
            if dtype == "float32":
                row += [
                    _gf(res.get(FLEX, p, n, d, CBM), peak),
                    _gf(res.get(FLEX, p, n, d, EXACT), peak),
                    _num(res.get(FLEX_CSR, p, n, d, CBM), ".2f", "×"),
                    _num(res.get(FLEX_BSR, p, n, d, CBM), ".2f", "×"),
                    _num(res.get(FLEX_BSR, p, n, d, EXACT), ".2f", "×"),
                    _gf(res.get(SDPA, p, n, d), peak),
                    _num(res.get(SDPA_BSR, p, n, d), ".1f", "×"),
                ]
            row.append(_num(res.get(CSR_PLAIN, p, n, d, dtype), ".2f", "×"))
            if _keep(row, 3):
                rows.append(row)
        if not rows:
            continue
        header = ["pattern", "n", "d", "CSR GFLOP/s", "BSR GFLOP/s"]
        if dtype == "float32":
            header += [
                "FlexAttention (its mask)",
                "FlexAttention (our blocks)",
                "CSR ÷ Flex",
                "BSR ÷ Flex",
                "BSR ÷ Flex (our blocks)",
                "SDPA (bool mask)",
                "BSR ÷ SDPA",
            ]
        header.append("CSR ÷ plain loop")
        out += [f"### Forward, {dtype}", ""]
        if dtype == "float32":
            out += [
                "A ratio `A ÷ B` is B's time over A's, both measured in the same process "
                "(above 1: A is faster).",
                "",
            ]
        else:
            out += ["Fractions are of the float32 GEMM peak.", ""]
        out += [*_table(header, rows), ""]
    return out


def _oracle_table(res: Results) -> list[str]:
    rows = []
    for p in common.PATTERNS:
        for n in common.NS:
            gf, speedup = res.get(ORACLE, p, n, 64), res.get(ORACLE_SPEEDUP, p, n, 64)
            if math.isnan(gf) and math.isnan(speedup):
                continue
            density = _density(p, n)
            rows.append(
                [
                    p,
                    str(n),
                    f"{density:.4f}",
                    _num(gf, ".2f"),
                    _num(speedup, ".1f", "×"),
                    _num(speedup * density, ".2f"),
                ]
            )
    if not rows:
        return []
    header = ["pattern", "n", "density", "oracle GFLOP/s", "BSR speed-up", "speed-up × density"]
    return [
        "### The dense oracle (float64 compute, float32 inputs, d = 64)",
        "",
        "A sparse kernel's speed-up over the dense oracle is bounded by 1 / density; the target is "
        "speed-up × density ≥ 0.5.",
        "",
        *_table(header, rows),
        "",
    ]


def _backward_table(res: Results, peak: float) -> list[str]:
    rows = []
    for dtype, p, n, d in product(common.DTYPES, common.PATTERNS, common.NS, common.DS):
        row = [p, str(n), str(d), dtype]
        row += [_gf(res.get(name, p, n, d, dtype), peak) for name in (CSR_BWD, BSR_BWD)]
        row += [
            _num(res.get(name, p, n, d, dtype), ".2f", "×")
            for name in (CSR_BWD_RATIO, BSR_BWD_RATIO)
        ]
        sdpa = [math.nan, math.nan]
        if dtype == "float32":
            sdpa = [res.get(SDPA_BWD, p, n, d), res.get(SDPA_BWD_RATIO, p, n, d)]
        row += [_gf(sdpa[0], peak), _num(sdpa[1], ".1f", "×")]
        if _keep(row, 4):
            rows.append(row)
    if not rows:
        return []
    header = [
        "pattern",
        "n",
        "d",
        "dtype",
        "CSR GFLOP/s",
        "BSR GFLOP/s",
        "CSR bwd / fwd",
        "BSR bwd / fwd",
        "SDPA backward",
        "BSR ÷ SDPA",
    ]
    return [
        "### Backward",
        "",
        "`8·nnz·d` useful flops per backward; FlexAttention has no backward on the CPU.",
        "",
        *_table(header, rows),
        "",
    ]


def _build_tables(res: Results, bandwidth: float) -> list[str]:
    out: list[str] = []
    rate = res.get(HEADLINE_RATE)
    headline = res.get(HEADLINE_TIME)
    if not (math.isnan(rate) and math.isnan(headline)):
        written = 5e-3 * rate  # GB/s: 4-byte index and 1-byte data per nonzero, Mnnz/s * 5 B
        frac = written / bandwidth if bandwidth > 0 else math.nan
        out += [
            "### Pattern builds",
            "",
            f"`causal_sliding_window(65536, 4096)` (260M nonzeros): {_seconds(headline)}, "
            f"{_num(rate, '.0f', ' Mnnz/s')}, about {_num(written, '.2f', ' GB/s')} written "
            f"({_num(100 * frac, '.0f', '%')} of the memory bandwidth).",
            "",
        ]
    families = sorted({combo[0] for combo in res.values.get(BUILD_TIME, {})})
    rows = []
    for family in families:
        for n in common.NS:
            for w in (256, 4096):
                row = [
                    family,
                    str(n),
                    str(w),
                    _seconds(res.get(BUILD_TIME, family, n, w)),
                    _mib(res.get(BUILD_MEM, family, n, w)),
                ]
                if _keep(row, 3):
                    rows.append(row)
    for n in (65536, 1 << 20):
        for block in (64, 128):
            row = [
                f"causal_sliding_window, block={block}",
                str(n),
                "4096",
                _seconds(res.get(BLOCK_TIME, n, block)),
                _mib(res.get(BLOCK_MEM, n, block)),
            ]
            if _keep(row, 3):
                rows.append(row)
    if rows:
        if not out:
            out += ["### Pattern builds", ""]
        header = ["family", "n", "window / keys per row", "time", "peak memory (process)"]
        out += [*_table(header, rows), ""]
    golden = res.get(GOLDEN)
    if not math.isnan(golden):
        out += [f"Golden smoke suite, generated end to end: {_seconds(golden)}.", ""]
    return out


def _compile_table(res: Results) -> list[str]:
    rows = [
        [str(x) for x in combo] + [_num(v, ".1f", " s")]
        for combo, v in sorted(res.values.get(FLEX_COMPILE, {}).items(), key=str)
    ]
    if not rows:
        return []
    return [
        "### FlexAttention compile times",
        "",
        "First call minus a steady call, in asv's `setup_cache` (cases compiled one after the "
        "other: later ones reuse identical kernels that Inductor already generated).",
        "",
        *_table(["pattern", "n", "d", "block mask", "compile"], rows),
        "",
    ]


# --- the plot ------------------------------------------------------------------------------------

SERIES = [
    ("CSR (ours)", CSR_FWD, "float32"),
    ("BSR (ours)", BSR_FWD, "float32"),
    ("FlexAttention (its mask)", FLEX, CBM),
    ("FlexAttention (our blocks)", FLEX, EXACT),
    ("SDPA (bool mask)", SDPA, None),
    ("dense oracle (float64)", ORACLE, None),
]


def _short(pattern: str, n: int) -> str:
    """A short axis label: ``window 256\nn = 16K``, ``BigBird 64\nn = 4K``."""
    name = pattern.replace("causal_window_", "window ").replace("bigbird_", "BigBird ")
    return f"{name}\nn = {n // 1024}K"


def plot(res: Results, path: Path) -> bool:
    """Grouped bars of useful GFLOP/s (float32) per pattern and n, one panel per d; False (and no
    file) where there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    peak = res.get(PEAK_GEMM)

    def value(name: str, extra: str | None, p: str, n: int, d: int) -> float:
        if name == ORACLE and d != 64:
            return math.nan
        return res.get(name, p, n, d, *([extra] if extra else []))

    panels = []
    for d in common.DS:
        cases = [
            (p, n)
            for p in common.PATTERNS
            for n in common.NS
            if any(not math.isnan(value(s[1], s[2], p, n, d)) for s in SERIES)
        ]
        if cases:
            panels.append((d, cases))
    if not panels:
        return False
    fig, axes = plt.subplots(
        1, len(panels), figsize=(7.5 * len(panels), 4.8), squeeze=False, sharey=True
    )
    from matplotlib.ticker import FuncFormatter

    width = 0.8 / len(SERIES)
    drawn = [
        value(name, extra, p, n, d)
        for d, cases in panels
        for p, n in cases
        for _, name, extra in SERIES
    ]
    finite = [y for y in drawn if y > 0] + ([peak] if peak > 0 else [])
    number = FuncFormatter(lambda y, _: f"{y:g}")
    for ax, (d, cases) in zip(axes[0], panels):
        x = np.arange(len(cases))
        for i, (label, name, extra) in enumerate(SERIES):
            ys = [value(name, extra, p, n, d) for p, n in cases]
            ax.bar(x + (i - (len(SERIES) - 1) / 2) * width, ys, width, label=label)
        ax.set_yscale("log")
        ax.set_ylim(min(finite) / 2, max(finite) * 2)
        ax.yaxis.set_major_formatter(number)
        if peak > 0:
            ax.axhline(peak, color="black", linestyle="--", linewidth=1)
            ax.text(
                0.99,
                peak,
                "GEMM peak ",
                transform=ax.get_yaxis_transform(),
                ha="right",
                va="bottom",
                fontsize=8,
            )
            percent = ax.secondary_yaxis(
                "right", functions=(lambda y: 100 * y / peak, lambda f: f * peak / 100)
            )
            percent.set_ylabel("% of float32 GEMM peak")
            percent.yaxis.set_major_formatter(FuncFormatter(lambda f, _: f"{f:g}%"))
        ax.set_xlim(-0.5, len(cases) - 0.5)
        ax.set_xticks(x)
        ax.set_xticklabels([_short(p, n) for p, n in cases], fontsize=7)
        ax.set_title(f"float32, d = {d}")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("useful GFLOP/s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = len(SERIES) if len(panels) > 1 else 3
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"sparse-ref vs peers, {res.machine.get('machine', '')} ({res.commit[:8]})")
    fig.tight_layout(rect=(0, 0.06 if len(panels) > 1 else 0.11, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def replace_section(page: str, section: str) -> str:
    """``page`` with the text between :data:`START` and :data:`END` replaced by ``section``."""
    if page.count(START) != 1 or page.count(END) != 1 or page.index(START) > page.index(END):
        raise ValueError(f"the page needs one {START} before one {END}")
    head, rest = page.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{section.rstrip()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / ".asv" / "results")
    parser.add_argument("--machine", help="machine name (default: the newest results)")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "benchmarks.png")
    parser.add_argument(
        "--allow-empty", action="store_true", help="without results, write the placeholder note"
    )
    args = parser.parse_args(argv)
    res = load_results(args.results, args.machine)
    if res is None and not args.allow_empty:
        print(f"no asv results in {args.results}: run `make bench` first", file=sys.stderr)
        return 1
    drawn = res is not None and plot(res, args.plot)
    rel = Path(args.plot).resolve().relative_to(Path(args.page).resolve().parent) if drawn else None
    section = render_section(res, rel.as_posix() if rel else None)
    args.page.write_text(replace_section(args.page.read_text(), section))
    print(f"wrote {args.page}" + (f" and {args.plot}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
