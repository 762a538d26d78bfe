"""The golden suites as case lists: ``smoke``, ``default``, ``papers``, ``stress``.

A case is a :class:`CaseSpec`: a pattern (catalog family and parameters, or a small composition of
them), the input shapes, dtype, scale, softcap and input seed. Everything a case file holds follows
from its spec, so generating a spec twice gives the same bytes.

A case whose family the catalog does not provide (``patterns.available()``; a suite written by a
newer sparse-ref may name one) is skipped when the suite is built; the skip and its reason are
recorded in the manifest. Every case stores tolerances for its own dtype and every lower one
(float32, float16, bfloat16), see :func:`sparse_ref.golden.generate.tolerance_dtypes`.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..pattern import Pattern

__all__ = [
    "CaseSpec",
    "Suite",
    "SUITES",
    "build_suite",
    "build_pattern",
    "catalog_families",
    "spec_families",
]

#: pseudo-families handled here rather than by ``patterns.build``
COMPOSITE_FAMILIES = ("union", "intersection", "difference", "stack", "custom_rows", "batch")


#: The dtypes a case can hold (its q, k, v, dout).
_CASE_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class CaseSpec:
    """One golden case. ``pattern = build_pattern(family, params)`` must have shape ``(n_q, n_k)``.

    Inputs: ``q (batch, heads, n_q, d)``, ``k (batch, kv_heads, n_k, d)``, ``v (batch, kv_heads,
    n_k, d_v)`` and ``dout`` like the output, drawn in that order from
    ``numpy.random.default_rng(seed)`` as standard normals times ``input_std``; float32 cases are
    then rounded to values exact in bfloat16 and float16 too (``input_rounding``), so
    lower-precision implementations can run the same case. ``scale=None`` means ``1/sqrt(d)``.
    ``rows``: store outputs of this many sampled query rows only (large-n cases; no gradients).
    ``extra_tolerance_dtypes``: also store the tolerance rule for these implementation dtypes
    (e.g. ``float16`` for a float32 case).
    """

    id: str
    family: str
    params: dict[str, Any]
    dtype: str = "float32"
    batch: int = 1
    heads: int = 2
    kv_heads: int = 2
    d: int = 16
    d_v: int | None = None
    scale: float | None = None
    softcap: float | None = None
    seed: int = -1
    input_std: float = 1.0
    gradients: bool = True
    rows: int | None = None
    extra_tolerance_dtypes: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.seed < 0:  # a stable seed from the id: independent of the case order
            object.__setattr__(self, "seed", zlib.crc32(self.id.encode()) & 0x7FFFFFFF)
        if self.d_v is None:
            object.__setattr__(self, "d_v", self.d)
        object.__setattr__(self, "extra_tolerance_dtypes", tuple(self.extra_tolerance_dtypes))
        if self.dtype not in _CASE_DTYPES:
            raise ValueError(
                f"case {self.id!r}: dtype must be float32 or float64, got {self.dtype!r}"
            )
        if self.heads % self.kv_heads:
            raise ValueError(f"case {self.id!r}: heads must be a multiple of kv_heads")
        if self.rows is not None and self.gradients:
            object.__setattr__(self, "gradients", False)
        json.dumps(self.params, allow_nan=False)  # must be JSON-able

    @property
    def input_rounding(self) -> str:
        return "bfloat16" if self.dtype == "float32" else "none"

    def resolved_scale(self) -> float:
        return 1.0 / math.sqrt(self.d) if self.scale is None else float(self.scale)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        out = asdict(self)
        out["extra_tolerance_dtypes"] = list(self.extra_tolerance_dtypes)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Suite:
    """A named list of cases plus the cases skipped while building it (with reasons)."""

    name: str
    cases: tuple[CaseSpec, ...]
    skipped: tuple[dict[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        ids = [c.id for c in self.cases]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"suite {self.name!r} has duplicate case ids {dupes}")

    def select(
        self, *, dtypes: Iterable[str] | None = None, only: str | Iterable[str] | None = None
    ) -> Suite:
        """The sub-suite of cases with a dtype in ``dtypes`` and an id matching glob ``only`` (or
        any of several globs)."""
        import fnmatch

        globs = [only] if isinstance(only, str) else None if only is None else list(only)

        for dtype in dtypes or ():
            if dtype not in _CASE_DTYPES:
                raise ValueError(f"dtypes: cases are {' or '.join(_CASE_DTYPES)}, got {dtype!r}")
        keep = [
            c
            for c in self.cases
            if (dtypes is None or c.dtype in set(dtypes))
            and (globs is None or any(fnmatch.fnmatchcase(c.id, g) for g in globs))
        ]
        return Suite(self.name, tuple(keep), self.skipped)


# ------------------------------------------------------------------------------------ patterns
def catalog_families() -> frozenset[str]:
    """Families the catalog provides (``patterns.available()``)."""
    from .. import patterns

    return frozenset(patterns.available())


def spec_families(family: str, params: dict[str, Any]) -> set[str]:
    """The catalog families a (possibly composite) pattern spec needs."""
    if family in ("union", "intersection", "difference"):
        return set().union(*(spec_families(s["family"], s["params"]) for s in params["of"]))
    if family == "stack":
        return set().union(*(spec_families(s["family"], s["params"]) for s in params["heads"]))
    if family == "batch":
        return set().union(*(spec_families(s["family"], s["params"]) for s in params["patterns"]))
    if family == "custom_rows":
        return set()
    return {family}


def needs_inputs(params: dict[str, Any]) -> bool:
    """Whether a spec's pattern is computed from the case inputs (data-dependent families)."""
    return "data" in params


