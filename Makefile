# Riverbed: the two set-up commands are `make demo` and `make test`; everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen

export NML_DISABLE_USAGE_LOGGING := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DAGSTER_DISABLE_TELEMETRY := true
export OMP_NUM_THREADS := 1
export PYTHONUNBUFFERED := 1

.PHONY: help uv sync demo test test-fast lint format dev bench bench-serving bench-events clean

help: ## list every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

uv: ## install uv with pip if it is missing
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv

sync: uv ## create .venv from the lock file
	$(UV) sync --frozen

demo: sync ## run the main job on embedded defaults and print a summary
	$(RUN) riverbed demo

test: lint ## lint (ruff, import-linter, mypy, lock), then the whole test suite (slow end-to-end tests included)
	$(RUN) pytest

test-fast: sync ## the suite without tests marked slow
	$(RUN) pytest -m "not slow"

lint: sync ## ruff, the layer contracts (import-linter), the type checker (mypy) and the lock check
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) lint-imports
	$(RUN) mypy
	$(UV) lock --check

format: sync ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

dev: sync ## the Dagster UI on http://127.0.0.1:3000 over the demo's state
	$(RUN) riverbed dev

bench: sync ## run the benchmarks and rewrite benchmarks/RESULTS.md
	$(RUN) python -m benchmarks.run_all

bench-serving: sync ## load-test the serving stack; rewrites the Serving section of benchmarks/RESULTS.md
	$(RUN) python -m benchmarks.serving_benchmark

bench-events: sync ## Kafka ingestion (1,000,000 records) and monitoring (100,000 predictions) benchmarks
	$(RUN) python -m benchmarks.ingestion_benchmark
	$(RUN) python -m benchmarks.monitoring_benchmark

clean: ## remove local state (.riverbed/)
	rm -rf .riverbed
