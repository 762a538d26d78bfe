# Every target creates .venv if it is missing, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q
# torch is optional (interop tests, peer benchmarks). The pin takes the CPU wheel that this workplace
# keeps on disk (about 25 s); set TORCH_SPEC= to skip torch, the torch tests then skip with a reason.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-gpu bench-deps bench bench-compare bench-check bench-report docs lint clean clean-cache

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

demo: $(PY)
	$(PIP) -e .
	$(VENV)/bin/sparse-ref demo

# the jax extra (CPU jaxlib, for the JAX interop tests) installed in 16 s in a fresh venv here
test: $(PY)
	$(PIP) -e ".[test,lint,docs,jax]"
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) "$(TORCH_SPEC)" || echo "torch not installed: torch tests will skip"; fi
	$(VENV)/bin/sparse-ref warmup --dtype float32 & $(VENV)/bin/sparse-ref warmup --dtype float64; wait
	$(PY) -m pytest -m "not slow" --durations=15 --cov=sparse_ref --cov-report=term:skip-covered $(PYTEST_ARGS)

test-gpu: $(PY)
	$(PIP) -e ".[test,gpu]"
	$(PY) -m pytest -m gpu -v $(PYTEST_ARGS)

# asv (DESIGN §12, docs/benchmarks.md). Results go to .asv/results, the HTML to .asv/html (both
# git-ignored). `bench` runs the suites in this .venv (--python=same) on the working tree as
# installed; --set-commit-hash files the results under HEAD (asv saves none for an existing
# environment without it). ASV_ARGS passes more options, e.g. ASV_ARGS="--bench BSRForward --quick".
ASV      := $(VENV)/bin/asv
ASV_ARGS ?=
# bench-compare: our time_/peakmem_ benchmarks only. asv counts every rise as a slowdown, which is
# wrong for track_ figures (GFLOP/s, ratios: higher is better), and the peers' and the machine's
# timings do not change between two commits of ours. BENCH="CSRForward.time_" for a subset.
BENCH    ?= ^bench_(patterns|csr_forward|bsr_forward|backward|oracle|golden)\..*\.(time|peakmem)_
BASE     ?= HEAD~1
# bench-check (CI): ruff on the suites, asv check, then one small case per suite, --quick (one call
# each), --dry-run (nothing saved); asv quotes string parameters, hence the .? in the regex.
# FlexAttention is left out: its setup_cache compiles its whole grid (minutes); `asv check` still
# imports and checks it.
BENCH_QUICK ?= causal_window_256.?, 4096, 64(, .?float32.?)?\)|^bench_peaks|GenerateSmoke|PatternBuild.time_build\(.?(causal_sliding_window|bigbird).?, 4096, 256\)

# The extras bench-deps installs (the targets below add theirs: make passes a target's variables on
# to its prerequisites).
BENCH_EXTRAS ?= bench

bench-deps: $(PY)
	$(PIP) -e ".[$(BENCH_EXTRAS)]"
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) "$(TORCH_SPEC)" || echo "torch not installed: peer benchmarks will skip"; fi
	$(ASV) machine --yes >/dev/null

bench: bench-deps
	$(ASV) run --python=same --set-commit-hash=$$(git rev-parse HEAD) $(ASV_ARGS)
	$(ASV) publish

# asv continuous: builds both commits into virtualenvs under .asv/env (pip, the package registry),
# runs BENCH on each and exits 1 when one is more than 10% slower.
bench-compare: bench-deps
	$(ASV) continuous --factor 1.1 --bench '$(BENCH)' $(ASV_ARGS) $(BASE) HEAD

bench-check: BENCH_EXTRAS = bench,lint
bench-check: bench-deps
	$(VENV)/bin/ruff check asv_benchmarks
	$(VENV)/bin/ruff format --check asv_benchmarks
	$(ASV) check --python=same
	$(ASV) run --python=same --quick --dry-run --show-stderr --bench '$(BENCH_QUICK)' $(ASV_ARGS)

# The tables and plot of docs/benchmarks.md from the latest results in .asv/results.
bench-report: BENCH_EXTRAS = bench,docs
bench-report: bench-deps
	$(PY) -m asv_benchmarks.report

docs: $(PY)
	$(PIP) -e ".[docs]"
	$(VENV)/bin/mkdocs build --strict

lint: $(PY)
	$(PIP) -e ".[lint]"
	$(VENV)/bin/ruff check sparse_ref tests
	$(VENV)/bin/ruff format --check sparse_ref
	$(VENV)/bin/mypy sparse_ref

# Numba's on-disk cache checks only the file that defines a function: a kernel keeps the compiled
# code of the functions it calls from other modules. After editing a kernel module, clear it.
clean-cache:
	find sparse_ref -name '*.nbi' -delete
	find sparse_ref -name '*.nbc' -delete

clean: clean-cache
	rm -rf $(VENV) .asv site build dist
