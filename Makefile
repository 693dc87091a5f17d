# modtrain: `make demo` and `make test` work on a fresh clone.
# TORCH picks the torch requirement: CI pins the CPU wheel (TORCH=torch==2.13.0);
# the default lets pip choose the build for your machine.
PYTHON ?= python3
TORCH ?= torch
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/modtrain data generate $(DEMO_DIR)/data --families no-relate --force
	$(BIN)/modtrain data features $(DEMO_DIR)/data
	$(BIN)/modtrain data prepare $(DEMO_DIR)/data
	$(BIN)/modtrain data info $(DEMO_DIR)/data

bench: $(STAMP)
	$(BIN)/python bench/bench_data.py --out bench/results/data.json

clean:
	rm -rf $(VENV) runs bench/results
