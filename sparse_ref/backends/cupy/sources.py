"""The CUDA C sources of ``gpu/kernels`` and their compilation through ``cupy.RawModule``.

Sources are read from the installed package (``sparse_ref/_gpu_kernels``, mapped from
``gpu/kernels`` in the wheel) or, in a source checkout, from ``<repo>/gpu/kernels``; each
instantiation is compiled once per process (and cached on disk by CuPy).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from .runtime import _require

__all__ = ["kernel_dir", "kernel_source", "compiled", "ARCH_OPTIONS"]


@functools.cache
def kernel_dir() -> Path:
    """Directory holding the ``.cu`` sources: the installed copy, else the source checkout's."""
    pkg = Path(__file__).resolve().parents[2]  # sparse_ref/
    for cand in (pkg / "_gpu_kernels", pkg.parent / "gpu" / "kernels"):
        if (cand / "csr_forward.cu").is_file():
            return cand
    raise RuntimeError(
        f"CUDA kernel sources not found (looked in {pkg / '_gpu_kernels'} and "
        f"{pkg.parent / 'gpu' / 'kernels'}); reinstall sparse-ref"
    )


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


@functools.cache
def kernel_source(name: str) -> str:
    """The source of ``gpu/kernels/<name>`` with its local ``#include "..."`` files inlined once
    each, so the text alone (CuPy's cache key) determines the binary."""
    root = kernel_dir()
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""
        seen.add(fname)
        text = (root / fname).read_text()
        text = text.replace("#pragma once", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


#: NVRTC options beyond ``-std=c++17`` per source. wgmma needs the architecture-specific sm_90a
#: target; NVRTC compiles for it even with the ``-arch=sm_90`` that CuPy appends.
ARCH_OPTIONS = {"bsr_forward_wgmma.cu": ("-arch=sm_90a",)}


@functools.cache
def compiled(file: str, names: tuple[str, ...], smem: int) -> tuple[Any, ...]:
    """The kernels ``names`` (C++ name expressions) of ``gpu/kernels/<file>``, compiled together
    in one NVRTC run, each allowed ``smem`` bytes of dynamic shared memory."""
    cp = _require()
    options = ("-std=c++17", *ARCH_OPTIONS.get(file, ()))
    module = cp.RawModule(code=kernel_source(file), options=options, name_expressions=names)
    kerns = tuple(module.get_function(n) for n in names)
    if smem > 48 * 1024:
        for kern in kerns:
            kern.max_dynamic_shared_size_bytes = smem
    return kerns


def kernel(file: str, name: str, smem: int) -> Any:
    """One kernel of ``gpu/kernels/<file>`` (see :func:`compiled`)."""
    return compiled(file, (name,), smem)[0]
