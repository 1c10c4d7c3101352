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

.PHONY: install sysdeps run test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# constraints.txt pins torch to the CPU build; llama-cpp-python compiles once, then pip's cache keeps the wheel
	$(PIP) install -c constraints.txt -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/turnout serve

# Redis backs the scaled-out shared-state tests; the fixtures start their own server on loopback.
sysdeps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q redis-server >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1)) \
	      || echo "warning: could not install redis-server; the Redis tests will be skipped"; \
	  else echo "note: redis-server not found and not root; the Redis tests will be skipped"; fi; }

test: install sysdeps
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

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
