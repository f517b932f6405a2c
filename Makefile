# Fresh-machine entry points. `make quickstart` runs the main job, `make test` the test suite;
# both create the virtual environment on first use (torch==2.13.0 CPU wheel first, then the rest).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv quickstart test test-fast lint bench table1 clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	$(PY) -m align_cbrl.quickstart

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

table1: $(STAMP)
	$(PY) -m tabular_reference table1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
