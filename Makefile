# The two commands a new user needs: `make serve` (the demo) and `make test`.
# Each creates .venv on first use and installs the exact versions in requirements/constraints.txt.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
HOST ?= 127.0.0.1
PORT ?= 8000
# `make test` runs pytest on this many processes, a test file's tests on one of them; then
# the tests marked `alone` (they measure the memory of the servers they start) by themselves.
PYTEST_WORKERS ?= 2

.PHONY: proto serve test test-hostile lint typecheck pytest bench bench-protocols bench-grpc bench-memory bench-transformers bench-generate bench-tracing bench-tracing-together bench-tracing-instructions bench-request-log lock clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"

# Stamp files: reinstall only when the project's metadata or the pins change.
$(VENV)/.serve-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[sklearn]'
	@touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	@touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/loadonce serve --demo --host $(HOST) --port $(PORT)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests docs/examples bench
	$(BIN)/ruff format --check src tests docs/examples bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

# wrk (Debian's package) drives the benchmark harness's smoke test. Installing it needs root;
# without root (and without wrk) that one test is skipped with a message, except in CI.
pytest: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk; } || echo "note: wrk is not installed and cannot be without root (apt-get install wrk); the benchmark smoke test is skipped" >&2
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not alone"
	$(BIN)/pytest -m alone

test: lint typecheck pytest

# The hostile-input and fault tests alone (they also run in `make test`).
test-hostile: $(VENV)/.test-installed
	$(BIN)/pytest tests/hostile

# Benchmarks (not part of `make test`): see docs/benchmarks.md. Needs wrk (Debian's package);
# installs LitServe, MLServer and matplotlib into their own environments under bench/.venvs.
# BENCH_ARGS=--quick for a smoke run.
bench: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.compare $(BENCH_ARGS)

# The JSON route against the Open Inference Protocol (JSON and binary tensors), one server.
bench-protocols: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.protocols

# gRPC against REST (binary and JSON tensors), one server: a Python closed-loop generator for
# all three, wrk for the two REST forms. About 6 minutes; BENCH_ARGS=--quick for a smoke run.
bench-grpc: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.grpc_rest $(BENCH_ARGS)

# Memory with 1 and 4 workers, weights shared or not (about 4 GB of generated artifacts).
bench-memory: $(VENV)/.test-installed
	$(BIN)/python -m bench.memory

# A Transformers text classifier without and with batching, and a plain FastAPI endpoint
# calling the same pipeline (the test environment holds torch and transformers). About 5 minutes.
# Token streaming: tokens/s and time to first token, 1 and 8 streams (docs/benchmarks.md).
bench-generate: $(VENV)/.test-installed
	$(BIN)/python -m bench.generate $(BENCH_ARGS)

# What OpenTelemetry tracing costs: forest, 64 connections, off / 10% / 100% sampled.
bench-tracing: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.tracing $(BENCH_ARGS)

# The same with the servers running at once on one core, judged on requests per CPU-second:
# for a machine whose speed drifts too much for runs taken in turn.
bench-tracing-together: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.tracing_together $(BENCH_ARGS)

# Tracing's cost on the event loop in instructions (callgrind): figures that do not drift with
# the machine's load, for when wrk's cannot be trusted.
bench-tracing-instructions: $(VENV)/.test-installed
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	$(BIN)/python -m bench.tracing_instructions $(BENCH_ARGS)

# What the per-request log line costs: the demo at 512 connections, info against warning.
bench-request-log: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.request_log $(BENCH_ARGS)

bench-transformers: $(VENV)/.test-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.transformers $(BENCH_ARGS)

# Re-pin after changing dependencies: installs the newest allowed versions into a scratch venv.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade "pip==26.3"
	.venv-lock/bin/pip install --quiet -e '.[test]'
	.venv-lock/bin/pip freeze --exclude-editable --exclude loadonce > $(CONSTRAINTS)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Regenerate src/loadonce/protocols/grpc/_descriptors.py from proto/*.proto (grpcio-tools).
proto: $(VENV)/.test-installed
	$(BIN)/python proto/generate.py
