# ntds: the two commands (make demo, make test) and the benchmarks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench fixtures clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

fixtures: $(STAMP)
	$(BIN)/python -m pcaps.generate > /dev/null

demo: fixtures
	mkdir -p build/demo
	$(BIN)/ntds-sensor features pcaps/sample.pcap -o build/demo/sample-flows.csv --summary
	@echo "flows written to build/demo/sample-flows.csv"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint fixtures
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_meter.py
	$(BIN)/python bench/bench_scoring.py

clean:
	rm -rf $(VENV) build .pytest_cache
