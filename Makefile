PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The suite on one worker per core (pytest-xdist); tests marked xdist_group share one worker.
# `make test TEST_PARALLEL=` runs it in one process.
TEST_PARALLEL ?= -n auto --dist loadgroup

.PHONY: install run test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/recsync demo seed --path data/demo.sqlite
	$(BIN)/recsyncd --config-dir . --state-dir state

test: $(STAMP)
	$(BIN)/python -m pytest -q $(TEST_PARALLEL)

lint: $(STAMP)
	$(BIN)/ruff check recsync tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.sync_bench
	$(BIN)/python -m bench.control_bench
	$(BIN)/python -m bench.front_bench
	$(BIN)/python -m bench.crm_bench
	$(BIN)/python -m bench.tui_bench
	$(BIN)/python -m bench.demo_latency_bench
	$(BIN)/python -m bench.pg_bench
	$(BIN)/python -m bench.cluster_bench
	$(BIN)/python -m bench.salesforce_bench
	$(BIN)/python -m bench.scale_bench

clean:
	rm -rf $(VENV) state run logs .pytest_cache .mypy_cache .ruff_cache
