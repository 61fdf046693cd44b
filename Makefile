# Two commands set up a fresh clone: `make run` and `make test`. Both create .venv and
# install the project into it first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SIZE ?= demo
SEED ?= 0
PORT ?= 3000
# the test suite's worker processes (pytest-xdist): one per core of the 2-core CI machine.
# Each test module runs on one worker (--dist loadfile), so that a module-scoped fixture (a
# `dagster dev` with a browser, a refit that many tests read) is built once. (--dist loadgroup
# would not do: pytest 9.2 ignores the xdist_group marks it relies on, pytest-xdist#1386.)
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

export DAGSTER_HOME := $(CURDIR)
export JAX_PLATFORMS := cpu

.PHONY: install system-deps run demo-data test test-fast validate ui bench clean

# Debian packages the tests need: Chromium for the browser test of the UI (driven by
# Playwright's Python package, never its own browser download) and a PostgreSQL server
# for the test of deploy/'s instance configuration.

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,deploy]"
	touch $@

install: $(VENV)/.installed

system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

data/cleaned/athlete_race.csv: | $(VENV)/.installed
	$(BIN)/racedayai-bayes demo-data --size $(SIZE) --seed $(SEED) --out data/cleaned

## demo-data: (re)write the synthetic input CSVs (SIZE=demo|full, SEED=N)
demo-data: install
	$(BIN)/racedayai-bayes demo-data --size $(SIZE) --seed $(SEED) --out data/cleaned

## run: generate demo data if missing, then refit both distances on the local instance
run: install data/cleaned/athlete_race.csv
	$(BIN)/racedayai-bayes refit

## test: the whole test suite, then validate the code location
test: install system-deps
	$(PYTEST)
	$(MAKE) --no-print-directory validate

## validate: load the code location that pyproject.toml's [tool.dg] names, as a deployment would
validate: install
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs

## test-fast: the suite without tests marked slow
test-fast: install
	$(PYTEST) -m "not slow"

## ui: the Dagster UI and daemon on http://127.0.0.1:$(PORT)
ui: install
	$(BIN)/dagster dev -h 127.0.0.1 -p $(PORT) -w workspace.yaml

## bench: engine comparison and full-scale run; writes bench/results.json and bench/RESULTS.md
bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf data/outputs history storage schedules logs .logs_queue refit_logs .pytest_cache
