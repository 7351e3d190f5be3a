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

# The benchmarks that mean something on a CPU, each sized to about a minute on 2 cores, through
# the harness (`python -m benchmarks` lists them all); every figure is a JSON row, with its
# same-run baseline and ratio, appended to BENCH_OUT. The GPU's: tools/gpu/run.sh. One torch
# thread: on the shared 2-core CPU two threads made a single trial's epoch 0.58x as fast in one
# test (spinning OpenMP threads wait for each other), skewing in-process variants against the rest.
BENCH_OUT ?= runs/bench.jsonl
BENCH := $(PY) -m benchmarks
bench: install
	$(BENCH) throughput --device cpu --threads 1 --steps 40 --workers 0 2 --out $(BENCH_OUT)
	$(BENCH) fused --device cpu --threads 1 --ks 2 --steps 10 --max-processes 2 --out $(BENCH_OUT)
	$(BENCH) engine --device cpu --models tinynet_7k --ks 1,8 --batch 32 --steps 2 --least-s 0 --out $(BENCH_OUT)
	$(BENCH) grouped_conv --device cpu --ks 1,4,8 --reps 3 --out $(BENCH_OUT)
	$(BENCH) augment_stack --device cpu --ks 1,8 --seconds 2 --out $(BENCH_OUT)
	$(BENCH) step_speed --device cpu --models tinynet_7k --batch 128 --steps 20 \
		--variants eager,channels_last,bf16 --out $(BENCH_OUT)
	$(BENCH) load_5000 --trials 1000 --out $(BENCH_OUT)

clean:
	rm -rf runs .pytest_cache build *.egg-info
