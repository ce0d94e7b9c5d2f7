# Two commands on a fresh machine: `make run` (one search job, embedded) and `make test`.
# Both install exactly requirements.lock (the whole dependency set, pinned), as CI and the
# Dockerfile do: every machine runs what CI tested.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: run test lint services bench lock optuna-contract clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@touch $@

## run: the digits search job on the embedded default (SQLite + local Ray), then its best trial
run: $(STAMP)
	$(BIN)/automl run examples/digits.yaml

## test: lint, types, plane contracts, then the whole suite (real PostgreSQL, Ray, Chromium)
test: $(STAMP) services lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## services: what the tests talk to: PostgreSQL at 127.0.0.1:5432 and Debian's Chromium
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

## bench: every benchmark, each printing its table (docs/benchmarks.md)
bench: $(STAMP) services
	$(BIN)/automl-bench replay
	$(BIN)/automl-bench replay-pareto
	$(BIN)/automl-bench overhead
	$(BIN)/automl-bench cache
	$(BIN)/automl-bench cache-scale
	$(BIN)/automl-bench loader
	$(BIN)/automl-bench storage
	$(BIN)/automl-bench api
	$(BIN)/automl-bench serve
	$(BIN)/automl-bench soak
	$(BIN)/automl-bench gpu
	$(BIN)/automl-bench evaluate

## lock: pin the whole dependency set again after changing pyproject.toml's dependencies
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -o $(LOCK)

## optuna-contract: Optuna's own storage and pruner tests against our storage and pruners
optuna-contract: $(STAMP) services
	$(BIN)/python scripts/optuna_contract.py --postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test

clean:
	rm -rf $(VENV) automl-data .pytest_cache .mypy_cache .ruff_cache
