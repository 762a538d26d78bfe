"""The Numba kernels of :mod:`.graph`: breadth-first searches and union-find over CSR arrays.

Imported by :mod:`.graph` on first use, so that ``import sparse_ref`` does not import Numba for the
analysis functions.
"""

from __future__ import annotations

import numba
import numpy as np


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
