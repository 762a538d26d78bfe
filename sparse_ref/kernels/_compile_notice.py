"""One line on stderr when a kernel of the package compiles, so that a first call does not look hung.

Numba compiles a kernel on its first call with new argument types (15-30 s for the attention
kernels on 2 cores) and stores the machine code in its on-disk cache (``cache=True``); later
processes load it in well under a second. Loading from the cache fires no event; compiling fires
Numba's ``"numba:compile"`` event (``numba.core.event``), which the listener installed by
:func:`install` turns into one line on stderr::

    sparse-ref: compiling the backward kernels (float32) with Numba, once: later calls and
    processes load them from Numba's on-disk cache; `sparse-ref warmup` compiles every kernel
    ahead of time

Only kernels defined in ``sparse_ref`` are told, and only outermost compilations (the helpers a
kernel calls compile inside it). A function decorated with :func:`tells` (``sparse_ref.attention``
and ``attention_backward``, and the Numba backend's ``forward`` and ``backward``) prints at most
one line per call, naming itself and the dtype of its first array argument, however many kernels
it compiles (the form rule's, the metadata's, the attention kernels); the outermost decorated call
speaks. Elsewhere each outermost compilation prints one line naming its kernel. :func:`quiet`
silences the lines for a stretch of code (``sparse-ref warmup`` shows a progress bar instead).

Numba is imported by :func:`install` only: :func:`tells` and :func:`quiet` keep their state in a
thread-local, so ``sparse_ref.api`` can use them without importing Numba.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["install", "quiet", "tells", "message"]

_KIND = "numba:compile"
_F = TypeVar("_F", bound=Callable[..., Any])
#: per thread: ``depth`` of nested compilations, ``quiet`` count, ``group`` = [what, dtype, told]
#: of the outermost :func:`tells` call in progress
_local = threading.local()
_installed = False
_lock = threading.Lock()


def message(what: str, dtypes: list[str], plural: bool = False) -> str:
    """The line printed when ``what`` (a kernel's name, or "the forward kernels") compiles for
    arrays of ``dtypes``."""
    if dtypes:
        what = f"{what} ({', '.join(dtypes)})"
    it = "them" if plural else "it"
    return (
        f"sparse-ref: compiling {what} with Numba, once: later calls and processes load {it} from "
        "Numba's on-disk cache; `sparse-ref warmup` compiles every kernel ahead of time"
    )


def _count(name: str) -> int:
    return int(getattr(_local, name, 0))


def _add(name: str, step: int) -> None:
    setattr(_local, name, _count(name) + step)


def _kernel_dtypes(args: Any) -> list[str]:
    """The distinct element types of the floating-point array arguments of a compilation, in
    order (``float32``); of all array arguments when none is floating-point."""
    from numba.core import types

    arrays = [t.dtype for t in args or () if isinstance(t, types.Array)]
    floats = [t for t in arrays if isinstance(t, types.Float)] or arrays
    return list(dict.fromkeys(str(t) for t in floats))


def _on_start(data: Any) -> None:
    """A compilation starts: print its line if it is the one to tell."""
    depth = _count("depth")
    _add("depth", 1)
    if depth or _count("quiet"):
        return
    data = data or {}
    func = getattr(data.get("dispatcher"), "py_func", None)
    if func is None or not getattr(func, "__module__", "").startswith("sparse_ref."):
        return
    group = getattr(_local, "group", None)
    if group is None:
        line = message(func.__name__.lstrip("_"), _kernel_dtypes(data.get("args")))
    elif group[2]:
        return
    else:
        group[2] = True
        dtypes = [group[1]] if group[1] else _kernel_dtypes(data.get("args"))
        line = message(group[0], dtypes, plural=True)
    print(line, file=sys.stderr, flush=True)


def install() -> None:
    """Register the listener with Numba's ``"numba:compile"`` event (once per process; later
    calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        from numba.core import event

        class Notice(event.Listener):
            def on_start(self, ev: event.Event) -> None:
                _on_start(ev.data)

            def on_end(self, ev: event.Event) -> None:
                _add("depth", -1)

        event.register(_KIND, Notice())
        _installed = True


def _first_dtype(args: tuple[Any, ...]) -> str | None:
    """The dtype name of the first argument that has one (``q`` for the attention calls)."""
    for a in args:
        dtype = getattr(a, "dtype", None)
        if dtype is not None:
            return str(getattr(dtype, "name", dtype))
    return None


def tells(what: str) -> Callable[[_F], _F]:
    """Decorate a function so that a call of it prints at most one line, naming ``what`` ("the
    forward kernels") and the dtype of its first array argument, whatever kernels it compiles.
    A call inside another decorated call prints nothing of its own: the outer one speaks."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(_local, "group", None) is not None:
                return fn(*args, **kwargs)
            _local.group = [what, _first_dtype(args), False]
            try:
                return fn(*args, **kwargs)
            finally:
                _local.group = None

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No line from compilations started in this thread inside the ``with`` block."""
    _add("quiet", 1)
    try:
        yield
    finally:
        _add("quiet", -1)
