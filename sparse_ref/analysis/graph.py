"""The pattern as a graph on tokens: connected components and diameter (Numba breadth-first
searches and union-find over the CSR arrays)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
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
