# Every target creates .venv if it is missing, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q
# torch is optional (interop tests, peer benchmarks). The pin takes the CPU wheel that this workplace
# keeps on disk (about 25 s); set TORCH_SPEC= to skip torch, the torch tests then skip with a reason.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-gpu bench bench-compare docs lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

demo: $(PY)
	$(PIP) -e .
	$(VENV)/bin/sparse-ref demo

test: $(PY)
	$(PIP) -e ".[test,lint,docs]"
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) "$(TORCH_SPEC)" || echo "torch not installed: torch tests will skip"; fi
	$(PY) -m sparse_ref.kernels.warmup float32 & $(PY) -m sparse_ref.kernels.warmup float64; wait
	$(PY) -m pytest -m "not slow" --durations=15 --cov=sparse_ref --cov-report=term:skip-covered $(PYTEST_ARGS)

test-gpu: $(PY)
	$(PIP) -e ".[test,gpu]"
	$(PY) -m pytest -m gpu -v $(PYTEST_ARGS)

bench: $(PY)
	$(PIP) -e ".[bench]"
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) "$(TORCH_SPEC)" || true; fi
	$(VENV)/bin/asv machine --yes
	$(VENV)/bin/asv run --python=same $(ASV_ARGS)
	$(VENV)/bin/asv publish

BASE ?= HEAD~1
bench-compare: $(PY)
	$(PIP) -e ".[bench]"
	$(VENV)/bin/asv machine --yes
	$(VENV)/bin/asv continuous --factor 1.1 $(BASE) HEAD

docs: $(PY)
	$(PIP) -e ".[docs]"
	$(VENV)/bin/mkdocs build --strict

lint: $(PY)
	$(PIP) -e ".[lint]"
	$(VENV)/bin/ruff check sparse_ref tests
	$(VENV)/bin/ruff format --check sparse_ref
	$(VENV)/bin/mypy sparse_ref

clean:
	rm -rf $(VENV) .asv site build dist
