"""What a pattern costs and how far information travels through it.

Everything here works on the pattern's structure only (no attention is computed) and never builds a
dense ``n x n`` array:

- :func:`density` and :func:`cost`: FLOPs (``4 * nnz * d`` forward), score-matrix memory and the
  storage bytes of the CSR and BSR forms, next to the dense numbers;
- :func:`receptive_field`: which input tokens an output token depends on after a stack of layers,
  by sparse boolean products ``e_i @ A_L @ ... @ A_1`` (a hybrid stack is a list of per-layer
  patterns);
- :func:`connected_components` and :func:`diameter`: the pattern as a graph on tokens
  (``scipy.sparse.csgraph``; breadth-first search from sampled sources for large ``n``);
- :func:`compare` and :func:`memory_table`: the tables of the literature (complexity, density,
  memory, receptive field, connectivity, diameter), printed by ``sparse-ref patterns compare``.

Conventions. A pattern with several heads is analysed as the union of its heads (information flows
through any head). Graph functions need a square pattern (``n_q == n_k``: token ``i`` of one layer
is token ``i`` of the next). By default the graph is *undirected*: tokens ``i`` and ``j`` are
adjacent when either attends to the other, as in the graph view of BigBird (Zaheer et al. 2020,
§3); pass ``directed=True`` for the "i reads j" digraph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from .pattern import Pattern

__all__ = [
    "Comparison",
    "Cost",
    "Diameter",
    "ReceptiveField",
    "COMPLEXITY",
    "compare",
    "connected_components",
    "cost",
    "dense_score_bytes",
    "density",
    "diameter",
    "format_bytes",
    "literature_patterns",
    "memory_table",
    "receptive_field",
]

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


def _square(pattern: Pattern, what: str) -> int:
    n_q, n_k = pattern.shape
    if n_q != n_k:
        raise ValueError(
            f"{what} needs a square pattern (token i of one layer is token i of the next); got "
            f"shape {pattern.shape}"
        )
    return n_q


def _union_csr(pattern: Pattern, dtype: Any = np.int8) -> sp.csr_array:
    """The union of a pattern's heads as a canonical csr_array with ``dtype`` ones."""
    heads = [pattern.to_csr(h) for h in range(pattern.num_heads)]
    if len(heads) == 1:
        h = heads[0]
        return sp.csr_array(
            (np.ones(h.nnz, dtype=dtype), h.indices, h.indptr), shape=h.shape, copy=False
        )
    acc = heads[0].astype(dtype)
    for h in heads[1:]:
        acc = acc + h.astype(dtype)
    acc = sp.csr_array(acc)
    acc.sum_duplicates()
    acc.data[:] = 1
    return acc


# ------------------------------------------------------------------------------------------- cost
def density(pattern: Pattern) -> float:
    """Fraction of allowed (query, key) pairs: ``nnz / (num_heads * n_q * n_k)``.

    Example:
        >>> from sparse_ref import patterns
        >>> round(density(patterns.causal_sliding_window(8192, 256)), 4)
        0.0308
    """
    return pattern.density


def dense_score_bytes(
    n_q: int, n_k: int | None = None, *, dtype: Any = "float32", heads: int = 1
) -> int:
    """Bytes of a materialised dense score matrix ``heads x n_q x n_k`` in ``dtype``.

    Example:
        >>> dense_score_bytes(8192) // 2**20  # MiB, one head, float32
        256
    """
    n_k = n_q if n_k is None else n_k
    return int(heads) * int(n_q) * int(n_k) * np.dtype(_np_dtype(dtype)).itemsize


def _dtype_name(dtype: Any) -> str:
    return "bfloat16" if isinstance(dtype, str) and dtype == "bfloat16" else np.dtype(dtype).name


