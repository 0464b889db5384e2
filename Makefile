# The two ways in: `make demo` and `make test`. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/.tools/bin:$(PATH)

DEMO_DIR ?= $(CURDIR)/out
DEMO_MODEL ?= $(DEMO_DIR)/model
DEMO_SIZE ?= 2GiB

.PHONY: demo test lint typecheck contracts pytest tools bench clean dashboards

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	@# torch exercises the torch loaders in tests. Only the CPU build on this machine's
	@# disk (pip's find-links): the +cpu pin never downloads a CUDA build of several GB.
	$(PY) -m pip install -q 'torch==2.13.0+cpu' || { \
	  if [[ "$${CI,,}" =~ ^[[:space:]]*(true|1|yes)[[:space:]]*$$ ]]; then \
	    echo "error: torch 2.13.0+cpu not installed; CI runs the torch loader tests" >&2; \
	    exit 1; \
	  fi; \
	  echo "torch CPU build not found: the torch loader tests skip (a failure under CI)"; }
	touch $@

tools:
	./scripts/install-tools.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	@# --no-cache: a cache written before a package gained its __init__.py misreads it.
	$(BIN)/lint-imports --no-cache

pytest: $(STAMP) tools
	$(BIN)/pytest

test: lint typecheck contracts pytest

demo: $(STAMP)
	./scripts/demo.sh "$(DEMO_MODEL)" "$(DEMO_SIZE)"

# Rewrite grafana/*.json from grafana/*.py (tests check the committed JSON is current).
dashboards: $(STAMP)
	$(PY) -m grafana.generate

bench: $(STAMP) tools
	$(PY) bench/prewarm_bench.py

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache out
