"""Golden suites: generation, reading (with every safety check) and checking an implementation.

``GenerateSmoke`` times the whole ``smoke`` suite (oracle references, tolerances, gradients, atomic
writes). ``ComputeCase`` times one case of the ``default`` suite per dtype, the unit a dask worker
runs. ``ReadSuite`` times ``load`` (sha256, header parsing, pattern rebuild and fingerprint) and
``check`` with the Numba kernel over the smoke suite generated once in ``setup_cache``.

Warm-ups: ``setup`` sets 2 threads and makes ``malloc`` keep freed memory (see ``_common``), then
runs the timed operation once: imports, Numba compilation (or cache load) of the kernels that
``check`` calls, and the first touch of the buffers happen there, outside the measurements.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sparse_ref import golden
from sparse_ref.golden.suites import build_suite

from . import _common as common


class GenerateSmoke:
    """``golden.generate("smoke", DIR)`` end to end, one process."""

    timeout = 300

    def setup(self):
        common.prepare_process()
        self.tmp = Path(tempfile.mkdtemp(prefix="asv-golden-"))
        self.n = 0
        self.time_generate_smoke()  # warm-up

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_generate_smoke(self):
        self.n += 1
        golden.generate("smoke", self.tmp / f"s{self.n}", progress=False)


class ComputeCase:
    """One ``default``-suite case computed in memory (oracle forward and backward, tolerances)."""

    params = (
        ["causal-n200", "sliding_window-l16r8-n200", "gqa-h8kv2-causal_sliding_window-w24-n160"],
        ["f32", "f64"],
    )
    param_names = ["case", "dtype"]
    timeout = 300

    def setup(self, case, dtype):
        specs = {c.id: c for c in build_suite("default").cases}
        spec = specs.get(f"{case}-{dtype}")
        if spec is None:
            raise NotImplementedError(f"{case}-{dtype} not in this catalog's default suite")
        common.prepare_process()
        self.spec = spec.to_json()
        golden.compute_case(self.spec)  # warm-up

    def time_compute_case(self, case, dtype):
        golden.compute_case(self.spec)


class ReadSuite:
    """Read and check the smoke suite."""

    timeout = 300

    def setup_cache(self):
        root = Path(tempfile.mkdtemp(prefix="asv-golden-read-")) / "smoke"
        golden.generate("smoke", root, progress=False)
        return str(root)

    def setup(self, root):
        import sparse_ref

        common.prepare_process()
        self.fn = sparse_ref.attention
        report = golden.check(self.fn, root)  # also compiles the kernels outside the timed region
        if not report.passed:
            raise NotImplementedError(f"the Numba kernel fails the smoke suite: {report.summary()}")
        golden.verify(root)  # warm-up of load and verify

    def time_load(self, root):
        for case in golden.load(root):
            case.unload()

    def time_check_numba(self, root):
        golden.check(self.fn, root)

    def time_verify(self, root):
        golden.verify(root)
