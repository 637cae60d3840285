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

.PHONY: help setup test check lint typecheck docs unit oldest-python demo bench bench-quick clean \
	image base-image-digest

help:
	@echo "make demo   - set up, start LocalStack, run the seed flow end to end, stop"
	@echo "make test   - set up, lint, type-check, build the docs, run every test (LocalStack included)"
	@echo "make docs   - build the documentation site from docs/ into site/ (mkdocs --strict)"
	@echo "make bench  - run the benchmark suite, write docs/benchmarks.md (about 25 minutes)"
	@echo "make bench-quick - the same with short windows, into .bench-quick/ (under 3 minutes)"
	@echo "make image  - build the image: sfn-activity-worker:<version> (pyproject.toml) and :latest"
	@echo "make base-image-digest - pin the Dockerfile's base image to today's python:3.13-slim"

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

# The documentation site: a broken link, anchor or nav entry fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

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

# Both test stages run even when one fails, so one red test never hides the others; -v
# names each test as it starts (a LocalStack test runs for up to a minute).
test: lint typecheck docs
	@failed=""; \
	  $(VENV)/bin/pytest -v --durations=10 || failed="$$failed main"; \
	  $(MAKE) --no-print-directory oldest-python || failed="$$failed python-$(OLDEST_PYTHON)"; \
	  if [ -n "$$failed" ]; then echo "make test: failed stage(s):$$failed"; exit 1; fi

demo: setup
	$(VENV)/bin/python scripts/demo.py

bench: setup
	$(VENV)/bin/python bench/run.py

bench-quick: setup
	$(VENV)/bin/python bench/run.py --quick --output $(CURDIR)/.bench-quick/benchmarks.md

# The one version: pyproject.toml's, also the image's tag and its OCI version label.
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

image:
	docker build --build-arg VERSION=$(VERSION) \
		-t sfn-activity-worker:$(VERSION) -t sfn-activity-worker:latest .

# Pin the Dockerfile's base image to the digest python:3.13-slim has today (needs Docker
# Hub); review and commit the change like a dependency update.
base-image-digest:
	@digest="$$(docker buildx imagetools inspect python:3.13-slim --format '{{.Manifest.Digest}}')"; \
	  [[ "$$digest" =~ ^sha256:[0-9a-f]{64}$$ ]] || { echo "no digest: $$digest"; exit 1; }; \
	  sed -i -E "s|^(ARG PYTHON_IMAGE=python:3\.13-slim@)sha256:[0-9a-f]{64}|\1$$digest|" Dockerfile; \
	  grep '^ARG PYTHON_IMAGE=' Dockerfile

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .mypy_cache .ruff_cache .pytest_cache site
