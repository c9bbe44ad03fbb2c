# Two commands for a new machine: `make run` serves, `make test` proves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.runtime-stamp

.PHONY: install run test lint check-rules test-rules services clean bench schema

# `make run` needs the runtime dependencies only; pytest, ruff, psycopg & co. come with `make test` (dev extra).
$(RUN_STAMP): pyproject.toml
	@./scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/kbladder serve

lint: install
	$(BIN)/ruff check cds_service tests $(wildcard bench)

check-rules: install
	$(BIN)/kbladder rules check rules

test-rules: install
	$(BIN)/kbladder rules test rules/tests

# Regenerate the rule JSON Schema (block registry + hook table) and the editors' copy in rules/schema.
schema: install
	$(BIN)/python -m cds_service.engine.schema rules/schema

# What the tests talk to: a real FHIR server (own venv), PostgreSQL, and a headless Chromium.
services:
	@./scripts/ensure-fhir-server.sh
	@./scripts/ensure-postgres.sh
	@./scripts/ensure-chromium.sh

test: install lint check-rules test-rules services
	$(BIN)/pytest -q

# Latency, JSON floor, HTTP throughput, FHIR fallback, rule scaling, RSS: one table (docs/performance.md).
bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
