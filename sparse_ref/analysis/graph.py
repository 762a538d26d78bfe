"""The pattern as a graph on tokens: connected components and diameter (Numba breadth-first
searches and union-find over the CSR arrays).

The Numba kernels live in :mod:`._graph_kernels`, imported on first use so that ``import
sparse_ref`` does not import Numba for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import csgraph

from ..metadata import transpose_csr
from ..pattern import Pattern
from ._structure import _pos_int, _square, _union_bool

__all__ = ["TRANSPOSE_LIMIT", "Diameter", "connected_components", "diameter"]

#: Above this many nonzeros the undirected search scans the rows level by level instead of
#: building the transpose (a scattered O(nnz) pass that dominates for dense-like patterns, whose
#: searches end after one or two levels).
TRANSPOSE_LIMIT = 1 << 24


def _kernels() -> Any:
    """The Numba kernels of the searches (:mod:`._graph_kernels`), imported on first use."""
    from . import _graph_kernels

    return _graph_kernels


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
            t_indptr, self.t_indices, _ = transpose_csr(self.indptr[None], a.indices, self.n)
            self.t_indptr = t_indptr[0]
        self.visited = np.zeros(self.n, dtype=np.int64)  # BFS stamp per node
        self.queue = np.zeros(self.n, dtype=np.int64)
        self.depth = np.zeros(self.n, dtype=np.int64)
        self.stamp = 0

    def bfs(self, source: int) -> tuple[int, int, int]:
        """(eccentricity, a farthest node, nodes reached) of one breadth-first search."""
        if self.scan:
            return _kernels()._bfs_scan(self.indptr, self.indices, source, self.depth)
        self.stamp += 1
        return _kernels()._bfs(
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
    roots = _kernels()._union_find(np.asarray(a.indptr, dtype=np.int64), a.indices)
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
