"""Data-dependent patterns: which keys a query sees depends on the query/key vectors themselves.

Every builder takes 2-D ``(n, d)`` arrays (NumPy or anything with ``__array__``; float16, float32
or float64; finite), computes in float64 and returns a :class:`~sparse_ref.Pattern`. The result is
deterministic for given inputs and ``seed``, and bitwise reproducible across platforms: dot products
and norms are accumulated over ``d`` in index order with separate float64 multiplies and adds (no
BLAS, whose blocking and threading change the rounding), and all randomness comes from
``numpy.random.Generator(PCG64(seed))``.

Rebuilding. ``Pattern.params`` records the scalar arguments, the seed and a fingerprint of every
input array (``x_fingerprint``, or ``q_fingerprint`` and ``k_fingerprint``): the sha256 hex digest
of the JSON header ``{"dtype": arr.dtype.str, "shape": [...]}`` (sorted keys) followed by the
array's C-order bytes (see :func:`input_fingerprint`). ``patterns.build`` cannot rebuild such a
pattern from params alone; pass the arrays again::

    p = lsh(x, 8, seed=3)
    assert patterns.build("lsh", x=x, **p.params) == p

and the builder checks each given ``*_fingerprint`` against the array (``ValueError`` if they
differ, so a pattern is never silently rebuilt from different data).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

from .. import blocks as _blocks
from ..checks import check_bool, check_nonneg_int, check_pos_int
from ..pattern import Pattern, csr_from_arrays, index_dtype
from . import local
from ._rowkeys import same_group_csr, union_csr

__all__ = ["block_topk", "lsh", "routing", "topk"]

# Score rows are computed in chunks of about this many float64 entries (32 MiB).
_CHUNK_ENTRIES = 1 << 22
# Products in flight per tile of _dots (2 MiB of float64).
_TILE_ENTRIES = 1 << 18


# ---------------------------------------------------------------------------------------- helpers
def input_fingerprint(arr: Any) -> str:
    """sha256 hex of the JSON ``{"dtype": arr.dtype.str, "shape": [...]}`` + the C-order bytes.

    Example:
        >>> len(input_fingerprint(np.zeros((2, 3))))
        64
    """
    a = np.asarray(arr)
    digest = hashlib.sha256()
    header = {"dtype": a.dtype.str, "shape": [int(s) for s in a.shape]}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _input(x: Any, name: str, fingerprint: Any) -> tuple[np.ndarray, str]:
    """Validate a 2-D finite float input; return it in float64 and its fingerprint (checked)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's type error
        kind = type(x).__name__
        raise TypeError(f"{name} must be an array-like of shape (n, d), got {kind}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {arr.shape}")
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got {arr.dtype}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have d >= 1 features, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (it holds NaN or Inf)")
    fp = input_fingerprint(arr)
    if fingerprint is not None:
        if not isinstance(fingerprint, str):
            raise TypeError(f"{name}_fingerprint must be a str, got {type(fingerprint).__name__}")
        if fingerprint != fp:
            raise ValueError(
                f"{name}_fingerprint does not match the given {name}: the params were recorded for "
                f"another array ({fingerprint[:12]}... != {fp[:12]}...)"
            )
    return arr.astype(np.float64), fp


