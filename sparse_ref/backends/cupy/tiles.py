"""Tile configurations of the kernels: dtypes, head-dim buckets, CTA shapes, shared memory, and
the C++ name expression of each instantiation.

The defaults come from the H200/H100 measurements in ``gpu/README.md``. Every ``*_smem`` function
mirrors the ``SMEM_BYTES`` of its kernel's template; ``tests/test_cuda_compile.py`` compiles the
names built here.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "SimtConfig",
    "SIMT_CONFIGS",
    "SIMT_DEFAULT",
    "SIMT_CSR_DEFAULT",
    "MMA_DEFAULT_MT",
    "BWD_TILES",
    "csr_kernel_name",
    "bsr_kernel_name",
    "mma_kernel_name",
    "wgmma_kernel_name",
    "bwd_kernel_names",
]

#: element dtype name -> (C++ element type, C++ accumulator type)
_CTYPES = {
    "float64": ("double", "double"),
    "float32": ("float", "float"),
    "float16": ("sparse_ref::f16_t", "float"),
    "bfloat16": ("sparse_ref::bf16_t", "float"),
}
_SIMT_DMAX = (16, 32, 64, 128, 192, 256)
_MMA_D = (32, 64, 96, 128)
#: dynamic shared memory a CTA may use on sm_90
_SMEM_LIMIT = 227 * 1024


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
    if _simt_smem(dtype, dmax, cfg) > _SMEM_LIMIT:
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


def wgmma_kernel_name(dtype: str, warpgroups: int, stages: int, key_tile: int = 64) -> str:
    """``bsr_forward_wgmma`` (``bsr_forward_wgmma.cu``, sm_90 only, head dims <= 128)."""
    return f"sparse_ref::bsr_forward_wgmma<{_CTYPES[dtype][0]}, {warpgroups}, {stages}, {key_tile}>"


def _simt_smem(dtype: str, dmax: int, cfg: SimtConfig) -> int:
    size = 8 if dtype == "float64" else 4
    vw = 16 // size
    bm, bn = 16 * cfg.tm, 16 * cfg.tn
    ld, ldp = dmax + vw, bn + vw
    tiles = (bm * ld + (2 if cfg.split else 1) * bn * ld + bm * ldp) * size
    return tiles + 2 * bm * (bn // 32) * 4 + bm * (bn + 1) * 4 + bm * 20


def _mma_smem(d: int, warps: int, mt: int) -> int:
    return (16 * warps * mt + 4 * 64) * (d + 8) * 2


def _wgmma_smem(warpgroups: int, stages: int, key_tile: int = 64) -> int:
    """``WgmmaCfg<WG, STAGES, BN>::SMEM_BYTES``: Q, ``stages`` K and V tiles of ``key_tile`` keys
    (d = 128, 16-bit), and 1 KiB to align them to 1024 bytes."""
    return (64 * warpgroups + 2 * stages * key_tile) * 128 * 2 + 1024


def _wgmma_shape(
    bq: int, bk: int, stages: int | None, warpgroups: int | None, key_tile: int | None
) -> tuple[int, int, int]:
    """``(warpgroups, stages, key_tile)`` of the wgmma forward. Default: two warpgroups (128 rows)
    for blocks of 128 rows or more, with the 3-stage overlapped schedule (measured on the H100);
    one warpgroup, 2 stages, for smaller blocks (two CTAs per SM). Key chunks of 128 where the
    blocks' width is a multiple of 128, else 64 (one warpgroup with 64-key chunks fits two CTAs
    per SM with either schedule)."""
    wgs = warpgroups if warpgroups is not None else (2 if bq >= 128 else 1)
    if wgs not in (1, 2):
        raise ValueError(f"wgmma warpgroups must be 1 or 2, got {wgs}")
    if stages is None:
        stages = 3 if wgs == 2 else 2
    if stages not in (2, 3):
        raise ValueError(f"wgmma stages must be 2 or 3, got {stages}")
    if key_tile is None:
        key_tile = WGMMA_KEY_TILE if bk % WGMMA_KEY_TILE == 0 else 64
    if key_tile not in (64, 128):
        raise ValueError(f"wgmma key_tile must be 64 or 128, got {key_tile}")
    return wgs, stages, key_tile


#: keys per chunk of the wgmma forward where the blocks' width allows it
WGMMA_KEY_TILE = 128


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


#: backward tile shapes ``(TM, TN)`` (``16*TM`` rows per CTA, windows of ``16*TN`` columns) that
#: the SIMT backward kernels (``csr_backward.cu``, ``bsr_backward_simt.cu``) are instantiated with;
#: per dtype the first that fits shared memory is used
BWD_TILES = {"float64": ((2, 2), (1, 2)), "other": ((4, 4), (2, 2))}


def _bwd_smem(dtype: str, dmax: int, tm: int, tn: int) -> int:
    """Dynamic shared memory of the SIMT backward kernels (``Bwd::SMEM_BYTES`` in
    backward_core.cuh)."""
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
    dtype: str, dmax: int, tiles: tuple[int, int] | None = None, *, form: str = "csr"
) -> tuple[str, str]:
    """Name expressions of the SIMT dq kernel and dk/dv kernel for ``dtype`` and head dims
    ``<= dmax``: over token CSR (``form="csr"``, ``csr_backward.cu``) or the block form
    (``form="bsr"``, ``bsr_backward_simt.cu``)."""
    if form not in ("csr", "bsr"):
        raise ValueError(f"form must be 'csr' or 'bsr', got {form!r}")
    tm, tn = _bwd_tiles(dtype, dmax, tiles)
    t, a = _CTYPES[dtype]
    targs = f"<{t}, {a}, {tm}, {tn}, {dmax}>"
    return f"sparse_ref::{form}_backward_dq{targs}", f"sparse_ref::{form}_backward_dkdv{targs}"
