# modtrain: `make demo` and `make test` work on a fresh clone.
# TORCH picks the torch requirement: CI pins the CPU wheel (TORCH=torch==2.13.0);
# the default lets pip choose the build for your machine.
PYTHON ?= python3
TORCH ?= torch
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install test lint demo bench bench-long clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP)

# two pytest-xdist workers: most of the suite trains tiny models in Python, a core each (tests/conftest.py)
test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadgroup --durations=10

# ruff, as configured in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .

# The whole pipeline on the default procedural dataset: data (generate, features, prepare),
# then nmn-typed module by module, then the accuracy table. A rerun skips what is up to date.
demo: $(STAMP)
	$(BIN)/modtrain plan --recipe nmn-typed
	$(BIN)/modtrain run --recipe nmn-typed --workdir $(DEMO_DIR)

bench: $(STAMP)
	$(BIN)/python bench/bench_data.py --out bench/results/data.json
	$(BIN)/python bench/bench_modular.py --out bench/results/modular.json
	$(BIN)/python bench/bench_clevr.py --out bench/results/clevr.json
	$(BIN)/python bench/bench_workers.py --out bench/results/workers.json

# The method's experiments (several hours on 2 CPU cores; each JSON records its wall time):
# Table 2 (four-module NMN, every CLEVR program, VQA; shared defaults and tuned), Fig. 7/8,
# per-module search, generalization by depth, how every cost grows with the data (1x, 4x, 16x),
# Stack-NMN and LNMN against the NMN, find as a learnable cell, the seed systems' step speed,
# injected faults and mutation testing.
bench-long: $(STAMP)
	$(BIN)/python bench/bench_compare.py --out bench/results/compare.json
	$(BIN)/python bench/bench_compare.py --tune 4 --workdir runs/bench-compare-tuned --out bench/results/compare-tuned.json
	$(BIN)/python bench/bench_compare.py --recipe nmn-clevr --images 1000 --out bench/results/compare-clevr.json
	$(BIN)/python bench/bench_correlation.py --address local --out bench/results/correlation.json
	$(BIN)/python bench/bench_trust.py --address local --out bench/results/trust.json
	$(BIN)/python bench/bench_tune.py --out bench/results/tune.json
	$(BIN)/python bench/bench_depth.py --images 2000 --out bench/results/depth.json
	$(BIN)/python bench/bench_depth.py --images 2000 --reference --reuse --out bench/results/depth-reference.json
	$(BIN)/python bench/bench_compare.py --recipe nmn-vqa --workdir runs/bench-compare-vqa --out bench/results/compare-vqa.json
	$(BIN)/python bench/bench_scale.py --out bench/results/scale.json
	$(BIN)/python bench/bench_scale.py --find-memory --out bench/results/scale.json
	$(BIN)/python bench/bench_scale.py --features resnet-shape --images 7000 --out bench/results/scale.json
	$(BIN)/python bench/bench_shuffle.py --seeds 0 1 2 3 4 5 6 7 --out bench/results/shuffle.json
	$(BIN)/python bench/bench_assembler.py runs/bench-clevr runs/bench-modular --rounds 8 --out bench/results/assembler.json
	$(BIN)/python bench/bench_snmn.py --images 2000 --parallel 2 --workdir runs/bench-snmn-2000 --out bench/results/snmn-2000.json
	$(BIN)/python bench/bench_cell_find.py --out bench/results/cell-find.json
	$(BIN)/python bench/bench_speed.py --out bench/results/speed.json
	$(BIN)/python bench/bench_speed.py --parallel --out bench/results/speed-parallel.json
	$(BIN)/python bench/bench_compile.py --recipe snmn-gt --out bench/results/compile.json
	$(BIN)/python bench/bench_faults.py --out bench/results/faults.json
	$(BIN)/python bench/bench_mutation.py --out bench/results/mutation.json

clean:
	rm -rf $(VENV) runs
