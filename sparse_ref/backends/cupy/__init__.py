"""CuPy GPU backend: the CUDA kernels of ``gpu/kernels`` loaded through ``cupy.RawModule``.

Kernels (one ``.cu`` template each, instantiated per dtype by name; see ``gpu/README.md``):

* ``csr_forward_simt`` (``csr_forward.cu``): SIMT over the pattern's stacked CSR; float64
  accumulates in float64, float32/float16/bfloat16 in float32.
* ``bsr_forward_simt`` (``bsr_forward.cu``): the same SIMT core over a block form.
* ``bsr_forward_mma`` (``bsr_forward.cu``): float16/bfloat16 on tensor cores (``mma.sync.m16n8k16``,
  float32 accumulation) over a block form; needs ``d, d_v <= 128`` and multiples of 8.
* ``bsr_forward_wgmma`` (``bsr_forward_wgmma.cu``, compiled for sm_90a): the same on Hopper's
  warpgroup tensor cores (``wgmma.mma_async``, 128-byte swizzled shared-memory tiles), for head
  dims ``96 < max(d, d_v) <= 128`` on compute capability 9.0 devices (:func:`has_wgmma`).
* ``csr_backward_dq`` and ``csr_backward_dkdv`` (``csr_backward.cu``): the gradients, SIMT in the
  accumulation dtype above: dq (and each row's softmax statistics) over the pattern's rows, then
  dk/dv over its transpose (:func:`device_csr_transpose`), no atomics.
* ``bsr_backward_dq`` and ``bsr_backward_dkdv`` (``bsr_backward_simt.cu``): the same math over a
  block form: dq per query block row, dk/dv per key block column of the transposed block form
  (:func:`device_bsr_transpose`); what :func:`backward` runs for a pattern that carries a block
  form (float16/bfloat16 take the tensor-core backward of ``backward_mma`` where it applies).

:func:`forward` picks: float16/bfloat16 -> ``bsr_forward_wgmma`` on Hopper for head dims in
(96, 128], else ``bsr_forward_mma``, over ``pattern.stacked_bsr(block)`` (built from the CSR when
the pattern has no block form) where the head dims allow, else the SIMT kernels; float32/float64
-> ``bsr_forward_simt`` when the pattern carries a native block form, else ``csr_forward_simt``.
Results are deterministic (fixed reduction order, no atomics). CTAs are launched heaviest row tile
first (per head, by stored entries or blocks), so patterns with a few long rows (global tokens) do
not leave a long tail. Tile shapes: ``SIMT_CONFIGS`` (defaults
``SIMT_CSR_DEFAULT`` / ``SIMT_DEFAULT``) and ``MMA_DEFAULT_MT``, chosen from the H200 measurements
in ``gpu/README.md``.

The package has one module per concern:

* ``runtime``: CuPy and a visible GPU (:func:`is_available`, :func:`array_module`,
  :func:`has_wgmma`);
* ``sources``: the ``.cu`` sources and their compilation (:func:`kernel_source`);
* ``tiles``: tile configurations, shared-memory sizes and kernel name expressions;
* ``metadata``: the pattern's device forms (CSR, block form, transposes, launch orders), cached;
* ``arrays``: CuPy/torch inputs to kernel arrays and back;
* ``forward_launch`` and ``backward_launch``: the launches and the entry points
  :func:`forward` / :func:`backward`; ``backward_bsr_simt`` and ``backward_mma``: the block-form
  backward launches (SIMT; tensor cores);
* ``flops``: useful FLOP counts.

Everything public is re-exported here: ``sparse_ref.backends.cupy.forward`` and the rest.
"""

from __future__ import annotations

from .backward_bsr_simt import backward_bsr, device_bsr_transpose
from .backward_launch import backward, backward_csr
from .backward_mma import backward_bsr_mma
from .flops import useful_backward_flops, useful_flops
from .forward_launch import DEFAULT_BLOCK, forward, forward_bsr, forward_csr
from .metadata import (
    DeviceBSR,
    DeviceCSR,
    bsr_from_csr,
    device_bsr,
    device_csr,
    device_csr_transpose,
    native_block,
    pack_masks,
)
from .runtime import array_module, has_wgmma, is_available
from .sources import compiled, kernel_dir, kernel_source
from .tiles import (
    BWD_TILES,
    MMA_DEFAULT_MT,
    SIMT_CONFIGS,
    SIMT_CSR_DEFAULT,
    SIMT_DEFAULT,
    SimtConfig,
    bsr_kernel_name,
    bwd_kernel_names,
    csr_kernel_name,
    mma_kernel_name,
    wgmma_kernel_name,
)

__all__ = [
    "is_available",
    "array_module",
    "has_wgmma",
    "forward",
    "forward_csr",
    "forward_bsr",
    "DeviceCSR",
    "DeviceBSR",
    "device_csr",
    "device_bsr",
    "bsr_from_csr",
    "kernel_dir",
    "kernel_source",
    "csr_kernel_name",
    "bsr_kernel_name",
    "mma_kernel_name",
    "wgmma_kernel_name",
    "clear_cache",
    "backward",
    "backward_csr",
    "backward_bsr",
    "backward_bsr_mma",
    "device_bsr_transpose",
    "device_csr_transpose",
    "bwd_kernel_names",
    "useful_flops",
    "useful_backward_flops",
    "DEFAULT_BLOCK",
    "SimtConfig",
    "SIMT_CONFIGS",
    "SIMT_DEFAULT",
    "SIMT_CSR_DEFAULT",
    "MMA_DEFAULT_MT",
    "BWD_TILES",
    "native_block",
    "pack_masks",
]


def clear_cache() -> None:
    """Forget the compiled kernels of this process (device copies of a pattern live in the
    pattern's own metadata cache and go with it)."""
    compiled.cache_clear()