def _same_d(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{na} and {nb} must have the same d, got {a.shape} and {b.shape}")


def _dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` in float64, each entry summed over ``d`` in index order (reproducible anywhere).

    Tile by tile, the products ``a[i, t] * b[j, t]`` are formed as one ``(rows, d, cols)`` array and
    reduced over its middle axis, which NumPy adds sequentially (``((p0 + p1) + p2) + ...``, the
    pairwise summation applies only to the contiguous axis); no BLAS, whose blocking and threading
    change the rounding from machine to machine.
    """
    na, d = a.shape
    nb = b.shape[0]
    out = np.empty((na, nb), dtype=np.float64)
    bt = np.ascontiguousarray(b.T)
    cols = max(1, min(nb, 512))
    rows = max(1, _TILE_ENTRIES // (cols * d))
    for r0 in range(0, na, rows):
        r1 = min(r0 + rows, na)
        for c0 in range(0, nb, cols):
            c1 = min(c0 + cols, nb)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
                prod = a[r0:r1, :, None] * bt[None, :, c0:c1]
                np.add.reduce(prod, axis=1, out=out[r0:r1, c0:c1])
    if not np.isfinite(out).all():
        raise ValueError("dot products overflow float64; rescale the inputs")
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (norm accumulated in index order); zero rows stay zero."""
    sq = np.zeros(x.shape[0], dtype=np.float64)
    for t in range(x.shape[1]):
        sq += x[:, t] * x[:, t]
    norm = np.sqrt(sq)
    return np.divide(x, norm[:, None], out=np.zeros_like(x), where=norm[:, None] > 0)


def _top_mask(scores: np.ndarray, admissible: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ``k`` admissible columns with the largest scores, ties to the lower column.

    Rows with at most ``k`` admissible columns keep all of them. Exact: the ``k``-th largest score
    is the threshold, every larger score is kept, and equal scores are kept left to right until
    the row has ``k``.
    """
    n_adm = admissible.sum(axis=1)
    kk = min(k, scores.shape[1])
    if kk == 0:
        mask = np.zeros(scores.shape, dtype=bool)
    else:
        s = np.where(admissible, scores, -np.inf)
        thr = -np.partition(-s, kk - 1, axis=1)[:, kk - 1 : kk]
        greater = admissible & (s > thr)
        need = kk - greater.sum(axis=1, keepdims=True)
        equal = admissible & (s == thr)
        mask = greater | (equal & (np.cumsum(equal, axis=1) <= need))
    few = n_adm <= k
    mask[few] = admissible[few]
    return mask


def _exact_topk(
    q: np.ndarray, k: np.ndarray, scale: float, admissible: np.ndarray, per_row: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, keys)`` of the top ``per_row`` admissible ``scale * q_i . k_j`` per row, exactly.

    The scores are defined as in :func:`_dots` (sequential float64 sums over ``d``) and then
    multiplied by ``scale``. Computing them all that way is slow, so BLAS scores ``s`` come first,
    with a rigorous per-row bound ``B_i >= |s_ij - exact_ij|``: both sums are within
    ``gamma_d * sum_t |q_it k_jt| <= gamma_d |q_i| |k_j|`` of the real dot product, and ``B_i``
    doubles that (with ``max_j |k_j|``) and adds room for the roundings of ``scale *``, of the
    norms and of the bound itself. If ``t_i`` is the ``per_row``-th largest ``s_ij`` of the row, a
    key with ``s_ij < t_i - 2 B_i`` is beaten by ``per_row`` keys for sure; the remaining
    candidates (about ``per_row`` per row, more only near ties) get their exact scores, and the
    top ``per_row`` of those, ties to the lower key, are the answer.
    """
    n_rows, n_k = admissible.shape
    d = q.shape[1]
    n_adm = admissible.sum(axis=1)
    kk = min(per_row, n_k)
    if kk == 0 or n_rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    u = np.finfo(np.float64).epsneg  # 2**-53, the unit roundoff
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        s = q @ k.T
        s *= scale
    if not np.isfinite(s).all():
        raise ValueError("q . k overflows float64; rescale q and k")
    grow = 1 + 4 * d * u  # room for the rounding of the norms
    q_norm = np.sqrt(np.einsum("ij,ij->i", q, q)) * grow
    k_max = float(np.sqrt(np.einsum("ij,ij->i", k, k)).max(initial=0.0)) * grow
    s_max = np.abs(s).max(axis=1)
    bound = (scale * 4.0 * (d + 2) * u * k_max) * q_norm + 8.0 * u * s_max
    bound += (scale * (d + 2) + 4.0) * np.finfo(np.float64).smallest_subnormal  # underflow
    masked = np.where(admissible, s, -np.inf)
    kth = -np.partition(-masked, kk - 1, axis=1)[:, kk - 1]
    cut = np.where(n_adm <= per_row, -np.inf, kth - 2.0 * bound)
    cand_rows, cand_keys = np.nonzero(admissible & (masked >= cut[:, None]))
    exact = np.zeros(len(cand_rows), dtype=np.float64)
    for t in range(d):
        exact += q[cand_rows, t] * k[cand_keys, t]
    exact = scale * exact
    order = np.lexsort((cand_keys, -exact, cand_rows))  # by row, best first, lower key first
    ranked_rows = cand_rows[order]
    starts = np.searchsorted(ranked_rows, np.arange(n_rows))
    rank = np.arange(len(order)) - starts[ranked_rows]
    keep = order[rank < per_row]
    return cand_rows[keep].astype(np.int64), cand_keys[keep].astype(np.int64)


def _block_means(x: np.ndarray, block: int) -> np.ndarray:
    """Mean of each block of ``block`` rows (last block partial), summed in row order."""
    n, d = x.shape
    nb = -(-n // block)
    padded = np.zeros((nb * block, d), dtype=np.float64)
    padded[:n] = x
    tiles = padded.reshape(nb, block, d)
    sums = np.zeros((nb, d), dtype=np.float64)
    for t in range(block):
        sums += tiles[:, t]
    sizes = np.minimum(np.arange(1, nb + 1) * block, n) - np.arange(nb) * block
    return sums / sizes[:, None]


# --------------------------------------------------------------------------------------- families
def lsh(
    x: Any,
    num_buckets: int,
    num_hashes: int = 1,
    seed: int = 0,
    causal: bool = False,
    *,
    x_fingerprint: str | None = None,
) -> Pattern:
    """``i`` sees ``j`` iff they share the bucket ``argmax([x R_r, -x R_r])`` in some round ``r``.

    Reformer shared-QK LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer"),
    angular LSH of Andoni et al. 2015: ``R`` is drawn once as
    ``Generator(PCG64(seed)).standard_normal((num_hashes, d, num_buckets // 2))`` and round ``r``
    hashes token ``i`` to ``argmax`` of the ``num_buckets`` values ``[x_i @ R[r], -(x_i @ R[r])]``
    (ties to the lower bucket). Tokens attend within their bucket in any round (themselves
    included); ``causal`` keeps ``j <= i``. Reformer's chunking of sorted buckets is not modelled:
    this is the exact bucket pattern that chunking approximates.

    Args:
        x (array ``(n, d)``): the shared query/key vectors (float16/32/64, finite).
        num_buckets (int, even, >= 2): buckets per hash round.
        num_hashes (int >= 1): hash rounds; the pattern is the union of the rounds.
        seed (int >= 0): seed of the rotations.
        causal (bool): keep only ``j <= i``.
        x_fingerprint (str | None): when rebuilding from params, the recorded fingerprint of ``x``
            (checked; see the module docstring).

    Example:
        >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
        >>> lsh(x, 2, seed=0).to_dense().astype(int).tolist()
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    x64, fp = _input(x, "x", x_fingerprint)
    num_buckets = check_pos_int(num_buckets, "num_buckets")
    if num_buckets % 2:
        raise ValueError(f"num_buckets must be even (buckets come as +/- pairs), got {num_buckets}")
    num_hashes = check_pos_int(num_hashes, "num_hashes")
    seed = check_nonneg_int(seed, "seed")
    causal = check_bool(causal, "causal")
    n, d = x64.shape
    rng = np.random.Generator(np.random.PCG64(seed))
    rotations = rng.standard_normal((num_hashes, d, num_buckets // 2))
    parts = []
    for r in range(num_hashes):
        proj = _dots(x64, rotations[r].T)
        buckets = np.argmax(np.concatenate([proj, -proj], axis=1), axis=1)
        parts.append(same_group_csr(buckets, buckets, causal))
    indptr, indices = union_csr(parts, n, n)
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n, n))],
        family="lsh",
        params={
            "num_buckets": num_buckets,
            "num_hashes": num_hashes,
            "seed": seed,
            "causal": causal,
            "x_fingerprint": fp,
        },
    )


def routing(
    q: Any,
    k: Any,
    num_clusters: int,
    iters: int = 10,
    seed: int = 0,
    causal: bool = False,
    *,
    q_fingerprint: str | None = None,
    k_fingerprint: str | None = None,
) -> Pattern:
    """``i`` sees ``j`` iff unit ``q_i`` and unit ``k_j`` share a spherical k-means cluster.

    Routing Transformer (Roy et al. 2021, "Efficient Content-Based Sparse Attention with Routing
    Transformers"). The points are the rows of ``q`` and ``k`` scaled to unit norm (zero rows stay
    zero), clustered together: the ``num_clusters`` initial centroids are the points
    ``Generator(PCG64(seed)).choice(n_q + n_k, num_clusters, replace=False)``; each of ``iters``
    rounds assigns every point to the centroid of largest dot product (ties to the lower cluster)
    and moves each centroid to the normalised sum of its points (a cluster that is empty, or whose
    sum is zero, keeps its centroid). The pattern uses the assignment after the last round (after
    ``iters = 0`` rounds: to the initial centroids). ``causal`` keeps ``j <= i``.

    Args:
        q (array ``(n_q, d)``), k (array ``(n_k, d)``): float16/32/64, finite, same ``d``.
        num_clusters (int, 1 <= num_clusters <= n_q + n_k): clusters.
        iters (int >= 0): k-means rounds.
        seed (int >= 0): seed of the initial centroids.
        causal (bool): keep only ``j <= i``.
        q_fingerprint, k_fingerprint (str | None): recorded fingerprints, checked when rebuilding.

    Example:
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> routing(q, q, 2, seed=0).to_dense().astype(int).tolist()
        [[1, 0], [0, 1]]
    """
    q64, q_fp = _input(q, "q", q_fingerprint)
    k64, k_fp = _input(k, "k", k_fingerprint)
    _same_d(q64, k64, "q", "k")
    n_q, n_k = q64.shape[0], k64.shape[0]
    num_clusters = check_pos_int(num_clusters, "num_clusters")
    if num_clusters > n_q + n_k:
        raise ValueError(f"num_clusters must be <= n_q + n_k = {n_q + n_k}, got {num_clusters}")
    iters = check_nonneg_int(iters, "iters")
    seed = check_nonneg_int(seed, "seed")
    causal = check_bool(causal, "causal")
    points = _unit(np.concatenate([q64, k64]))
    rng = np.random.Generator(np.random.PCG64(seed))
    centroids = points[rng.choice(len(points), num_clusters, replace=False)]
    assign = np.argmax(_dots(points, centroids), axis=1)
    for _ in range(iters):
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, points)  # sequential in point order: reproducible
        unit = _unit(sums)
        moved = np.asarray(unit.any(axis=1))
        centroids = np.where(moved[:, None], unit, centroids)
        assign = np.argmax(_dots(points, centroids), axis=1)
    indptr, indices = same_group_csr(assign[:n_q], assign[n_q:], causal)
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n_q, n_k))],
        family="routing",
        params={
            "num_clusters": num_clusters,
            "iters": iters,
            "seed": seed,
            "causal": causal,
            "q_fingerprint": q_fp,
            "k_fingerprint": k_fp,
        },
    )


def _check_scale(scale: Any, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool | np.bool_) or not isinstance(scale, int | float | np.number):
        raise TypeError(f"scale must be a positive float or None, got {type(scale).__name__}")
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a positive finite float, got {scale!r}")
    return value


def topk(
    q: Any,
    k: Any,
    per_row: int,
    scale: float | None = None,
    causal: bool = False,
    *,
    q_fingerprint: str | None = None,
    k_fingerprint: str | None = None,
) -> Pattern:
    """Row ``i`` keeps the ``per_row`` largest ``scale * q_i . k_j`` (ties to the lower ``j``).

    Exact top-k attention (Gupta et al. 2021, "Memory-efficient Transformers via Top-k Attention";
    the oracle behind approximate top-k schemes such as Quest and DSA). Scores are computed in
    float64 (see the module docstring); among admissible keys (all, or ``j <= i`` if ``causal``)
    row ``i`` keeps those with the ``per_row`` largest scores, breaking ties by the lower key index;
    a row with at most ``per_row`` admissible keys keeps them all.

    Args:
        q (array ``(n_q, d)``), k (array ``(n_k, d)``): float16/32/64, finite, same ``d``.
        per_row (int >= 0): keys kept per row.
        scale (float > 0 | None): score scale, default ``1/sqrt(d)`` (it matters only for ties
            created by rounding).
        causal (bool): admissible keys are ``j <= i``.
        q_fingerprint, k_fingerprint (str | None): recorded fingerprints, checked when rebuilding.

    Example:
        >>> q = np.ones((1, 1)); k = np.array([[1.0], [3.0], [3.0], [2.0]])
        >>> topk(q, k, 2).to_dense().astype(int).tolist()
        [[0, 1, 1, 0]]
        >>> topk(q, k, 1).to_dense().astype(int).tolist()
        [[0, 1, 0, 0]]
    """
    q64, q_fp = _input(q, "q", q_fingerprint)
    k64, k_fp = _input(k, "k", k_fingerprint)
    _same_d(q64, k64, "q", "k")
    per_row = check_nonneg_int(per_row, "per_row")
    value = _check_scale(scale, q64.shape[1])
    causal = check_bool(causal, "causal")
    n_q, n_k = q64.shape[0], k64.shape[0]
    rows_per_chunk = max(1, _CHUNK_ENTRIES // max(n_k, 1))
    cols = np.arange(n_k, dtype=np.int64)[None, :]
    picked_rows, picked_cols = [], []
    for r0 in range(0, n_q, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, n_q)
        if causal:
            admissible = cols <= np.arange(r0, r1, dtype=np.int64)[:, None]
        else:
            admissible = np.ones((r1 - r0, n_k), dtype=bool)
        rows, keys = _exact_topk(q64[r0:r1], k64, value, admissible, per_row)
        picked_rows.append(rows + r0)
        picked_cols.append(keys)
    rows = np.concatenate(picked_rows) if picked_rows else np.zeros(0, dtype=np.int64)
    keys = np.concatenate(picked_cols) if picked_cols else np.zeros(0, dtype=np.int64)
    order = np.lexsort((keys, rows))
    indptr = np.zeros(n_q + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_q), out=indptr[1:])
    indices = keys[order].astype(index_dtype(len(keys), n_k))
    return Pattern._new(
        [csr_from_arrays(indptr, indices, (n_q, n_k))],
        family="topk",
        params={
            "per_row": per_row,
            "scale": None if scale is None else float(scale),
            "causal": causal,
            "q_fingerprint": q_fp,
            "k_fingerprint": k_fp,
        },
    )


def block_topk(
    q: Any,
    k: Any,
    block: int,
    blocks_per_row: int,
    causal: bool = False,
    include_local: bool = True,
    *,
    q_fingerprint: str | None = None,
    k_fingerprint: str | None = None,
) -> Pattern:
    """Block ``bi`` keeps the ``blocks_per_row`` key blocks of top ``mean(q).mean(k)``, plus ``bi``.

    Block selection in the style of NSA (Yuan et al. 2025, "Native Sparse Attention") and Quest
    (Tang et al. 2024), with mean pooling as the block summary. With ``Q_b``/``K_b`` the means of
    query/key block ``b`` (blocks of ``block`` tokens, the last may be partial), block ``bi`` scores
    key block ``bj`` by ``Q_bi . K_bj`` (float64, see the module docstring). Admissible key blocks
    are all of them, or ``bj <= bi`` if ``causal``; with ``include_local`` the diagonal block
    ``bj == bi`` is always kept (when ``bi < nb_k``) and the ``blocks_per_row`` top blocks are
    chosen among the others, so full rows hold ``blocks_per_row + 1`` blocks. Ties go to the lower
    block index. Token ``(i, j)`` is allowed iff its block is selected and, if ``causal``,
    ``j <= i`` (so the diagonal block is lower-triangular). Built in block form (block size
    ``block``; BSR kernels run, token CSR is made on demand).

    Args:
        q (array ``(n_q, d)``), k (array ``(n_k, d)``): float16/32/64, finite, same ``d``.
        block (int >= 1): block size in tokens (queries and keys).
        blocks_per_row (int >= 0): selected key blocks per query block (besides the local one).
        causal (bool): only ``bj <= bi`` blocks and ``j <= i`` tokens.
        include_local (bool): always keep the diagonal block.
        q_fingerprint, k_fingerprint (str | None): recorded fingerprints, checked when rebuilding.

    Example:
        >>> q = np.ones((4, 1)); k = np.array([[1.0], [1.0], [5.0], [5.0]])
        >>> block_topk(q, k, 2, 0).to_dense().astype(int).tolist()[0]
        [1, 1, 0, 0]
        >>> block_topk(q, k, 2, 1).to_dense().astype(int).tolist()[0]
        [1, 1, 1, 1]
    """
    q64, q_fp = _input(q, "q", q_fingerprint)
    k64, k_fp = _input(k, "k", k_fingerprint)
    _same_d(q64, k64, "q", "k")
    block = check_pos_int(block, "block")
    blocks_per_row = check_nonneg_int(blocks_per_row, "blocks_per_row")
    causal = check_bool(causal, "causal")
    include_local = check_bool(include_local, "include_local")
    n_q, n_k = q64.shape[0], k64.shape[0]
    scores = _dots(_block_means(q64, block), _block_means(k64, block))
    nbq, nbk = scores.shape
    bi = np.arange(nbq, dtype=np.int64)[:, None]
    bj = np.arange(nbk, dtype=np.int64)[None, :]
    admissible = (bj <= bi) if causal else np.ones((nbq, nbk), dtype=bool)
    admissible = np.broadcast_to(admissible, (nbq, nbk))
    if include_local:
        admissible = admissible & (bj != bi)
    layout = _top_mask(scores, admissible, blocks_per_row)
    if include_local:
        layout |= bj == bi
    blocks = _blocks.from_layout(layout, block, n_q, n_k)
    if causal:
        tri = local.causal(n_q, n_k, "top_left", block=block).to_bsr()
        blocks = _blocks.combine(blocks, tri, "intersection")
    return Pattern._new(
        None,
        blocks=blocks,
        family="block_topk",
        params={
            "block": block,
            "blocks_per_row": blocks_per_row,
            "causal": causal,
            "include_local": include_local,
            "q_fingerprint": q_fp,
            "k_fingerprint": k_fp,
        },
    )
