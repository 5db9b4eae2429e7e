# ambient-node. Every target that runs something prepares the machine first (idempotent).
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help setup test lint typecheck unit integration e2e demo bench clean image deploy-check

help:
	@echo "make demo    - a two-node mesh in network namespaces, traffic, and a report (root)"
	@echo "make test    - ruff, mypy and every test tier (root)"
	@echo "make unit    - unit tests only (no root needed once set up)"
	@echo "make bench   - benchmarks; report under bench/results/"
	@echo "make setup   - install what the project needs (root); the targets above call it"
	@echo "make deploy-check - offline checks of deploy/ (chart, manifests, scan, lint)"
	@echo "make image   - the container image with podman (root; slow; not part of make test)"

setup:
	@bash deploy/setup.sh

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

unit:
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: setup
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

demo: setup
	$(BIN)/ambient demo

bench: setup
	$(BIN)/python -m bench

deploy-check: setup
	$(BIN)/python -m deploy.checks check

image:
	bash deploy/image.sh

clean:
	rm -rf .build .mypy_cache .pytest_cache .ruff_cache
