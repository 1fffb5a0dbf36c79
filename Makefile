# The two README commands. Each sets itself up: a virtual environment in .venv, torch
# (the CPU build, torch==2.13.0, unless torch is already importable there), the test and runtime
# dependencies, and genssd itself with its C++ extension (pip install --no-build-isolation).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.genssd-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/*.h)

.PHONY: demo test lint bench install clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q "setuptools>=69" wheel "pybind11>=2.12" ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genssd demo $(DEMO_ARGS)

# Lint first: ruff's check and format check (the project's config in pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pytest benchmarks/ --benchmark-only --benchmark-json=benchmarks/results/latest.json

clean:
	rm -rf $(VENV) build *.egg-info genssd_kernels/_C*.so
