# agent-gateway: a multi-stage build with two targets.
#   gateway       (the default, last stage): the gateway alone; the reference backend
#                 (`chat_backend`) is not in it, neither the package nor its script
#   chat-backend  the reference backend, for the dev overlay and the compose file
# The builder verifies every dependency against requirements/runtime.lock (pip
# --require-hashes: versions and sha256 of every file) and builds the project's wheels;
# the runtime stages mount those wheels for their one `pip install` rather than copying
# them, so they leave no dead layer behind. Every dependency is a ready-made wheel: no
# compiler, in any stage. The images run as an unprivileged user.
# Kubernetes probes use the admin port (9090); the gateway image's own HEALTHCHECK asks
# `gateway health`, which reads the configuration as `serve` does and so follows the admin
# port and host wherever they are set (file or GATEWAY__ADMIN__*).
# The default policies are baked in where the image's config.yaml looks for them
# (/etc/agent-gateway/policies; Kubernetes mounts its ConfigMap over that directory).
# No `# syntax=` directive: BuildKit's built-in Dockerfile frontend is enough, and the
# directive would fetch a frontend image from a registry (offline builds fail at once).
#
#   make image                  # DOCKER_BUILDKIT=1 docker build --target gateway ...
#   make image-backend          # the chat-backend target
#
# The base image is pinned by digest: the multi-platform index of python:3.11-slim-bookworm
# (Python 3.11.16, built 2026-08-25) as docker-library/repo-info records it
# (repos/python/remote/3.11-slim-bookworm.md). Refresh it with
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and override it per build,
# e.g. for a mirror or a locally made base:
#   docker build --build-arg PYTHON_IMAGE=registry.example/python:3.11-slim-bookworm@sha256:... .
#
# Offline: the builder takes the locked wheels from wheelhouse/ when it holds any
# (`make wheelhouse` downloads them, hash-checked) and then never asks an index, so
#   make wheelhouse && docker build --network none ...   builds with no network at all.
# Otherwise it downloads them from PIP_INDEX_URL (a build argument, PyPI by default);
# behind a TLS-inspecting proxy, hand pip its CA bundle as a build secret:
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt ...

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS builder
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# the locked dependencies as verified wheels in /wheels/deps, and the build backend
# (requirements/build.lock) for the project's own wheels, both --require-hashes
RUN --mount=type=bind,source=requirements,target=/src/requirements \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=ca-bundle \
    set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links=/wheelhouse; \
    else set -- --index-url="$PIP_INDEX_URL"; fi; \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi; \
    pip wheel --require-hashes --no-deps --only-binary=:all: --wheel-dir=/wheels/deps \
        -r requirements/runtime.lock "$@"; \
    pip install --require-hashes --no-deps --only-binary=:all: \
        -r requirements/build.lock "$@"
COPY pyproject.toml setup.py README.md ./
COPY gateway ./gateway
# the gateway's wheel is built from a tree without chat_backend: setup.py then declares
# neither the package nor its `chat-backend` script
RUN pip wheel --no-deps --no-build-isolation --wheel-dir=/wheels/gateway . \
    && rm -rf build ./*.egg-info
COPY chat_backend ./chat_backend
RUN pip wheel --no-deps --no-build-isolation --wheel-dir=/wheels/chat-backend .

# what both runtime targets share: the environment and the unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway

# the reference backend: `docker build --target chat-backend -t agent-gateway-chat-backend .`
FROM runtime AS chat-backend
ARG VERSION=0.1.0
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="agent-gateway-chat-backend" \
      org.opencontainers.image.description="Reference chat backend for agent-gateway (development and demos)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements,target=/requirements \
    pip install --no-index --find-links=/wheels/deps --require-hashes \
        -r /requirements/runtime.lock \
    && pip install --no-index --no-deps /wheels/chat-backend/agent_gateway-*.whl \
    && pip uninstall -y pip setuptools wheel
USER 10001:10001
EXPOSE 8081
STOPSIGNAL SIGTERM
ENTRYPOINT ["chat-backend"]
CMD ["--host", "0.0.0.0", "--port", "8081"]

# the gateway, the default target (last stage)
FROM runtime AS gateway
ARG VERSION=0.1.0
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="agent-gateway" \
      org.opencontainers.image.description="Security gateway for public AI-agent chat" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV GATEWAY_CONFIG=/etc/agent-gateway/config.yaml
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements,target=/requirements \
    pip install --no-index --find-links=/wheels/deps --require-hashes \
        -r /requirements/runtime.lock \
    && pip install --no-index --no-deps /wheels/gateway/agent_gateway-*.whl \
    && pip uninstall -y pip setuptools wheel \
    && mkdir -p /etc/agent-gateway/policies
COPY --chown=root:root deploy/k8s/base/config.yaml /etc/agent-gateway/config.yaml
COPY --chown=root:root policies/ /etc/agent-gateway/policies/
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["gateway", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve"]
