# Two commands set up a fresh machine: `make run` and `make test`.
# The venv is built once and rebuilt when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Tests and the embedded llama.cpp fleet share 2 cores: spinning OpenMP threads stall each other.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# constraints.txt pins torch to the CPU build; llama-cpp-python compiles once, then pip's cache keeps the wheel
	$(PIP) install -c constraints.txt -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/turnout serve

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/routing_quality.py
	$(PY) bench/gateway_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