def pattern_shape(family: str, params: dict[str, Any]) -> tuple[int, int] | None:
    """``(n_q, n_k)`` of a data-dependent spec (given as ``params["shape"]``), else ``None``."""
    return tuple(params["shape"]) if needs_inputs(params) else None  # type: ignore[return-value]


def build_pattern(
    family: str, params: dict[str, Any], inputs: dict[str, np.ndarray] | None = None
) -> Any:
    """Build a case's pattern: a :class:`Pattern`, or for ``batch`` a list of them.

    ``batch``: ``params = {"patterns": [spec, ...]}``, one pattern per batch element (what
    ``sparse_ref.attention`` accepts as a sequence of patterns); the case's ``batch`` must match.

    ``union``/``intersection``/``difference``: ``params = {"of": [spec_a, spec_b]}`` (``a | b``,
    ``a & b``, ``a - b``); ``stack``: ``{"heads": [spec, ...]}``; ``custom_rows``: ``{"n_k": n_k,
    "rows": [[key, ...], ...]}`` (explicit keys per query row); anything else is
    ``patterns.build(family, **params)``. A spec is ``{"family": ..., "params": ...}``.

    Data-dependent families (``topk``, ``lsh``, ``routing``, ``block_topk``) name their array
    arguments in ``params["data"]``, e.g. ``{"q": "q", "k": "k"}``: each is taken from ``inputs``
    at batch 0, head 0, as a float64 ``(n, d)`` array; ``params["shape"]`` gives ``(n_q, n_k)``.
    """
    if family in ("union", "intersection", "difference"):
        a, b = (build_pattern(s["family"], s["params"], inputs) for s in params["of"])
        return {"union": a | b, "intersection": a & b, "difference": a - b}[family]
    if family == "batch":
        return [build_pattern(s["family"], s["params"], inputs) for s in params["patterns"]]
    if family == "stack":
        return Pattern.stack(
            build_pattern(s["family"], s["params"], inputs) for s in params["heads"]
        )
    if family == "custom_rows":
        rows = params["rows"]
        indptr = np.cumsum([0] + [len(r) for r in rows])
        indices = np.array([j for r in rows for j in r], dtype=np.int64)
        return Pattern.from_csr((indptr, indices, (len(rows), params["n_k"])))
    from .. import patterns

    if needs_inputs(params):
        if inputs is None:
            raise ValueError(f"family {family!r} with params['data'] needs the case inputs")
        args = {k: v for k, v in params.items() if k not in ("data", "shape")}
        for arg, name in params["data"].items():
            args[arg] = np.asarray(inputs[name])[0, 0].astype(np.float64)
        pattern = patterns.build(family, **args)
        if list(pattern.shape) != list(params["shape"]):
            raise ValueError(
                f"{family}: built shape {pattern.shape} != params shape {params['shape']}"
            )
        return pattern
    return patterns.build(family, **params)


