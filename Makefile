# Two entry points for a fresh clone: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
PYTHON_VERSION := 3.13
# Tools and emulator live outside the work tree, shared by clones on this machine. Not
# SFN_*: the worker refuses an SFN_* variable that is not one of its settings.
SFNW_CACHE ?= $(HOME)/.cache/sfn-worker
export SFNW_CACHE
CACHE_DIR := $(SFNW_CACHE)
UV_HOME := $(CACHE_DIR)/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help setup test check lint typecheck unit oldest-python demo bench bench-quick clean

help:
	@echo "make demo   - set up, start LocalStack, run the seed flow end to end, stop"
	@echo "make test   - set up, lint, type-check, run every test (LocalStack included)"
	@echo "make bench  - run the benchmark suite, write docs/benchmarks.md (about 25 minutes)"
	@echo "make bench-quick - the same with short windows, into .bench-quick/ (under 3 minutes)"

$(UV):
	@python="$$(scripts/find-python $(PYTHON_VERSION))"; \
	  "$$python" -m venv "$(UV_HOME)" && "$(UV_HOME)/bin/pip" install -q "uv==$(UV_VERSION)"

# The dev environment has the optional extras too: their tests run in make test.
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras --python "$$(scripts/find-python $(PYTHON_VERSION))"
	@touch $@

setup: $(VENV)/.synced

# The image installs requirements.lock; it must say what uv.lock says.
EXPORT_LOCK := $(UV) export --frozen --no-dev --no-emit-project --no-header --format requirements-txt -q

requirements.lock: uv.lock | $(UV)
	$(EXPORT_LOCK) -o $@

lint: setup
	@$(EXPORT_LOCK) | diff -q - requirements.lock >/dev/null \
	  || { echo "requirements.lock is out of date with uv.lock: run 'make requirements.lock'"; exit 1; }
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile examples/custom-image/Dockerfile

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -m "not localstack"

# The oldest Python that pyproject.toml accepts runs the unit tests too.
OLDEST_PYTHON := 3.11
OLDEST_VENV := .venv-py$(OLDEST_PYTHON)

oldest-python: | $(UV)
	UV_PROJECT_ENVIRONMENT=$(OLDEST_VENV) $(UV) sync --frozen --all-extras --quiet \
	  --python "$$(scripts/find-python $(OLDEST_PYTHON))"
	PATH="$(CURDIR)/$(OLDEST_VENV)/bin:$$PATH" $(OLDEST_VENV)/bin/pytest -q \
	  -m "not localstack and not slow" -p no:cacheprovider

test: lint typecheck oldest-python
	$(VENV)/bin/pytest

demo: setup
	$(VENV)/bin/python scripts/demo.py

bench: setup
	$(VENV)/bin/python bench/run.py

bench-quick: setup
	$(VENV)/bin/python bench/run.py --quick --output $(CURDIR)/.bench-quick/benchmarks.md

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .mypy_cache .ruff_cache .pytest_cache
