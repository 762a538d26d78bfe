"""sparse_ref.kernels._compile_notice: one stderr line when a package kernel compiles, none on a
cache load, none for helpers compiled inside a kernel, none under quiet()."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from sparse_ref.kernels import _compile_notice


def _jit(fn, module: str = "sparse_ref._fake_kernels"):
    fn.__module__ = module  # the notice tells kernels of the package only
    return numba.njit(fn)


def _inner(x):
    return x + 1


def _outer(x):
    return _INNER(x) * 2


_INNER = _jit(_inner)


@pytest.fixture(autouse=True)
def installed():
    _compile_notice.install()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("sparse-ref: compiling")]


def test_a_compile_prints_one_line_naming_the_kernel_and_dtype(capsys):
    outer = _jit(_outer)
    assert outer(np.ones(3, dtype=np.float32))[0] == 4  # compiles outer, and inner inside it
    lines = _lines(capsys.readouterr().err)
    assert lines == [_compile_notice.message("outer", ["float32"])]
    assert "once" in lines[0] and "sparse-ref warmup" in lines[0]
    outer(np.ones(3, dtype=np.float32))  # compiled: nothing more
    assert _lines(capsys.readouterr().err) == []


def test_a_told_call_prints_one_line_for_all_its_kernels(capsys):
    first, second = _jit(_inner), _jit(_outer)

    @_compile_notice.tells("the test kernels")
    def call(x):
        return first(x) + second(x)  # two outermost compilations

    @_compile_notice.tells("the outer call")
    def outer(x):
        return call(x)  # a told call inside a told call: the outer one speaks

    assert call(np.ones(2, dtype=np.float32))[0] == 6
    assert _lines(capsys.readouterr().err) == [
        _compile_notice.message("the test kernels", ["float32"], plural=True)
    ]
    outer(np.ones(2, dtype=np.float64))
    lines = _lines(capsys.readouterr().err)
    assert lines == [_compile_notice.message("the outer call", ["float64"], plural=True)]
    assert "load them" in lines[0]
    call(np.ones(2, dtype=np.float64))  # compiled: nothing
    assert _lines(capsys.readouterr().err) == []


def test_state_without_numba(monkeypatch):
    # tells and quiet work before install() and never import Numba (sparse_ref.api uses them)
    code = (
        "import sys\n"
        "from sparse_ref.kernels import _compile_notice as c\n"
        "f = c.tells('x')(lambda a: a)\n"
        "with c.quiet():\n"
        "    f(1)\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_other_modules_and_quiet_print_nothing(capsys):
    _jit(_inner, module="user_code")(np.ones(2))
    with _compile_notice.quiet():
        _jit(_inner)(np.ones(2))
    assert _lines(capsys.readouterr().err) == []
    _jit(_inner)(np.ones(2, dtype=np.int64))  # quiet ended
    assert len(_lines(capsys.readouterr().err)) == 1


def test_install_twice_prints_once(capsys):
    _compile_notice.install()
    _jit(_inner)(np.ones(2, dtype=np.float64))
    assert len(_lines(capsys.readouterr().err)) == 1


def test_a_cache_load_prints_nothing(tmp_path):
    # a real package kernel (cache=True) in two fresh processes sharing an empty cache directory
    code = (
        "import numpy as np\n"
        "from sparse_ref.kernels import _compile_notice\n"
        "from sparse_ref.analysis._graph_kernels import _union_find\n"
        "_compile_notice.install()\n"
        "_union_find(np.array([0, 1, 2]), np.array([1, 0]))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        for _ in range(2)
    ]
    assert _lines(runs[0].stderr) == [_compile_notice.message("union_find", ["int64"])]
    assert _lines(runs[1].stderr) == []
