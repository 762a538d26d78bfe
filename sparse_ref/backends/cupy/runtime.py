"""CuPy and a visible CUDA GPU: the checks every other module of the backend goes through."""

from __future__ import annotations

from typing import Any

__all__ = ["is_available", "array_module", "has_wgmma"]

_INSTALL_HINT = "install sparse-ref[gpu] (CuPy built for your CUDA version, e.g. cupy-cuda13x)"


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            f"the 'cupy' backend needs CuPy, which is not installed: {_INSTALL_HINT}"
        ) from err
    return cupy


def _require() -> Any:
    """CuPy, after checking that a CUDA GPU is visible; ``RuntimeError`` naming what is missing."""
    cp = _import_cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError: no driver, no device
        raise RuntimeError(f"the 'cupy' backend needs a CUDA GPU, but CUDA reports: {err}") from err
    if count == 0:
        raise RuntimeError("the 'cupy' backend needs a CUDA GPU, but none is visible")
    return cp


def has_wgmma() -> bool:
    """True when the current device runs ``sm_90a`` code (Hopper, compute capability 9.0): the
    warpgroup tensor-core forward (``bsr_forward_wgmma.cu``) runs there and nowhere else."""
    return str(_require().cuda.Device().compute_capability) == "90"


def is_available() -> bool:
    """True when CuPy imports and sees at least one CUDA GPU."""
    try:
        _require()
    except RuntimeError:
        return False
    return True


def array_module() -> Any:
    """The array module of this backend (``cupy``); ``RuntimeError`` if CuPy or a GPU is missing."""
    return _require()
