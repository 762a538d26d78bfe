"""The pattern catalog: one short function per family, each returning a ``sparse_ref.Pattern``.

Families are grouped in modules (``local``, ``strided``, ``global_``, ``random_``, ``document``,
...); each module lists its family functions in ``__all__`` and the registry below collects them, so
``available()`` names every family and ``build(family, **params)`` constructs one by name. Every
pattern records its ``family`` and JSON-able ``params`` and ``build(p.family, **p.params) == p``,
including patterns made by the :class:`~sparse_ref.Pattern` algebra (``union``, ``intersection``,
``difference``, ``causal_of``, ``transpose``, ``stack``, ``head``), whose params nest the specs
``{"family": ..., "params": {...}}`` of their operands.

Adding a module: define its families with ``__all__``, star-import it below and append it to
``_MODULES`` (tests check that both were done).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..pattern import Pattern
from . import bigbird as _bigbird
from . import block as _block
from . import composite as _composite
from . import data_dependent as _data_dependent
from . import document as _document
from . import global_ as _global
from . import hierarchical as _hierarchical
from . import local as _local
from . import neighborhood as _neighborhood
from . import random_ as _random
from . import sparse_transformer as _sparse_transformer
from . import strided as _strided
from .bigbird import *  # noqa: F403
from .block import *  # noqa: F403
from .composite import *  # noqa: F403
from .data_dependent import *  # noqa: F403
from .document import *  # noqa: F403  (re-export the family functions; modules named like a
from .global_ import *  # noqa: F403   family, e.g. ``strided``, are shadowed by the function)
from .hierarchical import *  # noqa: F403
from .hierarchical import hierarchical_keys  # a helper, not a family: exported by name
from .local import *  # noqa: F403
from .neighborhood import *  # noqa: F403
from .random_ import *  # noqa: F403
from .sparse_transformer import *  # noqa: F403
from .strided import *  # noqa: F403

_MODULES = [_local, _strided, _global, _random, _document]
_MODULES += [_sparse_transformer, _bigbird, _neighborhood, _composite, _hierarchical]
_MODULES += [_data_dependent, _block]


def _collect_families() -> dict[str, Callable[..., Pattern]]:
    families: dict[str, Callable[..., Pattern]] = {}
    for module in _MODULES:
        for name in module.__all__:
            if name in families:
                raise ImportError(f"family {name!r} is defined twice (again in {module.__name__})")
            families[name] = getattr(module, name)
    return families


_FAMILIES = _collect_families()

# Families made by the Pattern type's algebra (rebuilt from the specs of the operands).
_DERIVED: tuple[str, ...] = ("causal_of", "difference", "head", "intersection")
_DERIVED += ("stack", "transpose", "union")


def available() -> list[str]:
    """Sorted names of the catalog families that :func:`build` constructs from scratch.

    ``build`` also accepts the families made by the ``Pattern`` type: its algebra (``union``,
    ``intersection``, ``difference``, ``causal_of``, ``transpose``, ``stack``, ``head``), which
    wrap other specs.

    Example:
        >>> "causal" in available()
        True
    """
    return sorted(_FAMILIES)


def build(family: str, **params: Any) -> Pattern:
    """The pattern named ``family`` with ``params``: ``build(p.family, **p.params) == p``.

    Raises ``ValueError`` for an unknown family and for ``"custom"`` (a pattern from user
    structure, e.g. ``Pattern.from_dense``, which its params cannot describe).

    Example:
        >>> build("sliding_window", n=4, left=1, right=1) == sliding_window(4, 1, 1)
        True
    """
    if not isinstance(family, str):
        raise TypeError(f"family must be a str (see available()), got {type(family).__name__}")
    if family in _FAMILIES:
        return _FAMILIES[family](**params)
    if family == "custom":
        raise ValueError(
            "family 'custom' (user structure from Pattern.from_dense / from_csr / from_predicate) "
            "cannot be rebuilt from params; keep the Pattern itself or its CSR arrays"
        )
    if family in ("union", "intersection", "difference"):
        a, b = _operands(params, family)
        ops = {"union": Pattern.__or__, "intersection": Pattern.__and__}
        return ops.get(family, Pattern.__sub__)(a, b)
    if family == "causal_of":
        _expect(params, family, {"of", "align"})
        return _from_spec(params["of"], "of").causal(params["align"])
    if family == "transpose":
        _expect(params, family, {"of"})
        return _from_spec(params["of"], "of").transpose()
    if family == "head":
        _expect(params, family, {"h", "of"})
        return _from_spec(params["of"], "of").head(params["h"])
    if family == "stack":
        _expect(params, family, {"heads"})
        heads = params["heads"]
        if not isinstance(heads, list | tuple):
            raise ValueError(f"stack: heads must be a list of specs, got {type(heads).__name__}")
        return Pattern.stack(_from_spec(s, f"heads[{h}]") for h, s in enumerate(heads))
    raise ValueError(
        f"unknown family {family!r}; available: {', '.join(available())} "
        f"(and the algebra families {', '.join(_DERIVED)})"
    )


def _expect(params: dict[str, Any], family: str, keys: set[str]) -> None:
    if set(params) != keys:
        raise ValueError(f"{family}: params must have keys {sorted(keys)}, got {sorted(params)}")


def _operands(params: dict[str, Any], family: str) -> tuple[Pattern, Pattern]:
    _expect(params, family, {"of"})
    of = params["of"]
    if not isinstance(of, list | tuple) or len(of) != 2:
        raise ValueError(f"{family}: of must be a list of two specs, got {of!r}")
    return _from_spec(of[0], "of[0]"), _from_spec(of[1], "of[1]")


def _from_spec(spec: Any, where: str) -> Pattern:
    if not isinstance(spec, dict) or set(spec) != {"family", "params"}:
        raise ValueError(
            f"{where} must be a spec {{'family': ..., 'params': {{...}}}}, got {spec!r}"
        )
    if not isinstance(spec["params"], dict):
        raise ValueError(f"{where}['params'] must be a dict, got {type(spec['params']).__name__}")
    return build(spec["family"], **spec["params"])


__all__ = ["available", "build", "hierarchical_keys", *sorted(_FAMILIES)]
