"""sparse_ref.analysis as a package: every public name where it was before the split, and nothing
heavy imported with it. Each module has its own test file: test_analysis_{metrics, receptive,
graph, tables, presets}.py."""

from __future__ import annotations

import subprocess
import sys

from sparse_ref import analysis

#: the public names of sparse_ref.analysis before it became a package
PUBLIC = [
    "COMPLEXITY",
    "TRANSPOSE_LIMIT",
    "Comparison",
    "Cost",
    "Diameter",
    "ReceptiveField",
    "compare",
    "connected_components",
    "cost",
    "default_rows",
    "dense_score_bytes",
    "density",
    "diameter",
    "format_bytes",
    "literature_patterns",
    "memory_table",
    "receptive_field",
]


def test_the_public_names_stay_in_the_package():
    assert sorted(analysis.__all__) == sorted(PUBLIC)
    assert all(hasattr(analysis, name) for name in PUBLIC)
    assert analysis.cost.__module__ == "sparse_ref.analysis.metrics"


def test_importing_analysis_imports_no_numba_rich_or_matplotlib():
    # the graph kernels are imported on first use: a GPU machine without Numba imports sparse_ref
    heavy = "{'numba', 'rich', 'matplotlib'}"
    code = f"import sys, sparse_ref.analysis; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
