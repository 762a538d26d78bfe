"""Pictures of patterns and receptive fields (matplotlib, imported lazily: the ``viz`` extra).

:func:`plot` draws a *downsampled density picture*: the ``(n_q, n_k)`` plane is cut into at most
``max_pixels x max_pixels`` cells and each pixel shows the fraction of allowed (query, key) pairs in
its cell, counted from the pattern's CSR rows (or, for patterns built in block form, from its
blocks) with ``np.bincount``. Nothing of size ``n_q x n_k`` is ever built, so a causal window of
4096 at n = 1,048,576 (4.3e9 nonzeros, block form) draws in a second. :func:`density_image`
returns the numbers without drawing.

:func:`plot_receptive_field` draws how far one output token reaches into the input after 1, 2, ...
layers (see :func:`sparse_ref.analysis.receptive_field`).

:func:`example` builds every catalog family with small parameters (the table :data:`EXAMPLES`); the
docs build draws one picture per family from it, and ``sparse-ref patterns show NAME`` uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .pattern import Pattern

__all__ = [
    "DEFAULT_N",
    "INSTALL_HINT",
    "EXAMPLES",
    "DensityImage",
    "density_image",
    "example",
    "example_params",
    "plot",
    "plot_receptive_field",
    "require_matplotlib",
    "text_picture",
]

#: Sequence length of the catalog pictures (``example`` with ``n=None``).
DEFAULT_N = 256


#: What to install for the pictures: the ``viz`` extra holds matplotlib only.
INSTALL_HINT = "pip install 'sparse-ref[viz]' (or pip install matplotlib)"


def require_matplotlib() -> Any:
    """The ``matplotlib`` module.

    Raises:
        ImportError: matplotlib is not installed; the message says what to install
            (:data:`INSTALL_HINT`).
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            f"sparse_ref.viz draws with matplotlib, which is not installed: {INSTALL_HINT}"
        ) from err
    return matplotlib


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------ numbers
@dataclass(frozen=True)
class DensityImage:
    """Fraction of allowed pairs per cell: ``values[r, c]`` covers queries ``r * cell[0] ..`` and
    keys ``c * cell[1] ..`` (the last row/column of cells may be ragged). ``counts`` are the raw
    nonzero counts, ``shape`` the pattern's ``(n_q, n_k)``."""

    values: np.ndarray
    counts: np.ndarray
    cell: tuple[int, int]
    shape: tuple[int, int]


