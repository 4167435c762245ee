# Two commands do all set-up on a fresh machine (see README):
#   make demo      -> installs Cairn into .venv and runs the main job on the embedded default
#   make test      -> installs the dev tools and runs the whole test suite (both databases)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo example test lint protos bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-examples: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[examples]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml package.json package-lock.json | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(VENV)/.installed-examples
	$(BIN)/cairn demo

example: $(VENV)/.installed-examples
	$(BIN)/cairn example

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/cairn trainer-env
	$(BIN)/python -m pytest

protos: $(VENV)/.installed-dev
	$(BIN)/python scripts/generate_protos.py

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
