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
kernel calls compile inside it). A function decorated with :func:`tells` (the Numba backend's
``forward`` and ``backward``) prints at most one line per call, naming itself, however many
kernels it compiles; elsewhere each outermost compilation prints one line naming its kernel.
:func:`quiet` silences the lines for a stretch of code (``sparse-ref warmup`` shows a progress bar
instead).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from numba.core import event, types

__all__ = ["install", "quiet", "tells", "message"]

_KIND = "numba:compile"
_F = TypeVar("_F", bound=Callable[..., Any])


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


def _dtypes(args: Any) -> list[str]:
    """The distinct element types of the floating-point array arguments, in order (``float32``);
    of all array arguments when none is floating-point."""
    arrays = [t.dtype for t in args or () if isinstance(t, types.Array)]
    floats = [t for t in arrays if isinstance(t, types.Float)] or arrays
    return list(dict.fromkeys(str(t) for t in floats))


class _Notice(event.Listener):
    """Prints :func:`message` at the start of an outermost compilation of a ``sparse_ref`` kernel."""

    def __init__(self) -> None:
        self._local = threading.local()  # compilation depth and quiet count, per thread

    def _get(self, name: str) -> int:
        return int(getattr(self._local, name, 0))

    def _add(self, name: str, step: int) -> None:
        setattr(self._local, name, self._get(name) + step)

    def on_start(self, ev: event.Event) -> None:
        depth = self._get("depth")
        self._add("depth", 1)
        if depth or self._get("quiet"):
            return
        data = ev.data or {}
        func = getattr(data.get("dispatcher"), "py_func", None)
        if func is None or not getattr(func, "__module__", "").startswith("sparse_ref."):
            return
        group = getattr(self._local, "group", None)  # [what, told] of the :func:`tells` call
        if group is None:
            line = message(func.__name__.lstrip("_"), _dtypes(data.get("args")))
        elif group[1]:
            return
        else:
            group[1] = True
            line = message(group[0], _dtypes(data.get("args")), plural=True)
        print(line, file=sys.stderr, flush=True)

    def on_end(self, ev: event.Event) -> None:
        self._add("depth", -1)


_NOTICE = _Notice()
_installed = False
_lock = threading.Lock()


def install() -> None:
    """Register the listener with Numba (once per process; later calls do nothing)."""
    global _installed
    with _lock:
        if not _installed:
            event.register(_KIND, _NOTICE)
            _installed = True


def tells(what: str) -> Callable[[_F], _F]:
    """Decorate a function so that a call of it prints at most one line, naming ``what`` ("the
    forward kernels"), whatever kernels it compiles."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            local = _NOTICE._local
            outer = getattr(local, "group", None)
            if outer is not None:  # inside another told call: that one speaks
                return fn(*args, **kwargs)
            local.group = [what, False]
            try:
                return fn(*args, **kwargs)
            finally:
                local.group = None

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No line from compilations started in this thread inside the ``with`` block."""
    _NOTICE._add("quiet", 1)
    try:
        yield
    finally:
        _NOTICE._add("quiet", -1)
