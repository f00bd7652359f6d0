# Sniffer's developer entry points. Everything installs into ./.venv from the
# package registries; the testbed's Go binaries are cached under ~/.cache/sniffer.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: all install testbed test test-stress test-jaeger lint unit demo bench bench-quick soak clean lock

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# testbed.image: Sniffer's image from the Dockerfile (buildah, no registry), cached by
# content under ~/.cache/sniffer; a warm call only hashes the build context.
testbed: $(STAMP)
	$(PY) -m testbed.build
	$(PY) -m testbed.nodepackages
	$(PY) -m testbed.nodebuild
	$(PY) -m testbed.image

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

# The suite imports the benchmark harness too (tests/test_bench_*.py) and ends with
# bench-quick, so it installs the bench extra.
test: $(BENCH_STAMP) testbed lint
	$(VENV)/bin/pytest -q -m "not jaeger"
	$(MAKE) bench-quick

# The tests that start real servers, STRESS_RUNS times under CPU load (one busy process per
# core, started and stopped by the run); prints failures per test (tests/stress.py).
STRESS_RUNS ?= 3
test-stress: $(BENCH_STAMP) testbed
	$(PY) -m tests.stress --runs $(STRESS_RUNS) $(STRESS_ARGS)

# The trace read back from a real Jaeger; builds Jaeger (~15 min cold) when not cached.
test-jaeger: install testbed
	$(PY) -m testbed.jaeger build
	$(VENV)/bin/pytest -q -m jaeger

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not testbed"

demo: install testbed
	$(PY) -m testbed.demo $(DEMO_ARGS)

# Benchmarks (bench/): Sniffer side by side with its peers on one testbed. `bench` is the
# full run (3 interleaved trials of every row, about 53 minutes on 2 cores, arithmetic in
# docs/benchmarks.md; BENCH_ARGS="--help" lists its options); `bench-quick` is the
# ~3-minute smoke run of every scenario and peer (one trial) that asserts every run
# ended right, never a speed. Both end with bench.jobcost: the watcher's cost
# per Job-backed run beside a bare pod's. In `bench` it plays 400 runs of each kind a
# trial (its default 2,000 took ~17 minutes, which would put `make bench` past the hour;
# 400 take ~4, so the whole stays near 57 minutes); JOBCOST_ARGS="--runs 2000" restores
# the long run. The quick one plays 20. The bench extra adds kopf, psutil, matplotlib.
JOBCOST_ARGS ?= --runs 400 --trials 3

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@rm -f $(VENV)/.bench-* && touch $@

bench: $(BENCH_STAMP) testbed
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.jobcost $(JOBCOST_ARGS)

bench-quick: $(BENCH_STAMP) testbed
	$(PY) -m bench --quick $(BENCH_ARGS)
	$(PY) -m bench.jobcost --runs 20 --trials 1 --out bench/results/quick

# Reliability (tests/reliability): the full fault matrix - one scenario per fault of issue 8,
# 1,000 jobs each, the two-minute platform outage at full length - then a soak of
# SOAK_MINUTES at steady load with periodic faults that checks the watchers' RSS, file
# descriptors and asyncio tasks stay flat. About 35 minutes on 2 cores (2026-11-26). Results go to
# .testbed/reliability/full/results-full.json; docs/reliability.md is rewritten from them.
# The fast scenarios of the matrix run in `make test` (tests/reliability/test_scenarios.py).
SOAK_MINUTES ?= 15
soak: install testbed
	$(PY) -m tests.reliability --suite full --soak $(SOAK_MINUTES) \
	  --docs docs/reliability.md --command "make soak" $(SOAK_ARGS)

# The hashed lock files the Dockerfile installs from: pyproject.toml's runtime
# dependencies (requirements.lock) and its build backend (requirements-build.lock).
# Existing pins are kept; add UV_ARGS=--upgrade to move transitive pins forward.
LOCK := $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform linux --custom-compile-command "make lock" $(UV_ARGS)
lock: $(STAMP)
	$(LOCK) pyproject.toml -o requirements.lock
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(LOCK) - -o requirements-build.lock

clean:
	rm -rf $(VENV) .testbed .pytest_cache .mypy_cache .ruff_cache
