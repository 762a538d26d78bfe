"""Every CUDA source compiles for Hopper, without a GPU.

With nvcc: each ``gpu/kernels/*.cu`` with its representative instantiations. With NVRTC, where the
library is present: the exact source text and name expressions that the CuPy backend hands to
``cupy.RawModule``."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sparse_ref.backends import cupy as gpu
from sparse_ref.backends.cupy.backward_mma import mma_backward_kernel_names
from sparse_ref.backends.cupy.sources import ARCH_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "gpu" / "kernels"
SOURCES = sorted(KERNELS.glob("*.cu"))


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for cand in ("/usr/local/cuda/bin/nvcc", *sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"))):
        if os.access(cand, os.X_OK):
            return cand
    return None


def test_sources_exist():
    assert {p.name for p in SOURCES} >= {
        "csr_forward.cu",
        "bsr_forward.cu",
        "csr_backward.cu",
        "bsr_backward_simt.cu",
    }
    assert gpu.kernel_dir() == KERNELS


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(src: Path, tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install the CUDA toolkit to compile-check the kernels)")
    # sm_90a where the backend compiles for it (nvcc's -arch=sm_90a also emits compute_90 PTX,
    # which cannot hold wgmma)
    sm90a = "-arch=sm_90a" in ARCH_OPTIONS.get(src.name, ())
    arch = ("-gencode=arch=compute_90a,code=sm_90a",) if sm90a else ("-arch=sm_90",)
    cmd = [
        nvcc, "-std=c++17", *arch, "-c", "-DSPARSE_REF_INSTANTIATE", f"-I{KERNELS}",
        "-Xptxas", "-warn-spills", str(src), "-o", str(tmp_path / (src.stem + ".o")),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"nvcc failed on {src.name}:\n{res.stderr}"
    assert "error" not in res.stderr.lower(), res.stderr


def _libnvrtc() -> ctypes.CDLL | None:
    names = [ctypes.util.find_library("nvrtc")]
    try:
        import nvidia

        for base in nvidia.__path__:
            names += sorted(glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    names += sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
    for name in names:
        if not name or "alt" in os.path.basename(name) or "builtins" in name:
            continue
        try:
            for builtins in sorted(glob.glob(os.path.join(os.path.dirname(name), "libnvrtc-b*"))):
                if "alt" not in os.path.basename(builtins):  # found by name when compiling
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _nvrtc_compile(
    lib: ctypes.CDLL, source: str, names: list[str], extra: tuple[str, ...] = ()
) -> tuple[int, str]:
    """NVRTC with the backend's options for the source (``extra``) followed by ``-arch=sm_90``, as
    CuPy appends it on an H100."""
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"k.cu", 0, None, None) == 0
    for n in names:
        assert lib.nvrtcAddNameExpression(prog, n.encode()) == 0
    opts = [b"-std=c++17", *(o.encode() for o in extra), b"-arch=sm_90"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc == 0:
        for n in names:
            lowered = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered)) == 0
            assert lowered.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace")


# the instantiations the backend launches for representative head dims
_CSR_NAMES = [gpu.csr_kernel_name(t, dm) for t in ("float64", "float32") for dm in (32, 128)]
_CSR_NAMES += [gpu.csr_kernel_name("float32", 128, "4x4"), gpu.csr_kernel_name("bfloat16", 64)]
_CSR_NAMES += [gpu.csr_kernel_name("float16", 256)]
_BSR_NAMES = [gpu.bsr_kernel_name("float32", 128, c) for c in ("4x4", "8x4split")]
_BSR_NAMES += [gpu.bsr_kernel_name("float64", 16)]
_BSR_NAMES += [gpu.mma_kernel_name(t, dm, w, mt) for t, dm, w, mt in
               (("bfloat16", 128, 8, 1), ("bfloat16", 128, 4, 2), ("float16", 96, 4, 1),
                ("bfloat16", 32, 4, 1))]  # fmt: skip
_BWD_NAMES = [n for t, dm in (("float32", 128), ("float64", 64), ("float64", 256), ("float32", 256),
                               ("bfloat16", 32)) for n in gpu.bwd_kernel_names(t, dm)]  # fmt: skip
_BSR_BWD_NAMES = [n for t, dm in (("float32", 128), ("float64", 128), ("float64", 256),
                                   ("bfloat16", 64)) for n in gpu.bwd_kernel_names(t, dm, form="bsr")]  # fmt: skip
_MMA_BWD_NAMES = [n for t, dm in (("bfloat16", 128), ("float16", 64))
                  for n in mma_backward_kernel_names(t, dm, 4)]  # fmt: skip
_NVRTC_CASES = [
    ("bsr_backward_mma.cu", _MMA_BWD_NAMES),
    ("csr_forward.cu", _CSR_NAMES),
    ("bsr_forward.cu", _BSR_NAMES),
    ("csr_backward.cu", _BWD_NAMES),
    ("bsr_backward_simt.cu", _BSR_BWD_NAMES),
    (
        "bsr_forward_wgmma.cu",
        [
            gpu.wgmma_kernel_name(t, w, st, kt)
            for t in ("bfloat16", "float16")
            for w, st, kt in ((1, 2, 64), (1, 3, 64), (2, 2, 64), (2, 3, 64), (2, 2, 128),
                              (2, 3, 128), (1, 3, 128))
        ],
    ),
]


@pytest.mark.parametrize(("file", "names"), _NVRTC_CASES, ids=[c[0] for c in _NVRTC_CASES])
def test_nvrtc_compiles_backend_source(file: str, names: list[str]) -> None:
    lib = _libnvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc to check the CuPy path)")
    source = gpu.kernel_source(file)
    assert '#include "' not in source
    rc, log = _nvrtc_compile(lib, source, names, ARCH_OPTIONS.get(file, ()))
    assert rc == 0, f"NVRTC failed on {file}:\n{log}"


def _ablate_forward() -> Any:
    spec = importlib.util.spec_from_file_location("_ablate_forward", ROOT / "gpu/ablate_forward.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_ABLATIONS = ["full", "no-softmax", "no-pv", "no-copy"]


@pytest.mark.parametrize("name", _ABLATIONS)
def test_forward_ablations_apply_and_compile(name: str, tmp_path: Path) -> None:
    """gpu/ablate_forward.py's patches still find their text in the wgmma kernel (each once), and
    the patched kernel compiles for sm_90a (one instantiation, the one the script times)."""
    ablate = _ablate_forward()
    assert sorted(ablate.ABLATIONS) == sorted(_ABLATIONS)
    source = gpu.kernel_source(ablate.SOURCE)
    patched = ablate.ablated_source(source, name)
    assert (patched == source) == (name == "full")
    with pytest.raises(ValueError, match="exactly once"):
        ablate.ablated_source(source.replace("chunk_weights(s, ch,", "chunk_weights(s,ch,"),
                              "no-softmax")  # fmt: skip
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install the CUDA toolkit to compile-check the kernels)")
    src = tmp_path / "ablated.cu"
    src.write_text(patched + "\ntemplate __global__ void sparse_ref::bsr_forward_wgmma<"
                   "sparse_ref::bf16_t, 2, 3, 128>(const sparse_ref::bf16_t*, const sparse_ref::"
                   "bf16_t*, const sparse_ref::bf16_t*, sparse_ref::bf16_t*, float*, const long "
                   "long*, const int*, const int*, const unsigned*, const int*, int, int, int, int, "
                   "int, int, int, int, int, int, int, float, float, int);\n")  # fmt: skip
    cmd = [nvcc, "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-c", str(src), "-o",
           str(tmp_path / "ablated.o")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"nvcc failed on ablation {name}:\n{res.stderr}"