def _p(family: str, **params: Any) -> dict[str, Any]:
    return {"family": family, "params": params}


# ------------------------------------------------------------------------------------ suites
def _smoke() -> list[CaseSpec]:
    """<= 30 tiny cases, every feature once: seconds to generate and to check."""
    c = CaseSpec
    return [
        c("dense-n16-f32", "dense", {"n_q": 16}, d=8),
        c("dense-n16-f64", "dense", {"n_q": 16}, dtype="float64", d=8),
        c("causal-n24-f32", "causal", {"n_q": 24}, d=8),
        c("causal-n24-f64", "causal", {"n_q": 24}, dtype="float64", d=8),
        c(
            "causal-br-q12k20-f32",
            "causal",
            {"n_q": 12, "n_k": 20, "align": "bottom_right"},
            d=8,
            note="n_q < n_k, FlashAttention >= 2.1 alignment",
        ),
        c(
            "causal-br-q20k12-emptyrows-f32",
            "causal",
            {"n_q": 20, "n_k": 12, "align": "bottom_right"},
            d=8,
            note="n_q > n_k: the first 8 rows have no keys (out = 0, lse = -inf)",
        ),
        c("dense-q10k23-f64", "dense", {"n_q": 10, "n_k": 23}, dtype="float64", d=8, d_v=5),
        c("sliding_window-l3r2-n32-f32", "sliding_window", {"n": 32, "left": 3, "right": 2}, d=8),
        c(
            "sliding_window-l3r2-n32-gqa-f64",
            "sliding_window",
            {"n": 32, "left": 3, "right": 2},
            dtype="float64",
            heads=4,
            kv_heads=2,
            d=8,
        ),
        c(
            "causal_sliding_window-w5-n32-mqa-f32",
            "causal_sliding_window",
            {"n": 32, "window": 5},
            heads=4,
            kv_heads=1,
            d=8,
        ),
        c("dilated-w4d3-n40-f32", "dilated", {"n": 40, "window": 4, "dilation": 3}, d=8),
        c("strided-s5-causal-n40-f32", "strided", {"n": 40, "stride": 5, "causal": True}, d=8),
        c(
            "global_local-l2r2-g2-n32-f32",
            "global_local",
            {"n": 32, "left": 2, "right": 2, "global_tokens": [0, 17]},
            d=8,
        ),
        c("sinks-s2w4-n32-f32", "sinks", {"n": 32, "num_sinks": 2, "window": 4}, d=8),
        c("prefix_lm-p6-n24-f64", "prefix_lm", {"n": 24, "prefix": 6}, dtype="float64", d=8),
        c("document-5-9-10-f32", "document", {"lengths": [5, 9, 10]}, d=8),
        c(
            "random-k4-q20k28-f32",
            "random",
            {"n_q": 20, "n_k": 28, "per_row": 4, "seed": 3},
            d=8,
        ),
        c(
            "softcap-causal-n24-f32",
            "causal",
            {"n_q": 24},
            d=8,
            softcap=2.0,
            input_std=2.0,
        ),
        c(
            "softcap-causal-n24-f64",
            "causal",
            {"n_q": 24},
            dtype="float64",
            d=8,
            softcap=2.0,
            input_std=2.0,
        ),
        c(
            "custom-emptyrows-f64",
            "custom_rows",
            {"n_k": 7, "rows": [[], [0], [], [1, 3, 6], [6], []]},
            dtype="float64",
            d=4,
            note="hand-written rows, half of them empty",
        ),
        c(
            "stack-causal-dense-n16-f32",
            "stack",
            {"heads": [_p("causal", n_q=16), _p("dense", n_q=16)]},
            d=8,
            note="a different pattern per head",
        ),
        c(
            "document-and-causal-n20-b2-f32",
            "intersection",
            {"of": [_p("document", lengths=[7, 13]), _p("causal", n_q=20)]},
            batch=2,
            d=8,
        ),
        c("scale-dense-n12-f32", "dense", {"n_q": 12}, d=8, scale=0.7, note="explicit scale"),
        c(
            "batch-causal-window-b2-f32",
            "batch",
            {"patterns": [_p("causal", n_q=16), _p("sliding_window", n=16, left=2, right=1)]},
            batch=2,
            d=8,
            note="a different pattern per batch element",
        ),
    ]


