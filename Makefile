# Two commands: `make demo` (runs the main job end to end) and `make test` (the whole suite).
# Both create .venv when it is missing. torch is pinned exactly: 2.13.0 is the CPU build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# system packages the tests run against for real (Debian): redis-server for the Redis cache
# tier, postgresql for the monitor's fleet store, chromium + chromium-driver for the dashboard,
# prometheus for promtool (checks the config and every PromQL query nimbleml deploy writes)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo demo-picture demo-sysdeps test lint typecheck bench clean sysdeps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# the whole job on digits (train, distil, optimize, sign, serve, monitor, profile, cost, deploy,
# batch predict) into nimble-demo/index.html; --force replaces the previous run's folder
demo: $(STAMP) demo-sysdeps
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/nimbleml demo --out nimble-demo --force

# the demo's one system package: headless Chromium for the dashboard's picture. Best effort:
# where it cannot be installed (no apt-get, no root) the demo runs and its page says why the
# picture is missing
demo-sysdeps:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		command -v google-chrome >/dev/null || \
		{ command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
		echo "make demo: Chromium could not be installed; the dashboard picture is skipped"

# README's picture: the demo page's first screen, taken by headless Chromium (run `make demo`
# first, or this runs it); commit docs/demo.png when it changed
demo-picture: $(STAMP) sysdeps
	@test -f nimble-demo/index.html || $(MAKE) demo
	$(BIN)/python -m nimbleml.demo.browser nimble-demo/index.html docs/demo.png 1200 1000

sysdeps:
	@if ! command -v redis-server >/dev/null || ! command -v chromedriver >/dev/null || \
		! command -v promtool >/dev/null || \
		! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends redis-server postgresql \
			chromium chromium-driver prometheus >/dev/null; fi

# two pytest workers (pytest-xdist) on 2 cores, one OpenMP thread each (tests/conftest.py);
# the 25 slowest tests are listed at the end
TEST_WORKERS ?= 2

test: $(STAMP) sysdeps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	@# byte-compiled once here: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
	@# process the suite starts compiled nimbleml again, 0.25 s each
	$(BIN)/python -m compileall -q src tests >/dev/null
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=25

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) sysdeps
	$(BIN)/python benchmarks/foundation.py
	$(BIN)/python benchmarks/optimize.py
	$(BIN)/python benchmarks/runtime.py
	$(BIN)/python benchmarks/monitor.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) nimble-demo build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
