# Two commands set up a fresh machine: `make run` and `make test`.
# The venv is built once and rebuilt when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Tests and the embedded llama.cpp fleet share 2 cores: spinning OpenMP threads stall each other.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false
# numpy's BLAS threads spin after a fit and slow one-row inference (MiniLM p50 3 ms -> 20 ms measured)
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install sysdeps run test test-fast lint bench clean replicas

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# constraints.txt pins torch to the CPU build; llama-cpp-python compiles once, then pip's cache keeps the wheel
	$(PIP) install -c constraints.txt -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/turnout serve

# Redis and nginx back the scaled-out tests and the replicas recipe; the fixtures start their own servers on loopback.
sysdeps:
	@for pkg in redis-server nginx; do \
	  command -v $$pkg >/dev/null 2>&1 || [ -x /usr/sbin/$$pkg ] || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      (apt-get install -y -q $$pkg >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$pkg >/dev/null 2>&1)) \
	        || echo "warning: could not install $$pkg; the tests that need it will be skipped"; \
	    else echo "note: $$pkg not found and not root; the tests that need it will be skipped"; fi; }; \
	done

# ruff (lint and format), mypy (strict on the core rooms: pyproject.toml), the import contracts
lint: install
	$(VENV)/bin/ruff check src tests bench deploy
	$(VENV)/bin/ruff format --check src tests bench deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: install sysdeps lint
	$(PY) -m pytest -q

# N turnout replicas behind nginx sharing one redis-server, in front of two llama.cpp replicas (docs/deploy.md)
replicas: install sysdeps
	$(PY) deploy/replicas.py $(ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/routing_quality.py
	$(PY) bench/auto_pick.py
	@for t in routerbench dcrouter; do f=../shared/data/$$t/$$t.parquet; [ -f $$f ] || continue; \
	  $(VENV)/bin/turnout eval $$f --repeats 5 --json bench/results/repeats_$$t.json --plot bench/results/repeats_$$t.png; done
	$(PY) bench/routing_scale.py
	$(PY) bench/gateway_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