def _default() -> list[CaseSpec]:
    """Every catalog family in float32 and float64, plus the layouts that break implementations."""
    base: list[tuple[str, str, dict[str, Any]]] = [
        ("dense-n150", "dense", {"n_q": 150}),
        ("causal-n200", "causal", {"n_q": 200}),
        ("sliding_window-l16r8-n200", "sliding_window", {"n": 200, "left": 16, "right": 8}),
        ("sliding_window-l0r0-n64", "sliding_window", {"n": 64, "left": 0, "right": 0}),
        ("causal_sliding_window-w32-n257", "causal_sliding_window", {"n": 257, "window": 32}),
        ("dilated-w8d4-n200", "dilated", {"n": 200, "window": 8, "dilation": 4}),
        (
            "dilated-w8d4-causal-n200",
            "dilated",
            {"n": 200, "window": 8, "dilation": 4, "causal": True},
        ),
        ("strided-s16-n200", "strided", {"n": 200, "stride": 16}),
        ("strided-s16-causal-n200", "strided", {"n": 200, "stride": 16, "causal": True}),
        (
            "global_local-l8r8-g3-n200",
            "global_local",
            {"n": 200, "left": 8, "right": 8, "global_tokens": [0, 1, 150]},
        ),
        ("sinks-s4w16-n200", "sinks", {"n": 200, "num_sinks": 4, "window": 16}),
        ("prefix_lm-p50-n200", "prefix_lm", {"n": 200, "prefix": 50}),
        ("document-lengths-n200", "document", {"lengths": [1, 40, 99, 60]}),
        ("document-seqids-n30", "document", {"seq_ids": [0] * 10 + [1] * 5 + [2] * 15}),
        ("random-k12-n200", "random", {"n_q": 200, "n_k": 200, "per_row": 12, "seed": 1}),
        (
            "random-k12-causal-n200",
            "random",
            {"n_q": 200, "n_k": 200, "per_row": 12, "seed": 2, "causal": True},
        ),
        (
            "sparse_transformer_strided-s16-n200",
            "sparse_transformer_strided",
            {"n": 200, "stride": 16},
        ),
        (
            "sparse_transformer_fixed-s16c4-n200",
            "sparse_transformer_fixed",
            {"n": 200, "stride": 16, "c": 4},
        ),
        (
            "bigbird-b16-n200",
            "bigbird",
            {"n": 200, "block": 16, "num_random_blocks": 2, "seed": 0, "num_heads": 2},
        ),
        (
            "vertical_slash-n200",
            "vertical_slash",
            {"n": 200, "vertical": [0, 5, 64], "slash": [0, 1, 9]},
        ),
        ("hierarchical-b16-n200", "hierarchical", {"n": 200, "block": 16, "left": 8, "right": 8}),
        (
            "block_sparse-b16-q90k75",
            "block_sparse",
            {
                "layout": [[(3 * i + 5 * j) % 4 != 0 for j in range(5)] for i in range(6)],
                "block": 16,
                "n_q": 90,
                "n_k": 75,
            },
        ),
        (
            "neighborhood_2d-12x10-k3",
            "neighborhood_2d",
            {"height": 12, "width": 10, "kernel": 3},
        ),
        (
            "neighborhood_2d-11x14-k5d2-causal",
            "neighborhood_2d",
            {"height": 11, "width": 14, "kernel": 5, "dilation": 2, "causal": True},
        ),
        (
            "topk-k10-n160",
            "topk",
            {"per_row": 10, "data": {"q": "q", "k": "k"}, "shape": [160, 160]},
        ),
        (
            "topk-k10-causal-q96k160",
            "topk",
            {"per_row": 10, "causal": True, "data": {"q": "q", "k": "k"}, "shape": [96, 160]},
        ),
        (
            "lsh-b8h2-causal-n160",
            "lsh",
            {
                "num_buckets": 8,
                "num_hashes": 2,
                "seed": 1,
                "causal": True,
                "data": {"x": "q"},
                "shape": [160, 160],
            },
        ),
        (
            "routing-c4-n160",
            "routing",
            {
                "num_clusters": 4,
                "iters": 5,
                "seed": 2,
                "data": {"q": "q", "k": "k"},
                "shape": [160, 160],
            },
        ),
        (
            "block_topk-b16k3-causal-n200",
            "block_topk",
            {
                "block": 16,
                "blocks_per_row": 3,
                "causal": True,
                "data": {"q": "q", "k": "k"},
                "shape": [200, 200],
            },
        ),
    ]
    cases: list[CaseSpec] = []
    for name, family, params in base:
        for dtype in ("float32", "float64"):
            cases.append(
                CaseSpec(
                    f"{name}-{'f32' if dtype == 'float32' else 'f64'}",
                    family,
                    params,
                    dtype=dtype,
                    d=32,
                )
            )
    c = CaseSpec
    for dtype, tag in (("float32", "f32"), ("float64", "f64")):
        cases += [
            c(
                f"dense-q64k200-{tag}",
                "dense",
                {"n_q": 64, "n_k": 200},
                dtype=dtype,
                d=32,
                note="n_q < n_k",
            ),
            c(
                f"dense-q200k37-{tag}",
                "dense",
                {"n_q": 200, "n_k": 37},
                dtype=dtype,
                d=32,
                note="n_q > n_k",
            ),
            c(
                f"causal-br-q70k190-{tag}",
                "causal",
                {"n_q": 70, "n_k": 190, "align": "bottom_right"},
                dtype=dtype,
                d=32,
                note="decode-like: queries at the end",
            ),
            c(
                f"causal-br-q190k70-emptyrows-{tag}",
                "causal",
                {"n_q": 190, "n_k": 70, "align": "bottom_right"},
                dtype=dtype,
                d=32,
                note="the first 120 rows are empty",
            ),
            c(
                f"causal-tl-q90k150-{tag}",
                "causal",
                {"n_q": 90, "n_k": 150},
                dtype=dtype,
                d=32,
            ),
            c(
                f"random-k8-q77k250-{tag}",
                "random",
                {"n_q": 77, "n_k": 250, "per_row": 8, "seed": 5},
                dtype=dtype,
                d=32,
            ),
            c(
                f"gqa-h8kv2-causal_sliding_window-w24-n160-{tag}",
                "causal_sliding_window",
                {"n": 160, "window": 24},
                dtype=dtype,
                heads=8,
                kv_heads=2,
                d=32,
            ),
            c(
                f"mqa-h4kv1-sliding_window-l8r8-n160-{tag}",
                "sliding_window",
                {"n": 160, "left": 8, "right": 8},
                dtype=dtype,
                heads=4,
                kv_heads=1,
                d=32,
            ),
            c(
                f"batch3-causal-n96-{tag}",
                "causal",
                {"n_q": 96},
                dtype=dtype,
                batch=3,
                d=32,
            ),
            c(
                f"softcap5-causal-n128-{tag}",
                "causal",
                {"n_q": 128},
                dtype=dtype,
                d=32,
                softcap=5.0,
                input_std=2.0,
                note="softcap binds: |s| >> 5",
            ),
            c(
                f"softcap30-sliding_window-n128-{tag}",
                "sliding_window",
                {"n": 128, "left": 16, "right": 16},
                dtype=dtype,
                d=32,
                softcap=30.0,
                input_std=3.0,
            ),
            c(
                f"softcap5-gqa-h4kv2-sinks-n128-{tag}",
                "sinks",
                {"n": 128, "num_sinks": 4, "window": 16},
                dtype=dtype,
                heads=4,
                kv_heads=2,
                d=32,
                softcap=5.0,
                input_std=2.0,
            ),
            c(
                f"dv-d64dv16-causal-n100-{tag}",
                "causal",
                {"n_q": 100},
                dtype=dtype,
                d=64,
                d_v=16,
                note="d != d_v",
            ),
            c(
                f"d128-sliding_window-n130-{tag}",
                "sliding_window",
                {"n": 130, "left": 31, "right": 0},
                dtype=dtype,
                d=128,
                heads=1,
                kv_heads=1,
            ),
            c(
                f"d1-causal-n33-{tag}",
                "causal",
                {"n_q": 33},
                dtype=dtype,
                d=1,
            ),
            c(
                f"n1-dense-{tag}",
                "dense",
                {"n_q": 1},
                dtype=dtype,
                d=16,
                note="a single query and key",
            ),
            c(
                f"scale0.03-causal-n64-{tag}",
                "causal",
                {"n_q": 64},
                dtype=dtype,
                d=32,
                scale=0.03,
                note="explicit scale",
            ),
            c(
                f"bigscores-causal-n64-{tag}",
                "causal",
                {"n_q": 64},
                dtype=dtype,
                d=32,
                input_std=6.0,
                note="scores up to ~200: the max subtraction matters",
            ),
            c(
                f"emptyrows-custom-{tag}",
                "custom_rows",
                {"n_k": 9, "rows": [[], [0, 8], [], [], [4], [1, 2, 3, 4, 5, 6, 7, 8], []]},
                dtype=dtype,
                d=8,
            ),
            c(
                f"emptyrows-window-minus-self-{tag}",
                "difference",
                {
                    "of": [
                        _p("sliding_window", n=64, left=0, right=0),
                        _p("sliding_window", n=64, left=0, right=0),
                    ]
                },
                dtype=dtype,
                d=16,
                note="every row empty",
            ),
            c(
                f"stack-h4-mixed-n96-{tag}",
                "stack",
                {
                    "heads": [
                        _p("causal", n_q=96),
                        _p("sliding_window", n=96, left=4, right=4),
                        _p("strided", n=96, stride=8, causal=True),
                        _p("dense", n_q=96),
                    ]
                },
                dtype=dtype,
                heads=4,
                kv_heads=2,
                d=32,
                note="one pattern per query head, with GQA",
            ),
            c(
                f"document-and-causal-n150-{tag}",
                "intersection",
                {"of": [_p("document", lengths=[30, 70, 50]), _p("causal", n_q=150)]},
                dtype=dtype,
                d=32,
                note="packed causal documents",
            ),
            c(
                f"sinks-or-strided-n150-{tag}",
                "union",
                {
                    "of": [
                        _p("sinks", n=150, num_sinks=2, window=8),
                        _p("strided", n=150, stride=10, causal=True),
                    ]
                },
                dtype=dtype,
                d=32,
            ),
            c(
                f"batch-b3-mixed-n96-{tag}",
                "batch",
                {
                    "patterns": [
                        _p("causal", n_q=96),
                        _p("sliding_window", n=96, left=8, right=8),
                        _p("document", lengths=[30, 66]),
                    ]
                },
                dtype=dtype,
                batch=3,
                heads=4,
                kv_heads=2,
                d=32,
                note="a different pattern per batch element (packed sequences), with GQA",
            ),
            c(
                f"ragged-bigbird-b32-n150-{tag}",
                "bigbird",
                {"n": 150, "block": 32, "num_random_blocks": 1, "seed": 3, "num_heads": 1},
                dtype=dtype,
                d=32,
                note="last block partial (150 % 32)",
            ),
        ]
    return cases


def _papers() -> list[CaseSpec]:
    """Published configurations at moderate length (float32, expected outputs in float64)."""
    c = CaseSpec
    return [
        c(
            "longformer-w512-g8-n4096",
            "global_local",
            {"n": 4096, "left": 256, "right": 256, "global_tokens": list(range(8))},
            heads=4,
            kv_heads=4,
            d=64,
            note="Longformer (Beltagy et al. 2020): attention window 512 (256 each side) plus "
            "global attention on 8 task tokens",
        ),
        c(
            "bigbird-b64-w3-g2-r3-n4096",
            "bigbird",
            {
                "n": 4096,
                "block": 64,
                "num_window_blocks": 3,
                "global_blocks": [0, -1],
                "num_random_blocks": 3,
                "seed": 0,
                "num_heads": 4,
            },
            heads=4,
            kv_heads=4,
            d=64,
            note="BigBird ITC (Zaheer et al. 2020): block 64, 3 window, 2 global, 3 random blocks, "
            "random blocks per head",
        ),
        c(
            "mistral-w4096-n6144-gqa",
            "causal_sliding_window",
            {"n": 6144, "window": 4096},
            heads=4,
            kv_heads=1,
            d=128,
            note="Mistral 7B (Jiang et al. 2023): sliding window 4096, GQA 4:1, head dim 128",
        ),
        c(
            "sparse_transformer-strided-s128-n4096",
            "sparse_transformer_strided",
            {"n": 4096, "stride": 128},
            heads=2,
            kv_heads=2,
            d=64,
            note="Sparse Transformer (Child et al. 2019) strided pattern, stride 128",
        ),
        c(
            "sparse_transformer-strided-split-s128-n4096",
            "sparse_transformer_strided",
            {"n": 4096, "stride": 128, "split_heads": True},
            heads=2,
            kv_heads=2,
            d=64,
            note="Sparse Transformer strided, the two components as two heads",
        ),
        c(
            "sparse_transformer-fixed-s128c8-n4096",
            "sparse_transformer_fixed",
            {"n": 4096, "stride": 128, "c": 8},
            heads=2,
            kv_heads=2,
            d=64,
            note="Sparse Transformer (Child et al. 2019) fixed pattern, stride 128, c = 8",
        ),
        c(
            "streamingllm-s4-w1020-n4096",
            "sinks",
            {"n": 4096, "num_sinks": 4, "window": 1020},
            heads=4,
            kv_heads=4,
            d=64,
            note="StreamingLLM (Xiao et al. 2023): 4 attention sinks + recent window, cache 1024",
        ),
    ]