def _cells(n: int, size: int) -> tuple[int, np.ndarray]:
    """(number of cells, tokens per cell as int64) for ``n`` tokens in cells of ``size``."""
    m = -(-n // size) if n else 0
    widths = np.full(m, size, dtype=np.int64)
    if m:
        widths[-1] = n - (m - 1) * size
    return m, widths


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def density_image(pattern: Pattern, *, head: int = 0, max_pixels: int = 512) -> DensityImage:
    """The numbers behind :func:`plot`: nonzeros per cell of at most ``max_pixels`` per side.

    Cells are ``ceil(n / max_pixels)`` tokens wide. A pattern built in block form with more than
    ``2**26`` nonzeros is counted block by block (cells then round up to whole blocks, so the
    picture may have fewer pixels); otherwise from token CSR rows. Memory is O(nnz of one head)
    for the CSR path and O(stored blocks) for the block path, never O(n_q * n_k).

    Example:
        >>> from sparse_ref import patterns
        >>> img = density_image(patterns.causal(8), max_pixels=2)
        >>> img.values.tolist()
        [[0.625, 0.0], [1.0, 0.625]]
    """
    _check_positive_int("max_pixels", max_pixels)
    n_q, n_k = pattern.shape
    cq = max(1, -(-n_q // max_pixels))
    ck = max(1, -(-n_k // max_pixels))
    bsr = pattern.block_form
    if bsr is not None and pattern.nnz > (1 << 26):
        bq, bk = bsr.block
        cq, ck = bq * -(-cq // bq), bk * -(-ck // bk)  # whole blocks per cell: exact per block
        counts = _block_counts(pattern, head, cq, ck)
    else:
        counts = _csr_counts(pattern, head, cq, ck)
    mq, hq = _cells(n_q, cq)
    mk, hk = _cells(n_k, ck)
    area = hq[:, None] * hk[None, :]
    values = np.divide(counts, area, out=np.zeros(counts.shape), where=area > 0)
    return DensityImage(values=values, counts=counts, cell=(cq, ck), shape=(n_q, n_k))


def _csr_counts(pattern: Pattern, head: int, cq: int, ck: int) -> np.ndarray:
    n_q, n_k = pattern.shape
    mq, mk = -(-n_q // cq), -(-n_k // ck)
    csr = pattern.to_csr(head)
    # nonzeros of each row per key cell, accumulated per query cell: bincount over cell ids
    row_cell = np.repeat(np.arange(n_q, dtype=np.int64) // cq, np.diff(csr.indptr))
    ids = row_cell * mk + csr.indices.astype(np.int64) // ck
    return np.bincount(ids, minlength=mq * mk).reshape(mq, mk)


def _block_counts(pattern: Pattern, head: int, cq: int, ck: int) -> np.ndarray:
    bsr = pattern.block_form
    assert bsr is not None
    n_q, n_k = pattern.shape
    bq, bk = bsr.block
    mq, mk = -(-n_q // cq), -(-n_k // ck)
    p = head if bsr.num_heads > 1 else 0
    if not 0 <= p < bsr.num_heads:
        raise ValueError(f"head must be in [0, {bsr.num_heads}), got {head}")
    a, b = int(bsr.indptr[p, 0]), int(bsr.indptr[p, -1])
    rows = bsr.block_rows()[a:b]
    cols = bsr.indices[a:b].astype(np.int64)
    nr = np.minimum(bq, n_q - rows * bq)
    nc = np.minimum(bk, n_k - cols * bk)
    mi = bsr.mask_index[a:b]
    table = bsr.mask_table.sum(axis=(1, 2), dtype=np.int64)
    per_block = np.where(mi < 0, nr * nc, table[np.maximum(mi, 0)] if len(table) else 0)
    ids = (rows * bq // cq) * mk + cols * bk // ck
    return np.bincount(ids, weights=per_block, minlength=mq * mk).astype(np.int64).reshape(mq, mk)


# ------------------------------------------------------------------------------------ pictures
def plot(
    pattern: Pattern,
    ax: Any = None,
    *,
    head: int = 0,
    max_pixels: int = 512,
    cmap: str = "Blues",
    title: str | None = None,
    colorbar: bool = False,
) -> Any:
    """Draw a downsampled density picture of one head of ``pattern``; returns the matplotlib Axes.

    Queries run down the y axis and keys along the x axis (like the mask ``to_dense()`` would
    print); each pixel is the fraction of allowed pairs in its cell, 0 (white) to 1 (dark). Works
    at any size: see :func:`density_image`.

    Args:
        pattern: the pattern; ``head`` picks one of its heads.
        ax: a matplotlib Axes to draw into (default: a new figure).
        max_pixels: at most this many cells per side.
        cmap: a matplotlib colormap name.
        title: default ``"family  n_q x n_k  density"``.
        colorbar: add a colorbar.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from sparse_ref import patterns
        >>> ax = plot(patterns.causal_sliding_window(1024, 64))
    """
    plt = _pyplot()
    img = density_image(pattern, head=head, max_pixels=max_pixels)
    if ax is None:
        _, ax = plt.subplots(
            figsize=(4, 4 * min(2.0, max(0.25, img.shape[0] / max(img.shape[1], 1))))
        )
    n_q, n_k = img.shape
    im = ax.imshow(
        img.values,
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        extent=(0, n_k, n_q, 0),
        aspect="auto" if n_k != n_q else "equal",
    )
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    if title is None:
        title = f"{pattern.family}  {n_q}×{n_k}  density {pattern.density:.3g}"
    ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="allowed fraction")
    return ax


def plot_receptive_field(
    patterns: Pattern | Sequence[Pattern],
    layers: int | None = None,
    *,
    row: int | None = None,
    ax: Any = None,
    max_pixels: int = 512,
    residual: bool = True,
    cmap: str = "Oranges",
) -> Any:
    """Draw which input tokens output token ``row`` depends on after 1, 2, ..., L layers.

    Row ``l`` of the picture (top = layer 1) is the reach of ``row`` through the first ``l``
    layers of the stack (see :func:`sparse_ref.analysis.receptive_field` for the stack and
    ``layers`` rules), downsampled to at most ``max_pixels`` key cells. ``row`` defaults to the
    middle token. Returns the matplotlib Axes.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from sparse_ref import patterns
        >>> ax = plot_receptive_field(patterns.causal_sliding_window(512, 32), layers=6)
    """
    from .analysis.receptive import _layer_list, receptive_field

    plt = _pyplot()
    stack = _layer_list(patterns, layers)
    n = stack[0].shape[1]
    row = n // 2 if row is None else int(row)
    ck = max(1, -(-n // max_pixels))
    mk, widths = _cells(n, ck)
    values = np.zeros((len(stack), mk))
    sizes = []
    for depth in range(1, len(stack) + 1):
        rf = receptive_field(stack[:depth], rows=[row], residual=residual)
        counts = np.bincount(rf.reach.indices.astype(np.int64) // ck, minlength=mk)
        values[depth - 1] = counts / widths
        sizes.append(int(rf.sizes[0]))
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.35 * len(stack) + 1.2))
    ax.imshow(
        values,
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        aspect="auto",
        extent=(0, n, len(stack) + 0.5, 0.5),
    )
    ax.axvline(row + 0.5, color="black", linewidth=0.6, linestyle=":")
    ax.set_xlabel("input token j")
    ax.set_ylabel("layers")
    ax.set_yticks(range(1, len(stack) + 1))
    ax.set_title(
        f"receptive field of token {row}: {sizes[-1]} tokens after {len(stack)} layers", fontsize=9
    )
    return ax


def text_picture(pattern: Pattern, *, head: int = 0, width: int = 64, height: int = 32) -> str:
    """A density picture in text, at most ``height`` lines of ``width`` characters, for terminals
    (``sparse-ref patterns show`` without ``--png``): ``.`` empty, ``:-=+*#%`` from sparse to
    dense, ``@`` full.

    Example:
        >>> from sparse_ref import patterns
        >>> print(text_picture(patterns.causal(4), width=4, height=4))
        @...
        @@..
        @@@.
        @@@@
    """
    _check_positive_int("width", width)
    _check_positive_int("height", height)
    ramp = ".:-=+*#%@"
    n_q, n_k = pattern.shape
    img = density_image(pattern, head=head, max_pixels=max(1, width, height))
    # merge cells to at most height x width characters, weighting by cell area
    counts = img.counts.astype(np.float64)
    _, hq = _cells(n_q, img.cell[0])
    _, hk = _cells(n_k, img.cell[1])
    area = (hq[:, None] * hk[None, :]).astype(np.float64)
    rq = max(1, math.ceil(counts.shape[0] / height))
    rk = max(1, math.ceil(counts.shape[1] / width))
    mq, mk = -(-counts.shape[0] // rq), -(-counts.shape[1] // rk)
    num = np.zeros((mq * rq, mk * rk))
    den = np.zeros((mq * rq, mk * rk))
    num[: counts.shape[0], : counts.shape[1]] = counts
    den[: counts.shape[0], : counts.shape[1]] = area
    num = num.reshape(mq, rq, mk, rk).sum(axis=(1, 3))
    den = den.reshape(mq, rq, mk, rk).sum(axis=(1, 3))
    frac = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    level = np.clip(1 + np.floor(frac * 7).astype(int), 1, 7)
    level = np.where(num == 0, 0, np.where(frac >= 1.0, 8, level))
    return "\n".join("".join(ramp[c] for c in line) for line in level)


# ------------------------------------------------------------------------------------ examples
def _features(n: int, d: int, seed: int) -> np.ndarray:
    """Deterministic (n, d) float64 features with positional structure (neighbours look alike)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    pos = np.arange(n)[:, None] / max(n, 1)
    freqs = np.arange(1, d // 2 + 1)[None, :]
    smooth = np.concatenate(
        [np.sin(2 * np.pi * freqs * pos), np.cos(2 * np.pi * freqs * pos)], axis=1
    )
    return 2.0 * smooth[:, :d] + 0.5 * rng.standard_normal((n, d))


def _side(n: int) -> int:
    return max(1, round(math.sqrt(n)))


#: Small parameters per catalog family for pictures and ``sparse-ref patterns show``: family ->
#: ``f(n) -> params`` (the ``n`` of ``neighborhood_2d`` is rounded to a square grid).
EXAMPLES: dict[str, Callable[[int], dict[str, Any]]] = {
    "dense": lambda n: {"n_q": n},
    "causal": lambda n: {"n_q": n},
    "prefix_lm": lambda n: {"n": n, "prefix": n // 4},
    "sliding_window": lambda n: {"n": n, "left": max(1, n // 16), "right": max(1, n // 16)},
    "causal_sliding_window": lambda n: {"n": n, "window": max(1, n // 8)},
    "sinks": lambda n: {"n": n, "num_sinks": max(1, n // 64), "window": max(1, n // 8)},
    "dilated": lambda n: {"n": n, "window": max(2, n // 16), "dilation": 4},
    "strided": lambda n: {"n": n, "stride": max(1, n // 16), "causal": True},
    "global_local": lambda n: {
        "n": n,
        "left": max(1, n // 32),
        "right": max(1, n // 32),
        "global_tokens": sorted({0, 1, n // 2}) if n > 2 else [0],
    },
    "sparse_transformer_strided": lambda n: {"n": n, "stride": max(1, _side(n))},
    "sparse_transformer_fixed": lambda n: {
        "n": n,
        "stride": max(1, _side(n)),
        "c": max(1, _side(n) // 4),
    },
    "bigbird": lambda n: {"n": n, "block": max(1, n // 32), "seed": 0},
    "random": lambda n: {"n_q": n, "per_row": max(1, n // 16), "seed": 0},
    "block_sparse": lambda n: {
        "layout": (np.random.default_rng(0).random((8, 8)) < 0.25) | np.eye(8, dtype=bool),
        "block": max(1, -(-n // 8)),
    },
    "document": lambda n: {"lengths": _doc_lengths(n)},
    "neighborhood_2d": lambda n: {
        "height": _side(n),
        "width": _side(n),
        "kernel": max(1, _side(n) // 4) | 1,
    },
    "vertical_slash": lambda n: {
        "n": n,
        "vertical": sorted({0, 1, 2, n // 3, n // 2} & set(range(n))),
        "slash": sorted({0, 1, 2, n // 16, n // 4} & set(range(n))),
    },
    "hierarchical": lambda n: {
        "n": n,
        "block": max(1, n // 16),
        "left": max(1, n // 32),
        "right": max(1, n // 32),
    },
    "lsh": lambda n: {"x": _features(n, 16, 0), "num_buckets": 8, "seed": 0},
    "routing": lambda n: {
        "q": _features(n, 16, 1),
        "k": _features(n, 16, 1),
        "num_clusters": 6,
        "seed": 0,
    },
    "topk": lambda n: {
        "q": _features(n, 16, 2),
        "k": _features(n, 16, 3),
        "per_row": max(1, n // 16),
    },
    "block_topk": lambda n: {
        "q": _features(n, 16, 4),
        "k": _features(n, 16, 5),
        "block": max(1, n // 16),
        "blocks_per_row": 3,
        "causal": True,
    },
}


def _doc_lengths(n: int) -> list[int]:
    parts = [n // 8, n // 4, n // 8]
    parts.append(n - sum(parts))
    return [p for p in parts if p > 0] or [n]


def example_params(family: str, n: int | None = None) -> dict[str, Any]:
    """The parameters :func:`example` builds ``family`` with at length ``n`` (default
    :data:`DEFAULT_N`). Raises ``KeyError`` naming the family if :data:`EXAMPLES` lacks it."""
    if family not in EXAMPLES:
        raise KeyError(
            f"no example parameters for family {family!r}; add an entry to sparse_ref.viz.EXAMPLES "
            f"(known: {', '.join(sorted(EXAMPLES))})"
        )
    n = DEFAULT_N if n is None else int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return EXAMPLES[family](n)


def example(family: str, n: int | None = None, **overrides: Any) -> Pattern:
    """Catalog family ``family`` built with small example parameters at length ``n``, any of them
    replaced by ``overrides``.

    Example:
        >>> example("sliding_window", 64, left=2).params
        {'n': 64, 'left': 2, 'right': 4}
    """
    from . import patterns

    params = example_params(family, n)
    params.update(overrides)
    return patterns.build(family, **params)
