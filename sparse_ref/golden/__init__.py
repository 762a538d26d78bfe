"""Golden suites: expected outputs from the float64 oracle, for testing other implementations.

A suite is a directory holding ``manifest.json`` and ``cases/<case_id>.safetensors`` (DESIGN §8):

    >>> from sparse_ref import golden                                      # doctest: +SKIP
    >>> golden.generate("smoke", "golden-smoke")                            # doctest: +SKIP
    >>> report = golden.check(my_attention, "golden-smoke")                 # doctest: +SKIP
    >>> for case in golden.load("golden-smoke"):                            # doctest: +SKIP
    ...     case.assert_close(my_attention(case.q, case.k, case.v, case.pattern,
    ...                                    scale=case.scale, softcap=case.softcap))

``suites`` holds the case lists, ``store`` the file format and its checks, ``generate`` and
``check`` the two sides, ``conformance`` adapters for torch SDPA, FlexAttention and the CuPy
kernels. The command line is ``sparse-ref golden generate|verify|check|conformance|list``.
"""

from . import conformance
from .check import (
    OUTCOMES,
    Case,
    CaseResult,
    Report,
    VerifyResult,
    check,
    demo,
    load,
    load_impl,
    verify,
)
from .generate import GenerateResult, compute_case, generate
from .store import SCHEMA_VERSION, GoldenFormatError, manifest_schema, read_manifest
from .suites import SUITES, CaseSpec, Suite, build_suite

__all__ = [
    "OUTCOMES",
    "SCHEMA_VERSION",
    "GoldenFormatError",
    "conformance",
    "SUITES",
    "Case",
    "CaseResult",
    "CaseSpec",
    "GenerateResult",
    "Report",
    "Suite",
    "VerifyResult",
    "build_suite",
    "check",
    "compute_case",
    "demo",
    "generate",
    "load",
    "load_impl",
    "manifest_schema",
    "read_manifest",
    "verify",
]
