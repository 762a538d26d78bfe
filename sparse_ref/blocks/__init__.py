"""Block-sparse storage of attention patterns (BSR): the :class:`BlockSparse` type and its builders.

Three modules, three jobs: :mod:`~sparse_ref.blocks.form` holds the storage type (``(bq, bk)``
blocks stored per block row, each full or with a deduplicated bool mask; the layout is described
there), its checks and its canonical form; :mod:`~sparse_ref.blocks.build` makes block forms from
block layouts (:func:`from_layout`), any token CSR (:func:`from_csr`), heads (:func:`stack`) and
the algebra (:func:`combine`); :mod:`~sparse_ref.blocks.terms` from unions of :class:`Term`
(:func:`from_terms`), the description the catalog gives its local families
(``sparse_ref.patterns.causal(..., block=b)`` and the like). Everything public is re-exported here.

Example:
    >>> bs = from_terms([Term(lo_d=-3, hi_d=0)], (10, 10), block=4)  # i - 4 < j <= i
    >>> bs.grid, bs.nblocks, bs.full.tolist(), bs.nnz
    ((3, 3), 5, [False, False, False, False, False], 34)
"""

from __future__ import annotations

import warnings
from typing import Any

from ..checks import block_param, check_block
from .build import combine, from_csr, from_layout, stack
from .form import MASK_LIMIT, BlockSparse, StackedBSR
from .terms import Term, from_terms

__all__ = [
    "BlockSparse",
    "StackedBSR",
    "MASK_LIMIT",
    "check_block",
    "block_param",
    "from_layout",
    "from_csr",
    "from_terms",
    "stack",
    "combine",
    "Term",
]

# The local families' block builders that lived here until the catalog described each family once
# (as a list of terms, in sparse_ref/patterns): kept as deprecated aliases for one release.
_MOVED_FAMILIES = (
    "causal",
    "causal_sliding_window",
    "dense",
    "global_local",
    "prefix_lm",
    "sinks",
    "sliding_window",
)


def __getattr__(name: str) -> Any:
    """``blocks.<family>(..., block=b)``, deprecated: ``patterns.<family>(..., block=b).block_form``."""
    if name not in _MOVED_FAMILIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"sparse_ref.blocks.{name}(..., block=b) is deprecated; use "
        f"sparse_ref.patterns.{name}(..., block=b).block_form",
        DeprecationWarning,
        stacklevel=2,
    )
    from .. import patterns  # the catalog sits above this module; only this deprecated path climbs

    family = getattr(patterns, name)

    def build(*args: Any, block: Any, **kwargs: Any) -> BlockSparse:
        return family(*args, block=check_block(block), **kwargs).block_form  # type: ignore[no-any-return]

    build.__name__ = name
    return build
