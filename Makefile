# `make demo` and `make test` install what they need first: uv (bootstrapped from PyPI into
# .tools/ when it is not on PATH), then the locked environment (`uv sync --frozen --compile-bytecode`:
# with PYTHONDONTWRITEBYTECODE set, as on this project's machines, every Ray worker would
# otherwise compile numpy, pandas and Ray from source at each start).
SHELL := /bin/bash
PYTHON ?= python3
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)

.PHONY: install demo test test-all lint format bench clean

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet --disable-pip-version-check uv

install: $(UV)
	$(UV) sync --frozen --compile-bytecode

demo: install
	$(UV) run --frozen colray demo

lint: install
	$(UV) run --frozen ruff check src tests benchmarks jobs
	$(UV) run --frozen ruff format --check src tests benchmarks jobs

test: lint
	$(UV) run --frozen pytest

test-all: lint
	$(UV) run --frozen pytest -m ""

format: install
	$(UV) run --frozen ruff format src tests benchmarks jobs
	$(UV) run --frozen ruff check --fix src tests benchmarks jobs

bench: install
	$(UV) run --frozen python benchmarks/text_ingest.py

clean:
	rm -rf .colray .pytest_cache .ruff_cache
