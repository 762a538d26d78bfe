"""CuPy GPU backend: the CUDA kernels of ``gpu/kernels`` loaded through ``cupy.RawModule``.

Kernels (one ``.cu`` template each, instantiated per dtype by name; see ``gpu/README.md``):

* ``csr_forward_simt`` (``csr_forward.cu``): SIMT over the pattern's stacked CSR; float64
  accumulates in float64, float32/float16/bfloat16 in float32.
* ``bsr_forward_simt`` (``bsr_forward.cu``): the same SIMT core over a block form.
* ``bsr_forward_mma`` (``bsr_forward.cu``): float16/bfloat16 on tensor cores (``mma.sync.m16n8k16``,
  float32 accumulation) over a block form; needs ``d, d_v <= 128`` and multiples of 8.
* ``csr_backward_dq`` and ``csr_backward_dkdv`` (``csr_backward.cu``): the gradients, SIMT in the
  accumulation dtype above: dq (and each row's softmax statistics) over the pattern's rows, then
  dk/dv over its transpose (:func:`device_csr_transpose`), no atomics. Every pattern runs them on
  its token CSR, also one that carries a block form (there is no BSR backward kernel).

:func:`forward` picks: float16/bfloat16 -> ``bsr_forward_mma`` over ``pattern.stacked_bsr(block)``
(built from the CSR when the pattern has no block form) where the head dims allow, else the SIMT
kernels; float32/float64 -> ``bsr_forward_simt`` when the pattern carries a native block form,
else ``csr_forward_simt``. Results are deterministic (fixed reduction order, no atomics). CTAs are
launched heaviest row tile first (per head, by stored entries or blocks), so patterns with a few
long rows (global tokens) do not leave a long tail. Tile shapes: ``SIMT_CONFIGS`` (defaults
``SIMT_CSR_DEFAULT`` / ``SIMT_DEFAULT``) and ``MMA_DEFAULT_MT``, chosen from the H200 measurements
in ``gpu/README.md``.

Sources are read from the installed package (``sparse_ref/_gpu_kernels``, mapped from
``gpu/kernels`` in the wheel) or, in a source checkout, from ``<repo>/gpu/kernels``; each
instantiation is compiled once per process (and cached on disk by CuPy).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "is_available",
    "array_module",
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
    "clear_cache",
    "backward",
    "backward_csr",
    "device_csr_transpose",
    "bwd_kernel_names",
    "useful_flops",
    "useful_backward_flops",
]

_INSTALL_HINT = "install sparse-ref[gpu] (CuPy built for your CUDA version, e.g. cupy-cuda13x)"

#: element dtype name -> (C++ element type, C++ accumulator type)
_CTYPES = {
    "float64": ("double", "double"),
    "float32": ("float", "float"),
    "float16": ("sparse_ref::f16_t", "float"),
    "bfloat16": ("sparse_ref::bf16_t", "float"),
}
_SIMT_DMAX = (16, 32, 64, 128, 192, 256)
_MMA_D = (32, 64, 96, 128)
#: block used for float16/bfloat16 when the pattern has no native block form
DEFAULT_BLOCK = (64, 64)


# ------------------------------------------------------------------------------ availability
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


# ------------------------------------------------------------------------------ sources
@functools.cache
def kernel_dir() -> Path:
    """Directory holding the ``.cu`` sources: the installed copy, else the source checkout's."""
    pkg = Path(__file__).resolve().parent.parent
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


class SimtConfig(NamedTuple):
    """SIMT tile shape: ``16*tm`` query rows x ``16*tn`` keys per CTA of 256 threads; ``split``: K
    and V in separate shared buffers (one CTA per SM) rather than one reused buffer (two per SM)."""

    tm: int
    tn: int
    split: bool


#: name -> SIMT configuration (float32/float16/bfloat16 accumulate in float32)
SIMT_CONFIGS = {"4x4": SimtConfig(4, 4, False), "8x4split": SimtConfig(8, 4, True)}
#: default SIMT configuration for float32-accumulating kernels with head dims <= 128
SIMT_DEFAULT = "8x4split"
#: default for the CSR kernel (its bitmap building favours two CTAs per SM)
SIMT_CSR_DEFAULT = "4x4"
_F64_CONFIG = SimtConfig(2, 2, False)


def _simt_config(dtype: str, dmax: int, name: str | None, csr: bool = False) -> SimtConfig:
    if dtype == "float64":
        return _F64_CONFIG
    name = name or (SIMT_CSR_DEFAULT if csr else SIMT_DEFAULT if dmax <= 128 else "4x4")
    if name not in SIMT_CONFIGS:
        raise ValueError(f"unknown SIMT configuration {name!r}; choose from {sorted(SIMT_CONFIGS)}")
    cfg = SIMT_CONFIGS[name]
    if _simt_smem(dtype, dmax, cfg) > 227 * 1024:
        raise ValueError(f"SIMT configuration {name!r} does not fit shared memory for d <= {dmax}")
    return cfg


def _simt_dmax(d: int, dv: int) -> int:
    need = max(d, dv)
    for dm in _SIMT_DMAX:
        if need <= dm:
            return dm
    raise ValueError(
        f"the cupy backend supports head dims up to {_SIMT_DMAX[-1]}, got d={d}, d_v={dv}"
    )


def _mma_d(d: int, dv: int) -> int | None:
    if d % 8 or dv % 8:
        return None
    need = max(d, dv)
    for dm in _MMA_D:
        if need <= dm:
            return dm
    return None


def _simt_name(kernel: str, dtype: str, dmax: int, cfg: SimtConfig) -> str:
    t, a = _CTYPES[dtype]
    split = "true" if cfg.split else "false"
    return f"sparse_ref::{kernel}<{t}, {a}, {cfg.tm}, {cfg.tn}, {dmax}, {split}>"


def csr_kernel_name(dtype: str, dmax: int, config: str | None = None) -> str:
    return _simt_name("csr_forward_simt", dtype, dmax, _simt_config(dtype, dmax, config, csr=True))


def bsr_kernel_name(dtype: str, dmax: int, config: str | None = None) -> str:
    return _simt_name("bsr_forward_simt", dtype, dmax, _simt_config(dtype, dmax, config))


def mma_kernel_name(dtype: str, d: int, warps: int, mt: int = 1) -> str:
    return f"sparse_ref::bsr_forward_mma<{_CTYPES[dtype][0]}, {d}, {warps}, {mt}>"


