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
# The study that status/report/promote/dashboard read: the same overrides as the sweep, e.g.
# make report SWEEP="sweep=lr_dim hydra.sweeper.storage=postgresql://..."; the newest sweep dir is used.
SWEEP ?= sweep=demo

.PHONY: help install browser train sweep status report promote dashboard world test lint bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with pinned torch and the project (idempotent)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC) $(TORCH_INDEX)
	$(PY) -m pip show torch | sed -n 's/^Version: \([^+]*\).*/torch==\1/p' > $(VENV)/constraints.txt
	PIP_CONSTRAINT=$(VENV)/constraints.txt $(PY) -m pip install -q -e ".[dev,ray]"
	touch $(STAMP)

train: install  ## one training run on the embedded default (the world's model learns its new concept, CPU); ARGS="key=value ..."
	$(PY) -m train $(ARGS)

sweep: install  ## the main job: an Optuna study on the embedded default (2 CPU slots, pruning); ARGS="sweep=lr_dim ..."
	$(PY) -m train -m sweep=demo $(ARGS)

status: install  ## table of the newest sweep's trials; SWEEP="sweep=... overrides"
	$(PY) -m sweeper status $(SWEEP) $(ARGS)

report: install  ## static HTML report of the newest sweep (written into its sweep dir)
	$(PY) -m sweeper report $(SWEEP) $(ARGS)

promote: install  ## copy the best trial's best checkpoint to promoted/<study>/ (ARGS="--trial N")
	$(PY) -m sweeper promote $(SWEEP) $(ARGS)

dashboard: install  ## optuna-dashboard on the newest sweep's study, at http://127.0.0.1:8080
	$(PY) -m sweeper dashboard $(SWEEP) $(ARGS)

world: install  ## rebuild the world's shipped models into train/models/assets (about an hour on 2 cores); ARGS="--parts clip ..."
	$(PY) -m evaluate.world_build $(ARGS)

# The report test drives a real Chromium. As root with apt, Debian's package is installed here;
# elsewhere the test says it was skipped and why (it fails under CI=true instead).
browser:  ## Debian's chromium for the report's browser test (as root, when missing)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "could not install chromium: the report's browser test will be skipped"; \
	  else echo "no chromium (apt-get install chromium): the report's browser test will be skipped"; fi; }

test: install browser  ## the whole test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install  ## ruff over the code
	$(PY) -m ruff check train evaluate sweeper hydra_plugins tests bench

bench: install  ## tables: training (uncached vs cached), renders (batched vs one per call), sweep overhead (workers, pruning), local vs Ray, time to an error message, the world's validity
	$(PY) bench/train_throughput.py
	$(PY) bench/eval_throughput.py
	$(PY) bench/sweep_overhead.py
	$(PY) bench/sweep_backends.py
	$(PY) bench/error_latency.py
	$(PY) bench/world_validity.py

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache
