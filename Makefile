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

.PHONY: help uv sync demo test test-fast lint format dev bench bench-render bench-quick bench-graph bench-ingestion \
	bench-monitoring bench-drift bench-serving bench-scale-out bench-imports bench-events clean dashboards system-packages

help: ## list every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

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

bench: sync ## run every benchmark (about 25 minutes) and render benchmarks/RESULTS.md from their raw results
	$(RUN) python -m benchmarks.run_all

bench-render: sync ## re-render benchmarks/RESULTS.md from the committed raw results, measuring nothing
	$(RUN) python -m benchmarks.report

bench-quick: sync ## every benchmark at smoke scale into a scratch directory (checks the scripts, not the figures)
	$(RUN) python -m benchmarks.run_all --quick --results-dir .riverbed-bench/quick/results

bench-graph: sync ## asset graph on UCI Adult and 1,000,000 generated rows vs the Parquet I/O floor
	$(RUN) python -m benchmarks.run_all --only graph

bench-ingestion: sync ## Kafka ingestion of 1,000,000 records through the sensor
	$(RUN) python -m benchmarks.run_all --only ingestion

bench-monitoring: sync ## one monitoring run over 100,000 logged predictions, in a fresh process
	$(RUN) python -m benchmarks.run_all --only monitoring

bench-drift: sync ## first drifted record to v2 served (the drift scenario of the demo)
	$(RUN) python -m benchmarks.run_all --only drift

bench-serving: sync ## load-test the serving stack; rewrites the Serving section of benchmarks/RESULTS.md
	$(RUN) python -m benchmarks.serving_benchmark

bench-scale-out: sync ## throughput of one and two gateways behind HAProxy (needs haproxy: make system-packages)
	$(RUN) python -m benchmarks.run_all --only scale_out

bench-imports: sync ## import time of each heavy library and entry module in fresh interpreters
	$(RUN) python -m benchmarks.run_all --only imports

bench-events: sync ## Kafka ingestion (1,000,000 records) and monitoring (100,000 predictions) benchmarks
	$(RUN) python -m benchmarks.run_all --only ingestion monitoring

dashboards: sync ## regenerate the Grafana dashboards' JSON (deploy/grafana/dashboards/) from deploy/grafana/dashboards.py
	$(RUN) python deploy/grafana/dashboards.py

SYSTEM_PACKAGES := prometheus prometheus-alertmanager haproxy chromium chromium-driver fonts-dejavu-core

# Idempotent: installs only what is missing, runs apt-get update only when apt knows no candidate, and starts no
# daemon (a policy-rc.d denies service starts during the install; on a systemd host the units are disabled).
system-packages: ## as root: apt-install Prometheus, Alertmanager (alerting tests), HAProxy (scale-out test) and Chromium with its driver (console browser tests); no daemon started
	@if [ "$$(id -u)" != 0 ]; then \
		echo "system-packages apt-installs $(SYSTEM_PACKAGES): run it as root (sudo make system-packages)," \
			"or ask an administrator to install those Debian packages" >&2; \
		exit 1; \
	fi
	@missing=""; \
	for package in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then echo "system packages already installed: $(SYSTEM_PACKAGES)"; exit 0; fi; \
	export DEBIAN_FRONTEND=noninteractive; log=$$(mktemp); \
	for package in $$missing; do \
		if ! apt-cache policy "$$package" 2>/dev/null | grep -q 'Candidate: [0-9]'; then \
			apt-get update -qq >"$$log" 2>&1 || { cat "$$log" >&2; rm -f "$$log"; exit 1; }; break; \
		fi; \
	done; \
	policy=/usr/sbin/policy-rc.d; added=""; \
	if [ ! -e "$$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$$policy"; chmod 755 "$$policy"; added=1; fi; \
	apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 $$missing >"$$log" 2>&1; status=$$?; \
	if [ -n "$$added" ]; then rm -f "$$policy"; fi; \
	if [ "$$status" != 0 ]; then cat "$$log" >&2; echo "apt-get install$$missing failed ($$status)" >&2; fi; \
	rm -f "$$log"; \
	if [ "$$status" != 0 ]; then exit "$$status"; fi; \
	if [ -d /run/systemd/system ]; then \
		systemctl disable --now prometheus.service prometheus-alertmanager.service haproxy.service >/dev/null 2>&1 || true; \
	fi; \
	echo "installed:$$missing"

clean: ## remove local state (.riverbed/)
	rm -rf .riverbed
