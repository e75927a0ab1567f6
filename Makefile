# Two commands on a fresh machine: `make sweep` (the main job) and `make test`.
# Each installs what it needs first; `make install` is idempotent.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch goes in first, pinned, so nothing else can pull another build.
# With CUDA: make install TORCH_SPEC="torch==2.5.1" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install train sweep test lint bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with pinned torch and the project (idempotent)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC) $(TORCH_INDEX)
	$(PY) -m pip show torch | sed -n 's/^Version: \([^+]*\).*/torch==\1/p' > $(VENV)/constraints.txt
	PIP_CONSTRAINT=$(VENV)/constraints.txt $(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: install  ## one training run on the embedded default (tiny model, synthetic data, CPU); ARGS="key=value ..."
	$(PY) -m train $(ARGS)

sweep: install  ## the main job: an Optuna study on the embedded default (2 CPU slots, pruning); ARGS="sweep=lr_dim ..."
	$(PY) -m train -m sweep=demo $(ARGS)

test: install  ## the whole test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install  ## ruff over the code
	$(PY) -m ruff check train evaluate sweeper hydra_plugins tests bench

bench: install  ## tables: training (uncached vs cached), renders (batched vs one per call), sweep overhead (workers, pruning)
	$(PY) bench/train_throughput.py
	$(PY) bench/eval_throughput.py
	$(PY) bench/sweep_overhead.py

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache
