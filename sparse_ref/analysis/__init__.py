"""What a pattern costs and how far information travels through it.

Everything here works on the pattern's structure only (no attention is computed) and never builds a
dense ``n x n`` array:

- :func:`density` and :func:`cost` (:mod:`.metrics`): FLOPs (``4 * nnz * d`` forward), score-matrix
  memory and the storage bytes of the CSR and BSR forms, next to the dense numbers;
- :func:`receptive_field` (:mod:`.receptive`): which input tokens an output token depends on after
  a stack of layers, by sparse boolean products ``e_i @ A_L @ ... @ A_1`` (a hybrid stack is a list
  of per-layer patterns);
- :func:`connected_components` and :func:`diameter` (:mod:`.graph`, Numba kernels): the pattern as
  a graph on tokens (``scipy.sparse.csgraph``; breadth-first search from sampled sources for large
  ``n``);
- :func:`compare` and :func:`memory_table` (:mod:`.tables`; :mod:`.presets` holds
  :data:`COMPLEXITY` and :func:`literature_patterns`): the tables of the literature (complexity,
  density, memory, receptive field, connectivity, diameter), printed by ``sparse-ref patterns
  compare``.

Conventions. A pattern with several heads is analysed as the union of its heads (information flows
through any head). Graph functions need a square pattern (``n_q == n_k``: token ``i`` of one layer
is token ``i`` of the next). By default the graph is *undirected*: tokens ``i`` and ``j`` are
adjacent when either attends to the other, as in the graph view of BigBird (Zaheer et al. 2020,
§3); pass ``directed=True`` for the "i reads j" digraph.
"""

from __future__ import annotations

from .graph import TRANSPOSE_LIMIT, Diameter, connected_components, diameter
from .metrics import Cost, cost, dense_score_bytes, density
from .presets import COMPLEXITY, literature_patterns
from .receptive import ReceptiveField, default_rows, receptive_field
from .tables import Comparison, compare, format_bytes, memory_table

__all__ = [
    "TRANSPOSE_LIMIT",
    "Comparison",
    "Cost",
    "Diameter",
    "ReceptiveField",
    "COMPLEXITY",
    "compare",
    "connected_components",
    "cost",
    "default_rows",
    "dense_score_bytes",
    "density",
    "diameter",
    "format_bytes",
    "literature_patterns",
    "memory_table",
    "receptive_field",
]
