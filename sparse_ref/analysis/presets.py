"""What the literature states: each family's asymptotic cost and the published configurations."""

from __future__ import annotations

from typing import Any

from ..pattern import Pattern

__all__ = ["COMPLEXITY", "literature_patterns"]

#: Asymptotic cost of one attention layer per family, as the literature states it (``n`` tokens,
#: ``w`` window, ``s`` stride, ``g`` global tokens, ``r`` random blocks/keys, ``b`` block size).
COMPLEXITY: dict[str, str] = {
    "dense": "O(n²)",
    "causal": "O(n²)",
    "prefix_lm": "O(n²)",
    "sliding_window": "O(n·w)",
    "causal_sliding_window": "O(n·w)",
    "dilated": "O(n·w)",
    "sinks": "O(n·(w+s))",
    "global_local": "O(n·(w+g))",
    "strided": "O(n²/s)",
    "sparse_transformer_strided": "O(n·√n)",
    "sparse_transformer_fixed": "O(n·√n)",
    "bigbird": "O(n)",
    "random": "O(n·r)",
    "block_sparse": "O(nnz)",
    "document": "O(Σ lᵢ²)",
    "neighborhood_2d": "O(n·k²)",
    "vertical_slash": "O(n·(v+s))",
    "hierarchical": "O(n·(w+n/b))",
    "lsh": "O(n·log n)",
    "routing": "O(n·√n)",
    "topk": "O(n·k)",
    "block_topk": "O(n·k·b)",
}


def literature_patterns(n: int = 8192, *, include_dense: bool = True) -> dict[str, Pattern]:
    """The configurations that published comparisons use, at length ``n`` (labels name the paper).

    Full and causal attention, a window of 256 keys (Mistral-style causal and Longformer-style
    two-sided, ``w // 2`` on each side), Longformer's window with 16 global tokens, the Sparse
    Transformer's strided and fixed patterns (stride 128), BigBird-ITC (blocks of 64, 3 window, 2
    global, 3 random blocks), and StreamingLLM (4 sinks, window 256). Families missing from the
    catalog are left out.
    """
    from .. import patterns as cat

    spec: list[tuple[str, str, dict[str, Any]]] = []
    if include_dense:
        spec += [
            ("full (Vaswani 2017)", "dense", {"n_q": n}),
            ("causal", "causal", {"n_q": n}),
        ]
    spec += [
        ("window 256 causal (Mistral)", "causal_sliding_window", {"n": n, "window": 256}),
        ("window 256 ±128 (Longformer)", "sliding_window", {"n": n, "left": 128, "right": 128}),
        (
            "Longformer + 16 global",
            "global_local",
            {"n": n, "left": 128, "right": 128, "global_tokens": list(range(16))},
        ),
        ("Sparse Transformer strided 128", "sparse_transformer_strided", {"n": n, "stride": 128}),
        (
            "Sparse Transformer fixed 128, c=8",
            "sparse_transformer_fixed",
            {"n": n, "stride": 128, "c": 8},
        ),
        ("BigBird ITC (b=64, 3+2+3)", "bigbird", {"n": n, "block": 64}),
        ("StreamingLLM (4 sinks + 256)", "sinks", {"n": n, "num_sinks": 4, "window": 256}),
    ]
    names = set(cat.available())
    return {label: cat.build(fam, **params) for label, fam, params in spec if fam in names}
