# agent-gateway: a multi-stage build. The builder makes wheels (compilers live only
# there); the runtime stage installs them into a slim Python with no build tools and
# runs as an unprivileged user. Kubernetes probes use the admin port (9090); the image's
# own HEALTHCHECK asks `gateway health`, which reads the configuration as `serve` does and
# so follows the admin port and host wherever they are set (file or GATEWAY__ADMIN__*).
# The default policies are baked in where the image's config.yaml looks for them
# (/etc/agent-gateway/policies; Kubernetes mounts its ConfigMap over that directory).
# No `# syntax=` directive: BuildKit's built-in Dockerfile frontend is enough, and the
# directive would fetch a frontend image from a registry (offline builds fail at once).
# The runtime stage mounts the builder's wheels for its one `pip install` rather than
# copying them, so they leave no dead layer behind. Every dependency is a ready-made
# wheel: no compiler, in either stage.
#   DOCKER_BUILDKIT=1 docker build -t agent-gateway:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY chat_backend ./chat_backend
# the project and every pinned dependency as wheels, nothing else
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="agent-gateway" \
      org.opencontainers.image.description="Security gateway for public AI-agent chat" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_CONFIG=/etc/agent-gateway/config.yaml
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/agent-gateway/policies
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels agent-gateway \
    && pip uninstall -y pip setuptools wheel
COPY --chown=root:root deploy/k8s/base/config.yaml /etc/agent-gateway/config.yaml
COPY --chown=root:root policies/ /etc/agent-gateway/policies/
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["gateway", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve"]