def _stress() -> list[CaseSpec]:
    """n >= 65536; expected outputs for 256 sampled rows from ``oracle.attention_rows``."""
    c = CaseSpec
    # d = 32 keeps the files (inputs are stored in full) near 50-120 MiB each
    kw: dict[str, Any] = {"heads": 1, "kv_heads": 1, "d": 32, "rows": 256, "gradients": False}
    return [
        c(
            "stress-causal_sliding_window-w256-n65536",
            "causal_sliding_window",
            {"n": 65536, "window": 256},
            **kw,
        ),
        c("stress-sinks-s4w256-n65536", "sinks", {"n": 65536, "num_sinks": 4, "window": 256}, **kw),
        c(
            "stress-global_local-l64r64-g16-n65536",
            "global_local",
            {"n": 65536, "left": 64, "right": 64, "global_tokens": list(range(0, 65536, 4096))},
            **kw,
        ),
        c(
            "stress-strided-s2048-causal-n65536",
            "strided",
            {"n": 65536, "stride": 2048, "causal": True},
            **kw,
        ),
        c(
            "stress-dilated-w64d8-n65536",
            "dilated",
            {"n": 65536, "window": 64, "dilation": 8},
            **kw,
        ),
        c(
            "stress-random-k16-causal-n131072",
            "random",
            {"n_q": 131072, "n_k": 131072, "per_row": 16, "seed": 0, "causal": True},
            **kw,
        ),
        c(
            "stress-bigbird-b32-n65536",
            "bigbird",
            {
                "n": 65536,
                "block": 32,
                "num_window_blocks": 3,
                "global_blocks": [0],
                "num_random_blocks": 1,
                "seed": 0,
            },
            **kw,
        ),
        c(
            "stress-causal_sliding_window-w128-n65536-f64",
            "causal_sliding_window",
            {"n": 65536, "window": 128},
            dtype="float64",
            **kw,
        ),
    ]


#: suite name -> case list builder
SUITES: dict[str, Callable[[], list[CaseSpec]]] = {
    "smoke": _smoke,
    "default": _default,
    "papers": _papers,
    "stress": _stress,
}


def build_suite(name: str) -> Suite:
    """The suite ``name``: the cases whose catalog families exist, the rest recorded as skipped."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    have = catalog_families()
    keep, skipped = [], []
    for spec in SUITES[name]():
        missing = sorted(spec_families(spec.family, spec.params) - have)
        if missing:
            skipped.append(
                {
                    "id": spec.id,
                    "family": spec.family,
                    "reason": f"catalog family {', '.join(missing)} not available in this "
                    "sparse-ref",
                }
            )
        else:
            keep.append(spec)
    return Suite(name, tuple(keep), tuple(skipped))
