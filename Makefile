# One entry point: `make demo` runs the whole pipeline on the demo data, `make test` the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := data/demo

.PHONY: install demo demo-data test bench clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

$(DEMO)/.complete: | $(STAMP)
	$(BIN)/python -m synapse_nb demo-data --out $(DEMO)
	touch $@

demo-data: $(DEMO)/.complete

demo: $(STAMP) $(DEMO)/.complete
	$(BIN)/python -m synapse_nb run parameters/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_network.py
	$(BIN)/python benchmarks/bench_cubes.py

clean-runs:
	rm -rf runs reports/run_*
