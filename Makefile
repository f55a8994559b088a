# ntds: the two commands (make demo, make test) and the benchmarks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench fixtures baseline clean

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
	$(BIN)/ntds-sensor score pcaps/sample.pcap --baseline config/baseline.json --all -o build/demo/scores.jsonl --summary
	@echo "flows in build/demo/sample-flows.csv, scores in build/demo/scores.jsonl"

# The starter baseline shipped in config/: rebuilt from the project's own generated traffic.
baseline: $(STAMP)
	$(BIN)/python -m pcaps.generate --site-traffic build/site-traffic.pcap
	$(BIN)/ntds-aggregator baseline build build/site-traffic.pcap -o config/baseline.json --min-count 50

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint fixtures
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_meter.py
	$(BIN)/python bench/bench_scoring.py
	$(BIN)/python bench/bench_baseline_build.py
	$(BIN)/python bench/bench_transport.py

clean:
	rm -rf $(VENV) build .pytest_cache
