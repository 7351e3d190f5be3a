# VENV may live outside the clone (CI keys it by a hash of setup.py so clones share one
# 5 GB torch install); the project itself is always installed editable from this clone.
VENV ?= .venv
PY := $(VENV)/bin/python
GRIDRUN := $(VENV)/bin/gridrun
PYTHON ?= python3

.PHONY: install test test-fast demo bench clean

$(VENV)/.deps-installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.deps-installed
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

# The whole suite (what CI runs; under 10 minutes on 2 CPU cores). A test that hangs fails
# after TEST_TIMEOUT seconds instead of eating CI's limit.
TEST_TIMEOUT ?= 300
test: install
	$(PY) -m pytest -q tests --timeout=$(TEST_TIMEOUT)

# The edit loop: everything that starts no Ray and is not marked slow (under 3 minutes).
test-fast: install
	$(PY) -m pytest -q tests -m "not ray and not slow" --timeout=120

demo: install
	$(GRIDRUN) launch grids/smoke.yaml
	$(GRIDRUN) report smoke --out runs/smoke.md

bench: install
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/fused.py --ks 1,2,4,8 --max-processes 4

clean:
	rm -rf runs .pytest_cache build *.egg-info
