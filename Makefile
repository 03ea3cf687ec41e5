# The two commands of the README: `make run` (the demo) and `make test` (everything).
# Each makes its own virtualenv in .venv the first time.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run run-htmx run-llm run-datastar vendor test test-flask-next lint soak docs dist sdist-test bench bench-quick bench-scale bench-workers soak-failover clean

# The project editable, with the `dev` dependency group of pyproject.toml
# (test, lint and docs tools; groups need pip >= 25.1).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/pip install --quiet -e . --group dev
	touch $@

run: $(BIN)/.installed
	$(BIN)/flask-sse-stream serve examples.demo:app --host $(HOST) --port $(PORT)

# The other examples (examples/*.py, each with a page in the guide), on the same address.
run-htmx: $(BIN)/.installed
	$(BIN)/flask-sse-stream serve examples.htmx_dashboard:app --host $(HOST) --port $(PORT)

run-llm: $(BIN)/.installed
	$(BIN)/flask-sse-stream serve examples.llm_tokens:app --host $(HOST) --port $(PORT)

run-datastar: $(BIN)/.installed
	$(BIN)/flask-sse-stream serve examples.datastar_counter:app --host $(HOST) --port $(PORT)

# The browser libraries the examples serve (htmx, its sse extension,
# eventsource-parser), from the npm registry into examples/static/vendor with
# their licenses; the result is committed, so the examples need no npm.
vendor: $(BIN)/.installed
	$(BIN)/python examples/vendor.py

lint: $(BIN)/.installed
	$(BIN)/ruff check flask_sse_stream tests examples benchmarks docs/conf.py docs/examples
	$(BIN)/ruff format --check flask_sse_stream tests examples benchmarks docs/conf.py docs/examples
	$(BIN)/mypy

# The documentation site, warnings as errors: docs/_build/html/index.html.
docs: $(BIN)/.installed
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html

# The sdist and wheel in dist/, checked as PyPI would check them.
dist: $(BIN)/.installed
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist .
	$(BIN)/twine check --strict dist/*

# The whole test suite run from an unpacked sdist, as distributions run it
# (`make test` runs a part of it, in tests/test_dist.py).
sdist-test: dist
	rm -rf build/sdist-test && mkdir -p build/sdist-test
	tar -xzf dist/*.tar.gz -C build/sdist-test
	cd build/sdist-test/flask_sse_stream-* && $(CURDIR)/$(BIN)/python -m pytest -p no:cacheprovider \
		&& $(CURDIR)/$(BIN)/python -m gevent.monkey --module pytest -p no:cacheprovider tests/broker -m redis

# Lint, the docs and the distributions first. The Redis tests run again in a
# process gevent has patched, as the Redis broker requires; in the first run
# they are skipped. Then the stream tests run once more against the next
# Flask (test-flask-next).
test: lint docs dist
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/python -m gevent.monkey --module pytest -p no:cacheprovider tests/broker -m redis
	$(MAKE) test-flask-next

# The reliability suite at full length (docs/reliability.md): 10,000
# connections that end badly per server, on each of the four servers, with
# fds, greenlets, RSS and open streams compared before and after (a few
# minutes). `make test` runs it with 200 per server. SOAK_REPORT collects
# the figures as JSON lines. Then the history-TTL tests with SOAK_CHANNELS
# short-lived channels in the memory broker and in Redis (10,000 in `make test`).
SOAK_CYCLES ?= 10000
SOAK_CHANNELS ?= 100000
SOAK_REPORT ?= soak-report.jsonl

soak: $(BIN)/.installed
	rm -f $(SOAK_REPORT)
	SOAK_CYCLES=$(SOAK_CYCLES) SOAK_REPORT=$(abspath $(SOAK_REPORT)) $(BIN)/pytest -p no:cacheprovider -rP tests/soak
	SOAK_CHANNELS=$(SOAK_CHANNELS) $(BIN)/pytest -p no:cacheprovider -q tests/broker/test_memory.py -k short_lived_channels
	SOAK_CHANNELS=$(SOAK_CHANNELS) $(BIN)/python -m gevent.monkey --module pytest -p no:cacheprovider -q \
		tests/broker/test_redis.py -m redis -k short_lived_channels
	@cat $(SOAK_REPORT)

# Long failover runs, not in `make test`: the tests that kill a Sentinel or
# cluster primary (or move a slot) under 100 events/s, ROUNDS times each
# (about 2.5 minutes a round on 2 cores). They need redis-server 7 on PATH.
ROUNDS ?= 10

soak-failover: $(BIN)/.installed
	@set -e; for round in $$(seq $(ROUNDS)); do \
		echo "soak-failover: round $$round of $(ROUNDS)"; \
		$(BIN)/python -m gevent.monkey --module pytest -p no:cacheprovider -q -s \
			tests/broker/test_sentinel.py tests/broker/test_cluster.py -m redis -k "killing or moving"; \
		$(BIN)/pytest -p no:cacheprovider -q -s tests/e2e/test_e2e_failover.py; \
	done

# The extension, views, stream and end-to-end tests against a wheel of Flask's
# unreleased main branch (../shared/upstream, see its README), in a throwaway
# virtualenv, without the Redis ones (marked redis or redis_server: the first
# run has them, and this run is about Flask's contexts, kept short for
# `make test`) and without those marked flask_independent (the slow-consumer
# policies against slow sockets, a slowloris request that never reaches the
# app: each says why beside its mark); skipped, with the reason, where that
# folder is absent.
UPSTREAM ?= ../shared/upstream
FLASK_NEXT = $(firstword $(wildcard $(UPSTREAM)/flask-*.whl))
NEXT_VENV := .venv-flask-next
NEXT_TESTS := tests/test_extension.py tests/test_views.py tests/test_stream.py tests/test_core.py tests/e2e

test-flask-next: $(BIN)/.installed
	@if [ -z "$(FLASK_NEXT)" ]; then \
		echo "test-flask-next: SKIPPED: no Flask wheel in $(UPSTREAM) (a clone outside the workspace)"; \
		exit 0; \
	fi; \
	set -e; rm -rf $(NEXT_VENV); \
	$(PYTHON) -m venv $(NEXT_VENV); \
	$(NEXT_VENV)/bin/pip install --quiet --upgrade 'pip>=25.1'; \
	$(NEXT_VENV)/bin/pip install --quiet -e . --group test; \
	$(NEXT_VENV)/bin/pip install --quiet --no-deps --force-reinstall "$(FLASK_NEXT)"; \
	$(NEXT_VENV)/bin/python -c 'import flask, importlib.metadata as m; print("test-flask-next: Flask", m.version("flask"))'; \
	$(NEXT_VENV)/bin/pytest -p no:cacheprovider -m "not redis and not redis_server and not flask_independent" $(NEXT_TESTS); \
	rm -rf $(NEXT_VENV)

# The benchmarks against the peers (docs/benchmarks.md); the peers get a
# virtualenv of their own, benchmarks/.venv. `bench` measures the last commit
# (about 13 minutes) and rewrites docs/benchmarks.md; `bench-quick` prints a
# small run of the working tree (about 90 s).
benchmarks/.venv/.installed: benchmarks/requirements-peers.txt | $(BIN)/.installed
	$(BIN)/python benchmarks/core.py --setup
	touch $@

# `make bench BENCH_LONG=1` runs the long scenarios too (bench-scale and
# bench-workers below, about 30 minutes more).
bench: benchmarks/.venv/.installed
	$(BIN)/python benchmarks/core.py --ref HEAD
	@if [ -n "$(BENCH_LONG)" ]; then $(MAKE) --no-print-directory bench-scale bench-workers; fi

bench-quick: benchmarks/.venv/.installed
	$(BIN)/python benchmarks/core.py --quick

# The long scenarios of docs/benchmarks.md, apart from `bench`. bench-scale:
# SCALE_STREAMS (100,000) idle streams on SCALE_WORKERS gunicorn workers of the
# shipped config (ours) or uvicorn workers, ours and each peer, as far as each
# goes (about 2-3 minutes a run; here 2 workers stop at the open-file limit,
# about 40,000, and 6 hold 100,000); each run appended to
# benchmarks/results/scale.jsonl (`benchmarks/scale.py --table FILE` prints them).
# bench-workers: fan-out on 1 and 2 workers with the Redis broker against the
# peers (about 5 minutes).
SCALE_STREAMS ?= 100000
SCALE_WORKERS ?= 2 6
SCALE_SERVERS ?= ours naive starlette fastapi

bench-scale: benchmarks/.venv/.installed
	@set -e; for workers in $(SCALE_WORKERS); do for server in $(SCALE_SERVERS); do \
		$(BIN)/python benchmarks/scale.py --server $$server --workers $$workers \
			--streams $(SCALE_STREAMS) --stall 30 --out benchmarks/results/scale.jsonl; \
	done; done

bench-workers: benchmarks/.venv/.installed
	$(BIN)/python benchmarks/workers.py --reach

clean:
	rm -rf $(VENV) $(NEXT_VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache build dist docs/_build