def _simt_smem(dtype: str, dmax: int, cfg: SimtConfig) -> int:
    size = 8 if dtype == "float64" else 4
    vw = 16 // size
    bm, bn = 16 * cfg.tm, 16 * cfg.tn
    ld, ldp = dmax + vw, bn + vw
    tiles = (bm * ld + (2 if cfg.split else 1) * bn * ld + bm * ldp) * size
    return tiles + 2 * bm * (bn // 32) * 4 + bm * (bn + 1) * 4 + bm * 20


def _mma_smem(d: int, warps: int, mt: int) -> int:
    return (16 * warps * mt + 4 * 64) * (d + 8) * 2


def _mma_shape(bq: int, D: int, warps: int | None, mt: int | None) -> tuple[int, int]:
    """CTA shape ``(warps, m-tiles per warp)`` of the tensor-core kernel."""
    if mt is None:
        mt = MMA_DEFAULT_MT if (bq >= 128 and D == 128) else 1
    if warps is None:
        warps = 4 if mt == 2 else (8 if bq >= 128 else 4)
    return warps, mt


#: m-tiles per warp of the tensor-core kernel for blocks of 128 rows (1: Q in registers, 8 warps;
#: 2: two m-tiles share K/V fragments, 4 warps)
MMA_DEFAULT_MT = 2


@functools.cache
def _kernel(file: str, name: str, smem: int) -> Any:
    cp = _require()
    module = cp.RawModule(
        code=kernel_source(file), options=("-std=c++17",), name_expressions=[name]
    )
    kern = module.get_function(name)
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    return kern


@functools.cache
def _kernels(file: str, names: tuple[str, ...], smem: int) -> tuple[Any, ...]:
    """Several instantiations of one source, compiled together (one NVRTC run)."""
    cp = _require()
    module = cp.RawModule(code=kernel_source(file), options=("-std=c++17",), name_expressions=names)
    kerns = tuple(module.get_function(n) for n in names)
    if smem > 48 * 1024:
        for kern in kerns:
            kern.max_dynamic_shared_size_bytes = smem
    return kerns


def clear_cache() -> None:
    """Forget compiled kernels and device copies of patterns."""
    _kernel.cache_clear()
    _kernels.cache_clear()
    _PATTERN_CACHE.clear()


# ------------------------------------------------------------------------------ patterns
class DeviceCSR(NamedTuple):
    """A stacked CSR on the device: ``indptr (P, n_q+1)`` int64 absolute, ``indices`` int32;
    ``orders`` caches, per row-tile height, each head's tiles sorted by entries (heaviest first)."""

    indptr: Any
    indices: Any
    n_q: int
    n_k: int
    orders: dict[Any, Any]


class DeviceBSR(NamedTuple):
    """A block form on the device (see ``bsr_forward.cu``): ``indptr (P, nbq+1)`` int64,
    ``bcols`` and ``mask_index`` int32 per stored block, ``mbits (n_partial, bq, mwords)`` uint32
    packed masks."""

    block: tuple[int, int]
    indptr: Any
    bcols: Any
    mask_index: Any
    mbits: Any
    n_q: int
    n_k: int
    order: Any  # (P, nbq) int32: each head's block rows, most stored blocks first


def device_csr(indptr: Any, indices: Any, n_q: int, n_k: int) -> DeviceCSR:
    """Upload a stacked CSR (NumPy or CuPy arrays) in the dtypes the kernels read."""
    cp = _require()
    if n_k > np.iinfo(np.int32).max:
        raise ValueError(f"the cupy backend needs n_k < 2**31, got {n_k}")
    ip = cp.ascontiguousarray(cp.asarray(indptr, dtype=cp.int64))
    if ip.ndim != 2 or ip.shape[1] != n_q + 1:
        raise ValueError(f"indptr must have shape (P, n_q + 1) = (P, {n_q + 1}), got {ip.shape}")
    ix = cp.ascontiguousarray(cp.asarray(indices, dtype=cp.int32))
    if ix.size == 0:
        ix = cp.zeros(1, dtype=cp.int32)  # never read; keeps a valid pointer
    return DeviceCSR(ip, ix, int(n_q), int(n_k), {})


def _heaviest_first(indptr: np.ndarray, rows: int) -> np.ndarray:
    """``(P, ceil(n/rows))`` int32: per head, the groups of ``rows`` consecutive rows of ``indptr``
    ordered by their number of entries, largest first (ties by position)."""
    n = indptr.shape[1] - 1
    starts = np.arange(0, n, rows)
    counts = indptr[:, np.minimum(starts + rows, n)] - indptr[:, starts]
    return np.argsort(-counts, axis=1, kind="stable").astype(np.int32)


def _csr_order(csr: DeviceCSR, rows: int) -> Any:
    if rows not in csr.orders:
        cp = _require()
        host = csr.indptr.get()
        csr.orders[rows] = cp.asarray(np.ascontiguousarray(_heaviest_first(host, rows)))
    return csr.orders[rows]


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """``(n, bq, bk)`` bool -> ``(n, bq, ceil(bk/32))`` uint32: key ``j`` is bit ``j % 32`` of
    word ``j // 32``."""
    masks = np.asarray(masks, dtype=bool)
    n, bq, bk = masks.shape
    words = -(-bk // 32)
    padded = np.zeros((n, bq, words * 32), dtype=bool)
    padded[:, :, :bk] = masks
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32).reshape(n, bq, words)


def device_bsr(
    block: tuple[int, int],
    indptr: Any,
    indices: Any,
    mask_index: Any,
    masks: Any,
    n_q: int,
    n_k: int,
    *,
    packed: bool = False,
) -> DeviceBSR:
    """Upload a block form (``masks``: bool ``(n_partial, bq, bk)``, or packed if ``packed``)."""
    cp = _require()
    bq, bk = int(block[0]), int(block[1])
    if bq < 1 or bk < 1:
        raise ValueError(f"block sizes must be positive, got {block}")
    nbq = -(-n_q // bq)
    ip = cp.ascontiguousarray(cp.asarray(indptr, dtype=cp.int64))
    if ip.ndim != 2 or ip.shape[1] != nbq + 1:
        raise ValueError(
            f"block indptr must have shape (P, nbq + 1) = (P, {nbq + 1}), got {ip.shape}"
        )
    bc = cp.ascontiguousarray(cp.asarray(indices, dtype=cp.int32))
    mi = cp.ascontiguousarray(cp.asarray(mask_index, dtype=cp.int32))
    if packed:
        mb = cp.ascontiguousarray(cp.asarray(masks, dtype=cp.uint32))
    else:
        m = masks.get() if hasattr(masks, "get") else np.asarray(masks)
        m = m.reshape(-1, bq, bk) if m.size else np.zeros((0, bq, bk), dtype=bool)
        mb = cp.asarray(pack_masks(m))
    words = -(-bk // 32)
    if mb.size == 0:
        mb = cp.zeros((1, bq, words), dtype=cp.uint32)
    if bc.size == 0:
        bc = cp.zeros(1, dtype=cp.int32)
        mi = cp.zeros(1, dtype=cp.int32)
    order = cp.asarray(np.ascontiguousarray(_heaviest_first(ip.get(), 1)))
    return DeviceBSR((bq, bk), ip, bc, mi, mb, int(n_q), int(n_k), order)


def bsr_from_csr(
    indptr: np.ndarray, indices: np.ndarray, shape: tuple[int, int], block: tuple[int, int]
) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Block form of a stacked CSR: ``(block, indptr (P, nbq+1) int64, bcols int32, mask_index
    int32 (-1 = full), masks (n_partial, bq, bk) bool)``; a block is full when every in-range entry
    is allowed. NumPy, O(nnz log nnz): meant for patterns without a native block form."""
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices)
    n_q, n_k = shape
    bq, bk = int(block[0]), int(block[1])
    nbq, nbk = -(-n_q // bq), -(-n_k // bk)
    ips, cols_all, mis, masks_all = [], [], [], []
    nblocks = npartial = 0
    for p in range(indptr.shape[0]):
        lo, hi = indptr[p, 0], indptr[p, -1]
        rows = np.repeat(np.arange(n_q, dtype=np.int64), np.diff(indptr[p]))
        cols = indices[lo:hi].astype(np.int64)
        bi, bj = rows // bq, cols // bk
        uniq, inv, counts = np.unique(bi * nbk + bj, return_inverse=True, return_counts=True)
        ubi, ubj = uniq // nbk, uniq % nbk
        size = np.minimum(bq, n_q - ubi * bq) * np.minimum(bk, n_k - ubj * bk)
        full = counts == size
        pid = np.cumsum(~full) - 1
        mi = np.where(full, -1, pid + npartial).astype(np.int32)
        masks = np.zeros((int((~full).sum()), bq, bk), dtype=bool)
        sel = ~full[inv]
        masks[pid[inv[sel]], rows[sel] - bi[sel] * bq, cols[sel] - bj[sel] * bk] = True
        ips.append(np.searchsorted(ubi, np.arange(nbq + 1)) + nblocks)
        cols_all.append(ubj.astype(np.int32))
        mis.append(mi)
        masks_all.append(masks)
        nblocks += len(uniq)
        npartial += len(masks)
    return (
        (bq, bk),
        np.stack(ips).astype(np.int64),
        np.concatenate(cols_all),
        np.concatenate(mis),
        np.concatenate(masks_all) if masks_all else np.zeros((0, bq, bk), dtype=bool),
    )


_PATTERN_CACHE: OrderedDict[tuple[int, str, Any], tuple[Any, Any]] = OrderedDict()
_PATTERN_CACHE_SIZE = 8


def _cached(pattern: Any, kind: str, key: Any, build: Any) -> Any:
    """Device form of ``pattern`` (LRU by identity; Patterns are immutable)."""
    ck = (id(pattern), kind, key)
    hit = _PATTERN_CACHE.get(ck)
    if hit is not None and hit[0] is pattern:
        _PATTERN_CACHE.move_to_end(ck)
        return hit[1]
    value = build()
    _PATTERN_CACHE[ck] = (pattern, value)
    while len(_PATTERN_CACHE) > _PATTERN_CACHE_SIZE:
        _PATTERN_CACHE.popitem(last=False)
    return value


def native_block(pattern: Any) -> tuple[int, int] | None:
    """The block shape of a pattern built from blocks (``Pattern.block``), or None."""
    block = pattern.block
    return None if block is None else (int(block[0]), int(block[1]))


def _pattern_csr(pattern: Any) -> DeviceCSR:
    def build() -> DeviceCSR:
        csr = pattern.stacked_csr()
        n_q, n_k = pattern.shape
        return device_csr(csr[0], csr[1], n_q, n_k)

    return _cached(pattern, "csr", None, build)


def _pattern_bsr(pattern: Any, block: tuple[int, int]) -> DeviceBSR:
    def build() -> DeviceBSR:
        n_q, n_k = pattern.shape
        if hasattr(pattern, "stacked_bsr"):
            blk, ip, ix, mi, masks = pattern.stacked_bsr(block=block)
        else:
            csr = pattern.stacked_csr()
            blk, ip, ix, mi, masks = bsr_from_csr(csr[0], csr[1], (n_q, n_k), block)
        return device_bsr(tuple(blk), ip, ix, mi, masks, n_q, n_k)

    return _cached(pattern, "bsr", tuple(block), build)


# ------------------------------------------------------------------------------ arrays
def _dtype_name(x: Any) -> str:
    name = str(x.dtype)
    return name.replace("torch.", "")


def _to_kernel_arrays(arrays: Sequence[Any], dtype: str | None) -> tuple[list[Any], str, Any]:
    """CuPy views of the arrays (q, k, v, ...; bfloat16 as uint16), their dtype name, and a
    converter for outputs."""
    cp = _require()
    q = arrays[0]
    if type(q).__module__.startswith("torch"):
        import torch

        name = _dtype_name(q)
        views = []
        for x in arrays:
            x = x.contiguous()
            if x.dtype == torch.bfloat16:
                x = x.view(torch.int16)
            views.append(cp.from_dlpack(x))
        if name == "bfloat16":
            views = [x.view(cp.uint16) for x in views]

        def back(a: Any) -> Any:
            if a.dtype == cp.uint16:  # bfloat16 bits; DLPack moves them as int16
                return torch.from_dlpack(a.view(cp.int16)).view(torch.bfloat16)
            return torch.from_dlpack(a)

        return [_aligned(x) for x in views], name, back
    arrs = [_aligned(cp.ascontiguousarray(x)) for x in arrays]
    name = dtype or _dtype_name(arrs[0])
    if name == "bfloat16":
        if str(arrs[0].dtype) == "bfloat16":  # a CuPy with ml_dtypes bfloat16
            arrs = [x.view(cp.uint16) for x in arrs]

            def back(a: Any) -> Any:
                return a.view(q.dtype) if a.dtype == cp.uint16 else a

            return arrs, name, back
        if arrs[0].dtype != cp.uint16:
            raise TypeError("dtype='bfloat16' needs uint16 views of the bfloat16 buffers")
    elif name not in _CTYPES:
        raise TypeError(f"the cupy backend supports {sorted(_CTYPES)}, got {name}")
    return arrs, name, lambda a: a


def _aligned(x: Any) -> Any:
    """``x`` itself when its buffer is 16-byte aligned (the kernels' vector copies), else a copy."""
    return x if x.data.ptr % 16 == 0 else x.copy()


def _geometry(q: Any, k: Any, v: Any) -> tuple[int, int, int, int, int, int, int]:
    B, H, n_q, d = (int(s) for s in q.shape)
    Hkv, n_k, dv = int(k.shape[1]), int(k.shape[2]), int(v.shape[3])
    return B, H, Hkv, n_q, n_k, d, dv


def _outputs(cp: Any, q: Any, dtype: str, B: int, H: int, n_q: int, dv: int) -> tuple[Any, Any]:
    out = cp.empty((B, H, n_q, dv), dtype=q.dtype)
    lse = cp.empty((B, H, n_q), dtype=cp.float64 if dtype == "float64" else cp.float32)
    return out, lse


def _scalar(dtype: str, x: float) -> Any:
    return np.float64(x) if dtype == "float64" else np.float32(x)


# ------------------------------------------------------------------------------ launches
def forward_csr(
    q: Any,
    k: Any,
    v: Any,
    csr: DeviceCSR,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    v_finite: bool = True,
    simt: str | None = None,
) -> tuple[Any, Any]:
    """``csr_forward_simt`` on CuPy arrays (bfloat16 as uint16 with ``dtype='bfloat16'``)."""
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv = _geometry(q, k, v)
    out, lse = _outputs(cp, q, dtype, B, H, n_q, dv)
    if out.size == 0 and lse.size == 0:
        return out, lse
    dmax = _simt_dmax(d, dv)
    cfg = _simt_config(dtype, dmax, simt, csr=True)
    smem = _simt_smem(dtype, dmax, cfg)
    kern = _kernel("csr_forward.cu", _simt_name("csr_forward_simt", dtype, dmax, cfg), smem)
    bm = 16 * cfg.tm
    P = int(csr.indptr.shape[0])
    args = (
        q, k, v, out, lse, csr.indptr, csr.indices, _csr_order(csr, bm),
        np.int32(H), np.int32(Hkv), np.int32(P), np.int32(n_q), np.int32(n_k), np.int32(d),
        np.int32(dv), _scalar(dtype, scale), _scalar(dtype, softcap or 1.0),
        np.int32(softcap is not None), np.int32(bool(v_finite)),
    )  # fmt: skip
    kern((H * -(-n_q // bm), B), (256,), args, shared_mem=smem)
    return out, lse


def forward_bsr(
    q: Any,
    k: Any,
    v: Any,
    bsr: DeviceBSR,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    v_finite: bool = True,
    mma: bool | None = None,
    warps: int | None = None,
    mt: int | None = None,
    simt: str | None = None,
) -> tuple[Any, Any]:
    """A BSR kernel on CuPy arrays: tensor cores for float16/bfloat16 when ``mma`` (default: when
    the dtype and head dims allow and ``v_finite``), else the SIMT kernel."""
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv = _geometry(q, k, v)
    out, lse = _outputs(cp, q, dtype, B, H, n_q, dv)
    if out.size == 0 and lse.size == 0:
        return out, lse
    bq, bk = bsr.block
    P = int(bsr.indptr.shape[0])
    mwords = int(bsr.mbits.shape[-1])
    D = _mma_d(d, dv) if dtype in ("float16", "bfloat16") else None
    if mma is None:
        mma = D is not None and v_finite
    if mma:
        if D is None:
            raise ValueError(
                "the tensor-core kernel needs float16/bfloat16 and d, d_v <= 128, multiples of 8"
            )
        warps, mt = _mma_shape(bq, D, warps, mt)
        bm = 16 * warps * mt
        smem = _mma_smem(D, warps, mt)
        kern = _kernel("bsr_forward.cu", mma_kernel_name(dtype, D, warps, mt), smem)
        subs = -(-bq // bm)
        margs = (
            q, k, v, out, lse, bsr.indptr, bsr.bcols, bsr.mask_index, bsr.mbits, bsr.order,
            np.int32(H), np.int32(Hkv), np.int32(P), np.int32(n_q), np.int32(n_k), np.int32(d),
            np.int32(dv), np.int32(bq), np.int32(bk), np.int32(mwords), np.int32(subs),
            np.float32(scale), np.float32(softcap or 1.0), np.int32(softcap is not None),
        )  # fmt: skip
        kern((H * -(-n_q // bq) * subs, B), (32 * warps,), margs, shared_mem=smem)
        return out, lse
    dmax = _simt_dmax(d, dv)
    cfg = _simt_config(dtype, dmax, simt)
    smem = _simt_smem(dtype, dmax, cfg)
    kern = _kernel("bsr_forward.cu", _simt_name("bsr_forward_simt", dtype, dmax, cfg), smem)
    bm = 16 * cfg.tm
    subs = -(-bq // bm)
    args = (
        q, k, v, out, lse, bsr.indptr, bsr.bcols, bsr.mask_index, bsr.mbits, bsr.order,
        np.int32(H), np.int32(Hkv), np.int32(P), np.int32(n_q), np.int32(n_k), np.int32(d),
        np.int32(dv), np.int32(bq), np.int32(bk), np.int32(mwords), np.int32(subs),
        _scalar(dtype, scale), _scalar(dtype, softcap or 1.0), np.int32(softcap is not None),
        np.int32(bool(v_finite)),
    )  # fmt: skip
    kern((H * -(-n_q // bq) * subs, B), (256,), args, shared_mem=smem)
    return out, lse


def forward(
    q: Any,
    k: Any,
    v: Any,
    pattern: Any,
    scale: float,
    softcap: float | None,
    *,
    dtype: str | None = None,
    kernel: str = "auto",
    block: tuple[int, int] | None = None,
    v_finite: bool | None = None,
    simt: str | None = None,
    warps: int | None = None,
    mt: int | None = None,
) -> tuple[Any, Any]:
    """``(out, lse)`` of sparse attention on the GPU.

    Args:
        q, k, v: ``(B, H, n_q, d)``, ``(B, H_kv, n_k, d)``, ``(B, H_kv, n_k, d_v)`` CuPy arrays (or
            torch CUDA tensors, returned as torch) of one dtype: float64, float32, float16, or
            bfloat16 (CuPy ``uint16`` views with ``dtype="bfloat16"``, or torch bfloat16).
        pattern: a ``Pattern`` (``shape``, ``stacked_csr()``, optionally
            ``stacked_bsr(block=...)``).
        scale, softcap: as ``sparse_ref.attention`` (already resolved to floats).
        kernel: ``"auto"``, ``"csr"``, ``"bsr"`` (SIMT or tensor cores as the dtype allows),
            ``"bsr_simt"``.
        block: the block for the BSR kernels (default: the pattern's own, else ``DEFAULT_BLOCK``).
        v_finite: whether ``v`` is all finite (``None``: checked on the device). Excluded keys that
            share a tile with allowed ones are multiplied by an exact 0, so a non-finite ``v`` takes
            the slower SIMT path that skips them, as the oracle does.
        simt, warps, mt: kernel shape overrides (``SIMT_CONFIGS`` name; tensor-core CTA warps and
            16-row m-tiles per warp), for benchmarks and tests.

    Returns:
        ``out`` like q (dtype and shape ``(B, H, n_q, d_v)``) and ``lse (B, H, n_q)``, float64 for
        float64 inputs and float32 otherwise; rows without keys give 0 and ``-inf``.
    """
    (qa, ka, va), name, back = _to_kernel_arrays((q, k, v), dtype)
    cp = _require()
    if v_finite is None:
        if name == "bfloat16":  # exponent all ones <=> inf/NaN
            v_finite = not bool(((va & 0x7F80) == 0x7F80).any())
        else:
            v_finite = bool(cp.isfinite(va).all())
    nblock = native_block(pattern)
    if kernel == "auto":
        kernel = "bsr" if (name in ("float16", "bfloat16") or nblock is not None) else "csr"
    if kernel == "csr":
        out, lse = forward_csr(
            qa, ka, va, _pattern_csr(pattern), scale, softcap, dtype=name, v_finite=v_finite,
            simt=simt,
        )  # fmt: skip
    elif kernel in ("bsr", "bsr_simt"):
        blk = tuple(block) if block is not None else (nblock or DEFAULT_BLOCK)
        bsr = _pattern_bsr(pattern, blk)  # type: ignore[arg-type]
        mma = False if kernel == "bsr_simt" else None
        out, lse = forward_bsr(
            qa, ka, va, bsr, scale, softcap, dtype=name, v_finite=v_finite, mma=mma, simt=simt,
            warps=warps, mt=mt,
        )  # fmt: skip
    else:
        raise ValueError(f"kernel must be 'auto', 'csr', 'bsr' or 'bsr_simt', got {kernel!r}")
    return back(out), back(lse)


def useful_flops(nnz: int, d: int, dv: int | None = None) -> float:
    """Forward FLOPs that the pattern requires: ``2*nnz*d + 2*nnz*d_v`` (``4*nnz*d`` when equal)."""
    return 2.0 * nnz * d + 2.0 * nnz * (d if dv is None else dv)


def useful_backward_flops(nnz: int, d: int, dv: int | None = None) -> float:
    """Backward FLOPs that the pattern requires: the products dP = dO V^T, dV = P^T dO, dQ = dS K
    and dK = dS^T Q, ``4*nnz*d + 4*nnz*d_v`` (``8*nnz*d`` when equal; recomputing S is not
    counted)."""
    return 4.0 * nnz * d + 4.0 * nnz * (d if dv is None else dv)


# ------------------------------------------------------------------------------ backward
#: backward tile shapes ``(TM, TN)`` (``16*TM`` rows per CTA, windows of ``16*TN`` columns) that
#: ``csr_backward.cu`` is instantiated with; per dtype the first that fits shared memory is used
BWD_TILES = {"float64": ((2, 2), (1, 2)), "other": ((4, 4), (2, 2))}
_SMEM_LIMIT = 227 * 1024


def _bwd_smem(dtype: str, dmax: int, tm: int, tn: int) -> int:
    """Dynamic shared memory of the backward kernels (``Bwd::SMEM_BYTES`` in csr_backward.cu)."""
    size = 8 if dtype == "float64" else 4
    vw = 16 // size
    bm, bn = 16 * tm, 16 * tn
    ld, ldp = dmax + vw, bn + vw
    tiles = (2 * bm * ld + 2 * bn * ld + 2 * bm * ldp + 3 * bn) * size
    return tiles + 2 * bm * (bn // 32) * 4 + bm * 16 + bm * (bn + 1) * 4 + bm * 4


def _bwd_tiles(dtype: str, dmax: int, tiles: tuple[int, int] | None) -> tuple[int, int]:
    if tiles is not None:
        tm, tn = int(tiles[0]), int(tiles[1])
        if tm not in (1, 2, 4) or tn not in (2, 4):
            raise ValueError(f"backward tiles must have TM in (1, 2, 4), TN in (2, 4); got {tiles}")
        if _bwd_smem(dtype, dmax, tm, tn) > _SMEM_LIMIT:
            raise ValueError(f"backward tiles {tiles} do not fit shared memory for d <= {dmax}")
        return tm, tn
    for tm, tn in BWD_TILES["float64" if dtype == "float64" else "other"]:
        if _bwd_smem(dtype, dmax, tm, tn) <= _SMEM_LIMIT:
            return tm, tn
    raise ValueError(f"no backward tile shape fits shared memory for d <= {dmax}")  # unreachable


def bwd_kernel_names(
    dtype: str, dmax: int, tiles: tuple[int, int] | None = None
) -> tuple[str, str]:
    """Name expressions of the dq kernel and the dk/dv kernel for ``dtype`` and head dims
    ``<= dmax``."""
    tm, tn = _bwd_tiles(dtype, dmax, tiles)
    t, a = _CTYPES[dtype]
    targs = f"<{t}, {a}, {tm}, {tn}, {dmax}>"
    return f"sparse_ref::csr_backward_dq{targs}", f"sparse_ref::csr_backward_dkdv{targs}"


def device_csr_transpose(csr: DeviceCSR) -> DeviceCSR:
    """The key-major pattern of a device CSR (``Pattern.transpose().stacked_csr()`` on the GPU):
    row ``j`` lists the queries ``i`` that attend key ``j``, ascending; each head keeps the offsets
    of its entries. One sort per head of the keys ``j * n_q + i`` (CuPy); temporary memory about 32
    bytes per entry of the largest head."""
    cp = _require()
    n_q, n_k = csr.n_q, csr.n_k
    host_ptr = csr.indptr.get()
    P = host_ptr.shape[0]
    t_ptr = np.empty((P, n_k + 1), dtype=np.int64)
    t_idx = cp.zeros_like(csr.indices)
    for p in range(P):
        lo, hi = int(host_ptr[p, 0]), int(host_ptr[p, -1])
        t_ptr[p, 0] = lo
        if hi == lo:
            t_ptr[p, 1:] = lo
            continue
        cols = csr.indices[lo:hi]
        ends = csr.indptr[p, 1:] - lo
        rows = cp.searchsorted(ends, cp.arange(hi - lo, dtype=cp.int64), side="right")
        perm = cp.argsort(cols.astype(cp.int64) * n_q + rows)
        t_idx[lo:hi] = rows[perm].astype(cp.int32)
        del rows, perm
        t_ptr[p, 1:] = lo + np.cumsum(cp.bincount(cols, minlength=n_k).get()[:n_k])
    return DeviceCSR(cp.asarray(t_ptr), t_idx, n_k, n_q, {})


def _kv_order(tcsr: DeviceCSR, rows: int, group: int) -> Any:
    """``(1 or H_kv, ceil(n_k/rows))`` int32: per kv head, its key tiles by stored entries summed
    over the query heads of its group, largest first (ties by position)."""
    key = ("kv", rows, group)
    if key not in tcsr.orders:
        cp = _require()
        host = tcsr.indptr.get()
        n = host.shape[1] - 1
        starts = np.arange(0, n, rows)
        counts = host[:, np.minimum(starts + rows, n)] - host[:, starts]
        if host.shape[0] > 1:
            counts = counts.reshape(-1, group, len(starts)).sum(axis=1)
        order = np.argsort(-counts, axis=1, kind="stable").astype(np.int32)
        tcsr.orders[key] = cp.asarray(np.ascontiguousarray(order))
    return tcsr.orders[key]


def backward_csr(
    q: Any,
    k: Any,
    v: Any,
    dout: Any,
    csr: DeviceCSR,
    tcsr: DeviceCSR,
    scale: float,
    softcap: float | None,
    *,
    dtype: str,
    finite: bool = True,
    tiles: tuple[int, int] | None = None,
) -> tuple[Any, Any, Any]:
    """``csr_backward_dq`` then ``csr_backward_dkdv`` on CuPy arrays (bfloat16 as uint16 with
    ``dtype='bfloat16'``); ``tcsr = device_csr_transpose(csr)``. ``finite``: q, k, v and dout hold
    no inf/NaN (then entries outside the pattern may meet a weight of exactly 0 in the
    accumulations; otherwise they are skipped). Returns ``(dq, dk, dv)`` shaped and typed like
    ``(q, k, v)``."""
    cp = _require()
    B, H, Hkv, n_q, n_k, d, dv = _geometry(q, k, v)
    if tuple(dout.shape) != (B, H, n_q, dv):
        raise ValueError(f"dout must have shape {(B, H, n_q, dv)}, got {tuple(dout.shape)}")
    dq, dk, dvo = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    if B == 0 or H == 0:
        dk.fill(0)
        dvo.fill(0)
        return dq, dk, dvo
    dmax = _simt_dmax(d, dv)
    tm, tn = _bwd_tiles(dtype, dmax, tiles)
    smem = _bwd_smem(dtype, dmax, tm, tn)
    kdq, kdkdv = _kernels("csr_backward.cu", bwd_kernel_names(dtype, dmax, (tm, tn)), smem)
    stats = cp.empty((3, B * H * n_q), dtype=cp.float64 if dtype == "float64" else cp.float32)
    bm = 16 * tm
    P = int(csr.indptr.shape[0])
    common = (
        np.int32(n_q), np.int32(n_k), np.int32(d), np.int32(dv), _scalar(dtype, scale),
        _scalar(dtype, softcap or 1.0), np.int32(softcap is not None), np.int32(bool(finite)),
    )  # fmt: skip
    if n_q > 0:
        args = (
            q, k, v, dout, dq, stats[0], stats[1], stats[2], csr.indptr, csr.indices,
            _csr_order(csr, bm), np.int32(H), np.int32(Hkv), np.int32(P), *common,
        )  # fmt: skip
        kdq((H * -(-n_q // bm), B), (256,), args, shared_mem=smem)
    if n_k > 0:
        if not finite:
            q, dout = _without_dead_non_finite_rows(q, dout, stats[1].reshape(B, H, n_q), dtype)
        group = H // Hkv
        targs = (
            q, k, v, dout, dk, dvo, stats[0], stats[1], stats[2], tcsr.indptr, tcsr.indices,
            _kv_order(tcsr, bm, group), np.int32(H), np.int32(Hkv), np.int32(P),
            np.int32(1 if P == 1 else Hkv), *common,
        )  # fmt: skip
        kdkdv((Hkv * -(-n_k // bm), B), (256,), targs, shared_mem=smem)
    return dq, dk, dvo


def _without_dead_non_finite_rows(q: Any, dout: Any, r: Any, dtype: str) -> tuple[Any, Any]:
    """``q``, ``dout`` for ``csr_backward_dkdv``: rows that get no gradient (``r = 1/l == 0``: no
    keys, or only ``-inf`` scores) still meet a weight of 0 there, so where such a row holds inf
    or NaN it is zeroed in a copy (the oracle skips these rows: 0 * inf must not reach dk/dv)."""
    cp = _require()

    def non_finite_rows(x: Any) -> Any:
        if dtype == "bfloat16":  # stored as uint16: exponent bits all ones
            return ((x & 0x7F80) == 0x7F80).any(axis=-1)
        return ~cp.isfinite(x).all(axis=-1)

    bad = (r == 0) & (non_finite_rows(q) | non_finite_rows(dout))
    if not bool(bad.any()):
        return q, dout
    zero = cp.zeros((), dtype=q.dtype)
    return cp.where(bad[..., None], zero, q), cp.where(bad[..., None], zero, dout)


def _all_finite(x: Any, dtype: str) -> bool:
    if dtype == "bfloat16":  # uint16 bits: exponent all ones <=> inf/NaN
        return not bool(((x & 0x7F80) == 0x7F80).any())
    return bool(_require().isfinite(x).all())


def _pattern_csr_t(pattern: Any) -> DeviceCSR:
    return _cached(pattern, "csr_t", None, lambda: device_csr_transpose(_pattern_csr(pattern)))


def backward(
    q: Any,
    k: Any,
    v: Any,
    pattern: Any,
    dout: Any,
    out: Any,
    lse: Any,
    scale: float,
    softcap: float | None,
    *,
    dtype: str | None = None,
    finite: bool | None = None,
    tiles: tuple[int, int] | None = None,
) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` of sparse attention on the GPU (the signature of the Numba backend's).

    Args:
        q, k, v, pattern, scale, softcap, dtype: as :func:`forward`.
        dout: ``(B, H, n_q, d_v)``, the gradient with respect to ``out``, of q's dtype.
        out, lse: accepted and unused: the dq kernel re-derives each row's softmax statistics and
            ``delta = sum_j p_ij (dout_i . v_j)`` from its own scores (as the CPU kernels do).
        finite: whether q, k, v and dout are all finite (``None``: checked on the device).
        tiles: ``(TM, TN)`` tile override (see ``BWD_TILES``), for tests and benchmarks.

    Returns:
        ``dq, dk, dv`` shaped and typed like ``q, k, v`` (CuPy, or torch for torch inputs);
        float64 inputs are computed in float64, the others in float32. Rows with no allowed keys
        get ``dq = 0`` and add nothing to dk/dv; with GQA, dk/dv of a kv head sum over its query
        heads in increasing order. Deterministic: bitwise identical across runs.
    """
    (qa, ka, va, ga), name, back = _to_kernel_arrays((q, k, v, dout), dtype)
    if finite is None:
        finite = all(_all_finite(x, name) for x in (qa, ka, va, ga))
    dq, dk, dv = backward_csr(
        qa, ka, va, ga, _pattern_csr(pattern), _pattern_csr_t(pattern), scale, softcap,
        dtype=name, finite=finite, tiles=tiles,
    )  # fmt: skip
    return back(dq), back(dk), back(dv)
