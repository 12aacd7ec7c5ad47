# Set-up and everyday commands. Every target creates .venv if it is missing and
# installs the project into it, so `make demo` and `make test` work on a fresh
# machine. The CPU build of torch is pinned here; a GPU user overrides it, e.g.
# `make install TORCH=torch` after installing their CUDA build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo check test test-slow test-all lint bench bench-scale bench-policy bench-envs bench-analysis bench-coordination clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Independent cascade on 100,000 agents, 2 shards, embedded local Ray.
demo: $(STAMP)
	$(VENV)/bin/swarm run examples/cascade.yaml --out runs/demo --overwrite

# Test tiers (README, under "Two commands"; markers in pyproject.toml and tests/conftest.py).
# The edit loop, under a minute: unit and small in-process engine tests.
check: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow and not integration"

# What CI runs (.ci/run), under 5 minutes: everything but `slow`.
test: $(STAMP)
	$(VENV)/bin/pytest -q

# Only what `make test` leaves out (`slow`): large n (1e6 agents), multi-node clusters,
# long CLI runs that repeat cheaper tests.
test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

# Both: `make test` and `make test-slow` in one run.
test-all: $(STAMP)
	$(VENV)/bin/pytest -q -m "slow or not slow"

# ruff, then the layers of DESIGN.md as import-linter contracts (pyproject.toml). grimp
# reads packages from one folder, so the mapped folders (envs/ -> swarm/envs, ...) are
# copied into build/layers first, as an install lays them out.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	rm -rf build/layers && mkdir -p build/layers && cp -r swarm build/layers/swarm
	for d in envs policies analysis cluster; do cp -r $$d build/layers/swarm/$$d; done
	cd build/layers && PYTHONPATH=. ../../$(VENV)/bin/lint-imports ../../pyproject.toml

# Speed harness: swarm vs a bare numpy floor, NDlib and Mesa (installs their requirements).
bench: $(STAMP)
	$(PY) -m pip install -q -r benchmarks/requirements.txt
	$(PY) -m benchmarks.bench_cascade

# Scale-out harness: IC on ER at n=1e8 (2 shards) against a naive numpy/scipy build,
# 1 vs 2 shards at 1e7, a 4-node cluster; whole-process time and peak PSS (~15 min, 15 GiB).
bench-scale: $(STAMP)
	$(PY) -m benchmarks.bench_scale

# LLM-style agents: per-agent model calls vs batched vs batched + dedup (tiny model, CPU).
bench-policy: $(STAMP)
	$(PY) -m benchmarks.bench_policy

# The feed at 1e5 agents (recommender on) and consensus gossip at 1e6: agent-steps/s
# and the share of step time in each stage.
bench-envs: $(STAMP)
	$(PY) -m benchmarks.bench_envs

# swarm analyze on a 1e6-agent feed run (> 1e7 events): seconds per analysis, peak memory.
bench-analysis: $(STAMP)
	$(PY) -m benchmarks.bench_analysis

# AgentsNet's five tasks by classical baselines, n=1e2..1e6, under drop, crash and Byzantine
# faults: success, AgentsNet score, rounds vs the 2D+1 budget, messages/agent (~20-25 min).
bench-coordination: $(STAMP)
	$(PY) -m benchmarks.bench_coordination

clean:
	rm -rf runs .pytest_cache
