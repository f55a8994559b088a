# ntds: the two commands (make demo, make test) and the benchmarks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo ui test lint bench fixtures baseline clean system-packages

$(STAMP): pyproject.toml requirements.lock setup.py $(wildcard ntds/flows/*.c ntds/flows/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

fixtures: $(STAMP)
	$(BIN)/python -m pcaps.generate > /dev/null

# The whole product on the project's own campus week: generate the traffic, build a site
# baseline, start an aggregator on 127.0.0.1 with fresh keys, replay the week through a
# sensor, build the weekly report, print what it found, stop everything it started.
demo: $(STAMP)
	$(BIN)/python -m demo

# The alert manager over the demo's store, on 127.0.0.1:8080, with a one-time login it prints.
# One command, run without a shell: make's SIGTERM reaches it, and it stops the UI it started.
DEMO_DIR ?= build/demo
ui: $(STAMP)
	$(BIN)/python -m demo.ui --workdir $(DEMO_DIR)

# The starter baseline shipped in config/: rebuilt from the project's own generated traffic.
baseline: $(STAMP)
	$(BIN)/python -m pcaps.generate --site-traffic build/site-traffic.pcap
	$(BIN)/ntds-aggregator baseline build build/site-traffic.pcap -o config/baseline.json --min-count 50

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian packages the tests drive: headless Chromium and its driver (report rendering, alert manager), tcpreplay
# (live capture), systemd-analyze (unit files), iproute2 (network namespaces), strace (the units' system call filters),
# tshark (Wireshark's reader opens the packets behind alerts).
DEB_PACKAGES := chromium chromium-driver tcpreplay systemd iproute2 strace tshark
system-packages:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v tcpreplay >/dev/null && command -v systemd-analyze >/dev/null \
	    && command -v ip >/dev/null && command -v strace >/dev/null && command -v tshark >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(DEB_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
	else echo "warning: install $(DEB_PACKAGES) (as root) or the tests that need them are skipped" >&2; fi

# Two workers (the machine's cores); the tests of one file share a worker: module fixtures and the demo's folder.
test: lint fixtures system-packages
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/bench_meter.py
	$(BIN)/python bench/bench_scoring.py
	$(BIN)/python bench/bench_baseline_build.py
	$(BIN)/python bench/bench_report.py
	$(BIN)/python bench/bench_sensor.py
	$(BIN)/python bench/bench_transport.py
	$(BIN)/python bench/bench_detection.py
	$(BIN)/python bench/bench_broadcast.py
	$(BIN)/python bench/bench_evidence.py
	$(BIN)/python bench/bench_intel.py
	$(BIN)/python bench/bench_prevalence.py

clean:
	rm -rf $(VENV) build .pytest_cache