def _np_dtype(dtype: Any) -> Any:
    if isinstance(dtype, str) and dtype == "bfloat16":
        return np.float16  # same width; NumPy has no bfloat16
    return dtype


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of one attention call over a pattern, sparse next to dense.

    Counts are totals over ``heads`` query heads and one batch element. ``flops`` follows the
    FlashAttention convention: ``2 * nnz * d`` for ``q @ k.T`` plus ``2 * nnz * d_v`` for ``p @ v``
    (``4 * nnz * d`` when ``d_v == d``); softmax is not counted; ``backward_flops`` is ``2.5 *
    flops`` (five matmuls instead of two). Bytes:

    - ``io_bytes``: reading q, k, v and writing out once (what a fused kernel must move; the same
      for sparse and dense);
    - ``score_bytes`` / ``dense_score_bytes``: a materialised score matrix, sparse (``nnz``
      entries) or dense (``n_q * n_k`` per head);
    - ``csr_bytes``: the token CSR structure (int64 ``indptr`` per stored head, int32/int64
      indices), ``bsr_bytes``: the block form with blocks ``bsr_block`` (int64 ``indptr``, int32
      block columns and mask ids, one byte per bool of the deduplicated partial masks).
    """

    shape: tuple[int, int]
    heads: int
    d: int
    d_v: int
    itemsize: int
    nnz: int
    flops: int
    dense_flops: int
    io_bytes: int
    score_bytes: int
    dense_score_bytes: int
    csr_bytes: int
    bsr_bytes: int
    bsr_block: tuple[int, int]

    @property
    def backward_flops(self) -> float:
        """``2.5 * flops`` (FlashAttention's convention for the backward pass)."""
        return 2.5 * self.flops

    @property
    def flop_ratio(self) -> float:
        """``flops / dense_flops``: the pattern's density; 1/this is the best possible speed-up."""
        return self.flops / self.dense_flops if self.dense_flops else 0.0


def cost(
    pattern: Pattern,
    d: int,
    *,
    d_v: int | None = None,
    heads: int | None = None,
    dtype: Any = "float32",
    block: Any = None,
) -> Cost:
    """FLOPs and bytes of attention over ``pattern`` with head dimension ``d`` (see :class:`Cost`).

    Args:
        pattern: any pattern; one head is broadcast to ``heads`` heads.
        d: query/key head dimension; ``d_v`` the value dimension (default ``d``).
        heads: query heads (default ``pattern.num_heads``); must be a multiple of the pattern's
            stored heads.
        dtype: element type of q, k, v, out and scores (``itemsize`` only; ``"bfloat16"`` is 2).
        block: block size of the BSR storage count (default: the pattern's own block form, else
            128).

    Example:
        >>> from sparse_ref import patterns
        >>> c = cost(patterns.causal_sliding_window(8192, 256), d=64)
        >>> c.flops == 4 * c.nnz * 64, round(c.flop_ratio, 4)
        (True, 0.0308)
    """
    d = _pos_int(d, "d")
    d_v = d if d_v is None else _pos_int(d_v, "d_v")
    stored = pattern.num_heads
    heads = stored if heads is None else _pos_int(heads, "heads")
    if heads % stored:
        raise ValueError(f"heads = {heads} must be a multiple of the pattern's {stored} heads")
    itemsize = np.dtype(_np_dtype(dtype)).itemsize
    n_q, n_k = pattern.shape
    nnz = pattern.nnz * (heads // stored)
    if pattern.block_form is not None and block is None:
        bsr = pattern.block_form
    else:
        bsr = pattern.to_bsr(128 if block is None else block)
    per_head_nnz = (
        [pattern.to_csr(h).nnz for h in range(stored)]
        if pattern.block is None
        else [int(x) for x in bsr.nnz_per_head]
    )
    csr_bytes = sum((n_q + 1) * 8 + k * (4 if max(k, n_k) < 2**31 else 8) for k in per_head_nnz)
    bsr_bytes = int(
        bsr.indptr.nbytes + bsr.indices.nbytes + bsr.mask_index.nbytes + bsr.mask_table.nbytes
    )
    return Cost(
        shape=(n_q, n_k),
        heads=heads,
        d=d,
        d_v=d_v,
        itemsize=itemsize,
        nnz=nnz,
        flops=2 * nnz * (d + d_v),
        dense_flops=2 * heads * n_q * n_k * (d + d_v),
        io_bytes=heads * (n_q * (d + d_v) + n_k * (d + d_v)) * itemsize,
        score_bytes=nnz * itemsize,
        dense_score_bytes=heads * n_q * n_k * itemsize,
        csr_bytes=int(csr_bytes),
        bsr_bytes=bsr_bytes,
        bsr_block=bsr.block,
    )


def _pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------ receptive field
@dataclass(frozen=True)
class ReceptiveField:
    """Input tokens that each selected output token depends on after ``layers`` layers.

    ``reach`` is a bool ``csr_array`` of shape ``(len(rows), n)``: row ``k`` holds the input tokens
    that output token ``rows[k]`` depends on.
    """

    rows: np.ndarray
    reach: sp.csr_array
    layers: int
    residual: bool

    @property
    def sizes(self) -> np.ndarray:
        """Number of input tokens each selected output token depends on (int64)."""
        return np.diff(self.reach.indptr).astype(np.int64)

    @property
    def spans(self) -> np.ndarray:
        """``max - min + 1`` of each row's reach (0 for an empty reach), int64."""
        ip, ix = self.reach.indptr, self.reach.indices
        out = np.zeros(len(self.rows), dtype=np.int64)
        nonempty = np.diff(ip) > 0
        out[nonempty] = ix[ip[1:][nonempty] - 1].astype(np.int64) - ix[ip[:-1][nonempty]] + 1
        return out

    @property
    def max(self) -> int:
        """The largest receptive field (tokens) among the selected rows."""
        return int(self.sizes.max()) if len(self.rows) else 0

    @property
    def coverage(self) -> float:
        """``max / n``: the largest receptive field as a fraction of the sequence."""
        n = self.reach.shape[1]
        return self.max / n if n else 0.0


def _layer_list(patterns: Pattern | Sequence[Pattern], layers: int | None) -> list[Pattern]:
    if isinstance(patterns, Pattern):
        return [patterns] * (1 if layers is None else _pos_int(layers, "layers"))
    stack = list(patterns)
    if not stack or not all(isinstance(p, Pattern) for p in stack):
        raise TypeError("patterns must be a Pattern or a non-empty sequence of Patterns")
    if layers is None:
        return stack
    layers = _pos_int(layers, "layers")
    return [stack[i % len(stack)] for i in range(layers)]


def default_rows(n: int, limit: int = 2048, samples: int = 64) -> np.ndarray:
    """All rows when ``n <= limit``, else ``samples`` evenly spaced rows (first, middle, last)."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    rows = np.linspace(0, n - 1, samples).round().astype(np.int64)
    return np.unique(np.concatenate([rows, [n // 2]]))


def receptive_field(
    patterns: Pattern | Sequence[Pattern],
    layers: int | None = None,
    *,
    rows: Any = None,
    residual: bool = True,
) -> ReceptiveField:
    """Which input tokens each output token depends on after a stack of attention layers.

    The stack is ``patterns`` bottom layer first: one pattern repeated ``layers`` times (default
    1), or a list of per-layer patterns (a hybrid stack such as three windowed layers and one dense
    layer), cycled to ``layers`` layers if ``layers`` is given. Output token ``i`` depends on input
    token ``j`` when ``(e_i @ A_L @ ... @ A_1)[j] != 0`` with ``A_l`` the union of layer ``l``'s
    heads, plus the identity if ``residual`` (a residual connection carries token ``i`` to the
    next layer). The products are sparse boolean row-vector products, so memory is O(rows x
    reach), never ``n x n``; rows that already reach every token stop early. The layers' token CSR
    is used (materialised once for a pattern built in block form).

    With residual connections a window of ``w`` keys (``causal_sliding_window(n, w)``) reaches
    ``L * (w - 1) + 1`` tokens after ``L`` layers (the literature's ``L * w``), and
    ``sliding_window(n, left, right)`` reaches ``L * (left + right) + 1``, away from the edges.

    Args:
        patterns: a square Pattern, or a sequence of square Patterns of the same size.
        layers: number of layers (see above).
        rows: output tokens to trace (default: all rows up to n = 2048, else 65 evenly spaced rows
            including the first, middle and last).
        residual: add the identity to every layer.

    Example:
        >>> from sparse_ref import patterns
        >>> rf = receptive_field(patterns.causal_sliding_window(4096, 256), layers=4, rows=[4095])
        >>> rf.max == 4 * 255 + 1
        True
    """
    stack = _layer_list(patterns, layers)
    n = _square(stack[0], "receptive_field")
    for i, p in enumerate(stack):
        if p.shape != (n, n):
            raise ValueError(f"layer {i} has shape {p.shape}, layer 0 has {(n, n)}")
    rows_arr = default_rows(n) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
    if len(rows_arr) and (rows_arr.min() < 0 or rows_arr.max() >= n):
        raise ValueError(f"rows must be in [0, {n})")
    r = len(rows_arr)
    idx_dtype = np.int32 if n < 2**31 - 1 else np.int64
    reach = _bool_csr(np.arange(r + 1), rows_arr, (r, n), idx_dtype)
    layer_ids: dict[int, int] = {}
    mats: list[sp.csr_array] = []
    saturated = np.zeros(r, dtype=bool)  # reaches every token: final (residual only)
    fixed_for = np.full(r, -1)  # unchanged by layer k: final while the layers are k
    for p in reversed(stack):  # top layer first: e_i @ A_L @ ... @ A_1
        if id(p) not in layer_ids:
            mats.append(_union_bool(p))
            layer_ids[id(p)] = len(mats) - 1
        k = layer_ids[id(p)]
        idx = np.flatnonzero(~saturated & (fixed_for != k))
        if len(idx) == 0:
            continue
        sub = reach[idx]
        new = sp.csr_array(sub @ mats[k])  # bool semiring: entries OR together
        if residual:
            new = sp.csr_array(new + sub)
        new = _bool_csr(new.indptr, new.indices, new.shape, idx_dtype, canonical=False)
        counts_new = np.diff(new.indptr)
        if residual:  # reach only grows, so equal counts mean equal sets
            fixed_for[idx] = np.where(counts_new == np.diff(sub.indptr), k, -1)
            saturated[idx] = counts_new == n
        reach = _replace_rows(reach, idx, new)
    reach.sort_indices()
    return ReceptiveField(rows=rows_arr, reach=reach, layers=len(stack), residual=residual)


def _bool_csr(
    indptr: Any, indices: Any, shape: tuple[int, int], idx_dtype: Any, canonical: bool = True
) -> sp.csr_array:
    m = sp.csr_array(
        (
            np.ones(len(indices), dtype=bool),
            np.asarray(indices, dtype=idx_dtype),
            np.asarray(indptr, dtype=idx_dtype),
        ),
        shape=shape,
    )
    if not canonical:
        m.sum_duplicates()
    return m


def _union_bool(p: Pattern) -> sp.csr_array:
    """Union of the heads as a bool csr_array (the stored arrays themselves for one head)."""
    if p.num_heads == 1:
        return p.to_csr(0)
    return sp.csr_array(_union_csr(p, np.int8) != 0)


def _replace_rows(m: sp.csr_array, idx: np.ndarray, new: sp.csr_array) -> sp.csr_array:
    """``m`` with rows ``idx`` replaced by the rows of ``new`` (CSR row operations only)."""
    if len(idx) == m.shape[0]:
        return new
    keep = np.ones(m.shape[0], dtype=bool)
    keep[idx] = False
    order = np.concatenate([np.flatnonzero(keep), idx])
    stacked = sp.csr_array(sp.vstack([m[np.flatnonzero(keep)], new], format="csr"))
    out = sp.csr_array(stacked[np.argsort(order, kind="stable")])
    return _bool_csr(out.indptr, out.indices, out.shape, m.indices.dtype)


# --------------------------------------------------------------------------------------- graphs
#: Above this many nonzeros the undirected search scans the rows level by level instead of
#: building the transpose (a scattered O(nnz) pass that dominates for dense-like patterns, whose
#: searches end after one or two levels).
TRANSPOSE_LIMIT = 1 << 24


class _Graph:
    """The token graph of a square pattern (union of heads) for breadth-first searches.

    Small graphs (``nnz <= TRANSPOSE_LIMIT``) or directed ones search by adjacency lists: the rows
    (keys that ``u`` attends) and, undirected, the rows of the transpose (queries that attend
    ``u``). Larger undirected graphs search by full row scans per level, without a transpose.
    """

    def __init__(self, pattern: Pattern, directed: bool, what: str) -> None:
        self.n = _square(pattern, what)
        a = _union_bool(pattern)
        self.indptr = np.asarray(a.indptr, dtype=np.int64)
        self.indices = a.indices
        self.directed = directed
        self.scan = not directed and a.nnz > TRANSPOSE_LIMIT
        if directed or self.scan:
            self.t_indptr = np.zeros(self.n + 1, dtype=np.int64)
            self.t_indices = np.zeros(0, dtype=a.indices.dtype)
        else:
            self.t_indptr, self.t_indices = _transpose(self.indptr, a.indices, self.n)
        self.visited = np.zeros(self.n, dtype=np.int64)  # BFS stamp per node
        self.queue = np.zeros(self.n, dtype=np.int64)
        self.depth = np.zeros(self.n, dtype=np.int64)
        self.stamp = 0

    def bfs(self, source: int) -> tuple[int, int, int]:
        """(eccentricity, a farthest node, nodes reached) of one breadth-first search."""
        if self.scan:
            return _bfs_scan(self.indptr, self.indices, source, self.depth)
        self.stamp += 1
        return _bfs(
            self.indptr,
            self.indices,
            self.t_indptr,
            self.t_indices,
            source,
            self.stamp,
            self.visited,
            self.queue,
            self.depth,
        )


@numba.njit(cache=True, nogil=True)
def _transpose(indptr: np.ndarray, indices: np.ndarray, n_k: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the transpose by a counting sort (rows of the result are sorted)."""
    n_q = len(indptr) - 1
    t_indptr = np.zeros(n_k + 1, dtype=np.int64)
    for e in range(len(indices)):
        t_indptr[indices[e] + 1] += 1
    for j in range(n_k):
        t_indptr[j + 1] += t_indptr[j]
    fill = t_indptr[:-1].copy()
    t_indices = np.empty(len(indices), dtype=indices.dtype)
    for i in range(n_q):
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            t_indices[fill[j]] = i
            fill[j] += 1
    return t_indptr, t_indices


@numba.njit(cache=True, nogil=True)
def _bfs(indptr, indices, t_indptr, t_indices, source, stamp, visited, queue, depth):  # type: ignore[no-untyped-def]
    """Level-order BFS from ``source`` over both adjacency lists; stops once every node is seen
    (the last node discovered then has the largest depth, so the eccentricity is exact)."""
    n = len(indptr) - 1
    visited[source] = stamp
    queue[0] = source
    depth[source] = 0
    head, tail = 0, 1
    if n == 1:
        return 0, source, 1
    while head < tail:
        u = queue[head]
        head += 1
        du = depth[u] + 1
        for side in range(2):
            ip = indptr if side == 0 else t_indptr
            ix = indices if side == 0 else t_indices
            for e in range(ip[u], ip[u + 1]):
                v = ix[e]
                if visited[v] != stamp:
                    visited[v] = stamp
                    depth[v] = du
                    queue[tail] = v
                    tail += 1
                    if tail == n:
                        return du, v, n
    last = queue[tail - 1]
    return depth[last], last, tail


@numba.njit(cache=True, nogil=True)
def _bfs_scan(indptr, indices, source, dist):  # type: ignore[no-untyped-def]
    """Undirected BFS without a transpose: each level scans every row once, stepping along an
    entry (i, j) in whichever direction leaves the current level; stops once every node is seen."""
    n = len(indptr) - 1
    dist[:] = -1
    dist[source] = 0
    reached, far, level = 1, source, 0
    if n == 1:
        return 0, source, 1
    while True:
        changed = False
        for i in range(n):
            if dist[i] >= 0 and dist[i] != level:
                continue  # neither pushes nor pulls at this level
            push = dist[i] == level
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                if push:
                    if dist[j] >= 0:
                        continue
                    dist[j] = level + 1
                    far = j
                elif dist[j] == level:
                    dist[i] = level + 1
                    far = i
                else:
                    continue
                reached += 1
                changed = True
                if reached == n:
                    return level + 1, far, n
                if not push:
                    break  # row i is settled; it cannot push at this level
        if not changed:
            return level, far, reached
        level += 1


@numba.njit(cache=True, nogil=True)
def _union_find(indptr, indices):  # type: ignore[no-untyped-def]
    """Root of every node after uniting the ends of every entry (path halving)."""
    n = len(indptr) - 1
    parent = np.arange(n)
    merges = 0
    for i in range(n):
        if merges == n - 1:  # one component already: nothing left to unite
            break
        for e in range(indptr[i], indptr[i + 1]):
            a, b = i, indices[e]
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            while parent[b] != b:
                parent[b] = parent[parent[b]]
                b = parent[b]
            if a != b:
                merges += 1
                if a < b:
                    parent[b] = a
                else:
                    parent[a] = b
    for i in range(n):  # roots are the smallest node of each component (parents point down)
        parent[i] = parent[parent[i]]
    return parent


def connected_components(pattern: Pattern, *, connection: str = "weak") -> tuple[int, np.ndarray]:
    """Connected components of the token graph (union of heads).

    ``connection="weak"`` ignores direction (i and j connected when either attends the other;
    one union-find pass over the nonzeros); ``"strong"`` needs a directed path both ways
    (``scipy.sparse.csgraph``). Returns ``(count, labels)``, labels an int32 ``(n,)`` array; weak
    components are numbered in order of their first token.

    Example:
        >>> from sparse_ref import patterns
        >>> connected_components(patterns.document(lengths=[3, 5]))[0]
        2
    """
    if connection not in ("weak", "strong"):
        raise ValueError(f"connection must be 'weak' or 'strong', got {connection!r}")
    _square(pattern, "connected_components")
    a = _union_bool(pattern)
    if connection == "strong":
        count, labels = csgraph.connected_components(a, directed=True, connection="strong")
        return int(count), labels.astype(np.int32)
    roots = _union_find(np.asarray(a.indptr, dtype=np.int64), a.indices)
    # roots are component minima, so ranking them numbers components by their first token
    uniq, labels = np.unique(roots, return_inverse=True)
    return len(uniq), labels.astype(np.int32)


@dataclass(frozen=True)
class Diameter:
    """The longest shortest path of the token graph, in hops.

    ``value`` is ``inf`` for a disconnected graph. ``exact`` tells whether the value is certain:
    every source was searched, or (undirected) the lower bound met the upper bound ``2 * min
    eccentricity`` found; otherwise ``value`` is a lower bound (sampled sources, then a double
    sweep from the farthest node found), exact on paths and windows and tight in practice.
    ``sources`` counts the searches.
    """

    value: float
    exact: bool
    sources: int

    def __str__(self) -> str:
        if math.isinf(self.value):
            return "inf"
        return f"{int(self.value)}" if self.exact else f"≥{int(self.value)}"


def diameter(
    pattern: Pattern,
    *,
    directed: bool = False,
    samples: int = 16,
    exact_limit: int = 1024,
    seed: int = 0,
) -> Diameter:
    """Diameter of the token graph in hops (``inf`` if disconnected), union of heads.

    Exact (a breadth-first search from every token) for ``n <= exact_limit``. Above, the sources
    are ``samples`` random tokens (seeded) plus the token of highest degree (a global token, if
    any), followed by a double sweep from the farthest token found; the result is a lower bound,
    marked exact when it reaches ``2 * min eccentricity`` (an upper bound on undirected graphs:
    any two tokens are joined through the most central one), as with global tokens (diameter 2).
    ``directed=False`` (default) treats "i attends j" as an undirected edge; ``directed=True``
    follows "i attends j" only (``inf`` unless strongly connected).

    Example:
        >>> from sparse_ref import patterns
        >>> str(diameter(patterns.sliding_window(64, 4, 4)))
        '16'
    """
    g = _Graph(pattern, directed, "diameter")
    n = g.n
    if n <= 1:
        return Diameter(0.0, True, 0)
    row_counts = np.diff(g.indptr)
    if (row_counts == n).all():  # every token attends every token
        return Diameter(1.0, True, 0)
    if n <= exact_limit:
        sources = np.arange(n)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        sources = rng.choice(n, size=min(_pos_int(samples, "samples"), n), replace=False)
        degree = row_counts + (0 if directed else np.bincount(g.indices, minlength=n))
        sources = np.concatenate([[int(np.argmax(degree))], sources])
        exact = False
    best, far, least = 0, int(sources[0]), math.inf
    for s in sources:
        ecc, f, reached = g.bfs(int(s))
        if reached < n:
            return Diameter(math.inf, True, 1)  # some node unreachable: exact whatever the sampling
        least = min(least, ecc)
        if ecc > best:
            best, far = ecc, f
    checked = len(sources)
    if not exact:
        for _ in range(2):  # double sweep from the farthest node found so far
            ecc, f, _ = g.bfs(far)
            checked += 1
            if ecc <= best:
                break
            best, far = ecc, f
        exact = not directed and best >= 2 * least
    return Diameter(float(best), exact, checked)


# ---------------------------------------------------------------------------------------- tables
def format_bytes(b: float) -> str:
    """Binary units, three significant digits: ``format_bytes(2**28) == '256 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1000 or unit == "TiB":
            return f"{b:.3g} {unit}"
        b /= 1024
    raise AssertionError("unreachable")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x >= 0.001 else f"{100 * x:.3f}%"


@dataclass
class Comparison:
    """A comparison table: ``columns`` and one dict per pattern in ``rows`` (raw numbers under
    ``records``); print it with ``str()``, :meth:`to_markdown` or :meth:`to_rich`."""

    title: str
    columns: list[str]
    rows: list[dict[str, str]]
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table (with the notes below it)."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(row[c] for c in self.columns) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_rich(self) -> Any:
        """A ``rich.table.Table`` (rich is a dependency of the CLI)."""
        from rich.table import Table

        table = Table(
            title=self.title, caption="\n".join(self.notes) or None, caption_justify="left"
        )
        for i, c in enumerate(self.columns):
            table.add_column(c, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*(row[c] for c in self.columns))
        return table

    def __str__(self) -> str:
        widths = [max(len(c), *(len(r[c]) for r in self.rows)) for c in self.columns]
        line = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))
        out = [self.title, line, "-" * len(line)]
        for r in self.rows:
            out.append("  ".join(r[c].ljust(w) for c, w in zip(self.columns, widths, strict=True)))
        return "\n".join(out + self.notes)


def _label(p: Pattern) -> str:
    params = {k: v for k, v in p.params.items() if k not in ("n", "n_q", "n_k")}
    inner = ", ".join(
        f"{k}={v}" for k, v in params.items() if not isinstance(v, dict | list) or len(str(v)) < 24
    )
    return f"{p.family}({inner})"


def compare(
    patterns: Mapping[str, Pattern] | Iterable[Pattern],
    *,
    layers: int = 4,
    d: int = 64,
    dtype: Any = "float32",
    rf_rows: Any = None,
    diameter_samples: int = 8,
    seed: int = 0,
) -> Comparison:
    """The literature's comparison table for square patterns of one size ``n``.

    Columns: asymptotic complexity (:data:`COMPLEXITY`), mean keys per query, density, forward
    GFLOP at head dimension ``d`` (``4 * nnz * d``), memory of the sparse score matrix next to the
    dense one (``n * n`` per head, in ``dtype``), the receptive field after ``layers`` layers (the
    largest over ``rf_rows``, default the middle and last rows; see :func:`receptive_field`),
    connected components (weak) and the diameter (undirected; ``≥`` marks a sampled lower bound).

    Args:
        patterns: ``{label: pattern}`` or patterns (labelled by family and params).

    Example:
        >>> from sparse_ref import patterns
        >>> t = compare({"window 16": patterns.causal_sliding_window(512, 16)}, layers=2)
        >>> t.records[0]["receptive_field"], t.rows[0]["density"]
        (31, '3.1%')
    """
    items = (
        list(patterns.items())
        if isinstance(patterns, Mapping)
        else [(_label(p), p) for p in patterns]
    )
    if not items:
        raise ValueError("compare needs at least one pattern")
    n = _square(items[0][1], "compare")
    for label, p in items:
        if p.shape != (n, n):
            raise ValueError(f"{label}: shape {p.shape}, expected {(n, n)} like the first pattern")
    rows_sel = np.array(sorted({n // 2, n - 1}), dtype=np.int64) if rf_rows is None else rf_rows
    itemsize = np.dtype(_np_dtype(dtype)).itemsize
    columns = [
        "pattern",
        "complexity",
        "keys/query",
        "density",
        "GFLOP fwd",
        "scores",
        f"RF after {layers} layers",
        "components",
        "diameter",
    ]
    rows, records = [], []
    for label, p in items:
        nnz = p.nnz / p.num_heads  # per head
        rf = receptive_field(p, layers, rows=rows_sel)
        comps, _ = connected_components(p)
        diam = diameter(p, samples=diameter_samples, seed=seed)
        rec = {
            "label": label,
            "family": p.family,
            "complexity": COMPLEXITY.get(p.family, "O(nnz)"),
            "keys_per_query": nnz / n,
            "density": p.density,
            "gflop_forward": 4 * nnz * d / 1e9,
            "score_bytes": int(nnz * itemsize),
            "dense_score_bytes": n * n * itemsize,
            "receptive_field": rf.max,
            "receptive_coverage": rf.coverage,
            "components": comps,
            "diameter": diam.value,
            "diameter_exact": diam.exact,
        }
        records.append(rec)
        rows.append(
            {
                "pattern": label,
                "complexity": rec["complexity"],
                "keys/query": f"{rec['keys_per_query']:.1f}",
                "density": _pct(rec["density"]),
                "GFLOP fwd": f"{rec['gflop_forward']:.3g}",
                "scores": f"{format_bytes(rec['score_bytes'])}",
                f"RF after {layers} layers": f"{rf.max} ({_pct(rf.coverage)})",
                "components": str(comps),
                "diameter": str(diam),
            }
        )
    notes = [
        f"n = {n}, d = {d}, {_dtype_name(dtype)} scores per head; a dense score matrix is "
        f"{format_bytes(n * n * itemsize)}.",
        "keys/query and density per head; RF = input tokens the widest traced output token "
        f"(rows {', '.join(map(str, np.asarray(rows_sel).tolist()))}) depends on, with residual "
        "connections.",
        "diameter: undirected token graph, union of heads; ≥ marks a sampled lower bound.",
    ]
    return Comparison(
        title=f"Sparse attention patterns at n = {n}",
        columns=columns,
        rows=rows,
        records=records,
        notes=notes,
    )


def memory_table(
    ns: Sequence[int] = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
    *,
    dtypes: Sequence[Any] = ("float32", "float16"),
    window: int = 256,
    heads: int = 1,
) -> Comparison:
    """Memory of the dense score matrix per sequence length, next to a window of ``window`` keys.

    One row per ``n``: the dense ``n x n`` score matrix in each dtype (``heads`` heads), and the
    sparse scores of ``causal_sliding_window(n, window)`` (``n * window - window * (window - 1) /
    2`` entries, counted without building the pattern) in the first dtype.

    Example:
        >>> memory_table([8192]).rows[0]["dense float32"]
        '256 MiB'
    """
    cols = ["n"] + [f"dense {_dtype_name(t)}" for t in dtypes]
    cols += [f"window {window} ({dtypes[0]})", "ratio"]
    rows, records = [], []
    for n in ns:
        n = _pos_int(n, "n")
        w = min(window, n)
        nnz = n * w - w * (w - 1) // 2
        dense = [dense_score_bytes(n, dtype=t, heads=heads) for t in dtypes]
        sparse = heads * nnz * np.dtype(_np_dtype(dtypes[0])).itemsize
        row = {"n": str(n)}
        for c, b in zip(cols[1 : 1 + len(dtypes)], dense, strict=True):
            row[c] = format_bytes(b)
        row[cols[-2]] = format_bytes(sparse)
        row["ratio"] = f"{dense[0] / sparse:.0f}x"
        rows.append(row)
        records.append({"n": n, "dense_bytes": dense, "window_bytes": sparse})
    return Comparison(
        title=f"Score-matrix memory per sequence length ({heads} head{'s' if heads > 1 else ''})",
        columns=cols,
        rows=rows,
        records=records,
        notes=[
            "dense = n² entries; the window stores n·w − w(w−1)/2 entries (causal, w keys per row)."
        ],
    )


def literature_patterns(n: int = 8192, *, include_dense: bool = True) -> dict[str, Pattern]:
    """The configurations that published comparisons use, at length ``n`` (labels name the paper).

    Full and causal attention, a window of 256 keys (Mistral-style causal and Longformer-style
    two-sided, ``w // 2`` on each side), Longformer's window with 16 global tokens, the Sparse
    Transformer's strided and fixed patterns (stride 128), BigBird-ITC (blocks of 64, 3 window, 2
    global, 3 random blocks), and StreamingLLM (4 sinks, window 256). Families missing from the
    catalog are left out.
    """
    from . import patterns as cat

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
