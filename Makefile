# The two commands of the README: `make run` (the demo) and `make test` (everything).
# Each makes its own virtualenv in .venv the first time.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint bench bench-quick clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/flask-sse-stream serve examples.demo:app --host $(HOST) --port $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check flask_sse_stream tests examples benchmarks
	$(BIN)/ruff format --check flask_sse_stream tests examples benchmarks
	$(BIN)/mypy

# The Redis tests run again in a process gevent has patched, as the Redis
# broker requires; in the first run they are skipped.
test: lint
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/python -m gevent.monkey --module pytest -p no:cacheprovider tests/broker -m redis

# The benchmarks against the peers (docs/benchmarks.md); the peers get a
# virtualenv of their own, benchmarks/.venv. `bench` measures the last commit
# (about 13 minutes) and rewrites docs/benchmarks.md; `bench-quick` prints a
# small run of the working tree (about 90 s).
benchmarks/.venv/.installed: benchmarks/requirements-peers.txt | $(BIN)/.installed
	$(BIN)/python benchmarks/core.py --setup
	touch $@

bench: benchmarks/.venv/.installed
	$(BIN)/python benchmarks/core.py --ref HEAD

bench-quick: benchmarks/.venv/.installed
	$(BIN)/python benchmarks/core.py --quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
