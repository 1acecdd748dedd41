# One entry point: `make demo` runs the whole pipeline on the demo data, `make test` the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := data/demo

REALDATA ?= ../shared/realdata
VNC    := data/vnc

.PHONY: install demo demo-data demo-hard-data connectome-data demo-connectome vnc test bench clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# compile UMAP's numba kernels once into .numba_cache (the runner and notebooks use it)
	NUMBA_CACHE_DIR=$(CURDIR)/.numba_cache $(BIN)/python -c "from synapse_nb.analysis.reduce import compile_kernels as c; print('numba kernels compiled:', c())"
	touch $(STAMP)

install: $(STAMP)

$(DEMO)/.complete: | $(STAMP)
	$(BIN)/python -m synapse_nb demo-data --out $(DEMO)
	touch $@

demo-data: $(DEMO)/.complete

# The harder demo: 5 classes of equal size that differ in texture/shape, brightness per bbox.
data/demo_hard/.complete: | $(STAMP)
	$(BIN)/python -m synapse_nb demo-data --preset hard --out data/demo_hard
	touch $@

demo-hard-data: data/demo_hard/.complete

# The synthetic connectome (1024 x 1024 x 512 voxels, 3000 synapses; zarr + webKnossos layers).
data/connectome/.complete: | $(STAMP)
	$(BIN)/python -m synapse_nb connectome-data --out data/connectome
	touch $@

connectome-data: data/connectome/.complete

# A connectome run: 300 sampled synapses built and extracted on a local Dask cluster.
demo-connectome: $(STAMP) data/connectome/.complete
	$(BIN)/python -m synapse_nb run parameters/connectome_demo.yaml

demo: $(STAMP) $(DEMO)/.complete
	$(BIN)/python -m synapse_nb run parameters/demo.yaml

# Real data (CC BY-NC-SA 3.0, never committed): the Drosophila VNC ssTEM stack, converted once.
$(VNC)/dataset.yaml: | $(STAMP)
	$(BIN)/python -m synapse_nb convert-vnc --src $(REALDATA)/drosophila_vnc_sstem --out $(VNC)

vnc: $(STAMP) $(VNC)/dataset.yaml
	$(BIN)/python -m synapse_nb run parameters/vnc.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_network.py
	$(BIN)/python benchmarks/bench_cubes.py
	$(BIN)/python benchmarks/bench_volumes.py
	$(BIN)/python benchmarks/bench_attention.py

clean-runs:
	rm -rf runs reports/run_*
