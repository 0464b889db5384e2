# syntax=docker/dockerfile:1.10
#
# pagewarm: one image for `pagewarm sidecar`, `pagewarm init` and `pagewarm exporter`
# (the Helm chart in helm/pagewarm runs all three from it).
#
#   docker build -t pagewarm:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --rm --read-only -v /models:/models:ro -p 9741:9741 \
#     pagewarm:0.1.0 exporter --models-dir /models
#
# The base image is pinned by version. For builds that never change under you, pin it by
# digest as well (Renovate or Dependabot keep such a pin current):
#   docker buildx imagetools inspect python:3.12.12-slim-bookworm   # prints "Digest: sha256:..."
#   docker build --build-arg PYTHON_IMAGE=python:3.12.12-slim-bookworm@sha256:<digest> .
#
# tests/deploy/test_dockerfile.py checks this file statically (no Docker engine there) and
# replays its RUN steps into a fresh virtual environment.

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# --- build: the wheel of this repository, and the wheels of its runtime dependencies ------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WHEELS=/wheels
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY controller ./controller
RUN python -m pip wheel --wheel-dir "$WHEELS" .

# --- runtime: the installed wheel, nothing else ---------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="pagewarm" \
      org.opencontainers.image.description="Measure and control LLM cold starts: page-cache residency, pre-warm and load timing for model weights" \
      org.opencontainers.image.url="https://github.com/pagewarm/pagewarm" \
      org.opencontainers.image.source="https://github.com/pagewarm/pagewarm" \
      org.opencontainers.image.documentation="https://github.com/pagewarm/pagewarm/tree/main/helm/pagewarm" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="pagewarm" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# No bytecode written at run time (the root filesystem is read-only; pip compiled the
# modules at install time), unbuffered logs, and state only under /var/lib/pagewarm,
# the one directory meant to be a volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WHEELS=/wheels \
    VIRTUAL_ENV=/opt/pagewarm \
    HOME=/var/lib/pagewarm \
    XDG_STATE_HOME=/var/lib/pagewarm \
    PAGEWARM_SAMPLES=/var/lib/pagewarm/samples.jsonl \
    PAGEWARM_LOG_FORMAT=json
# The wheels are bind-mounted from the build stage, not copied: they never reach a layer.
# --no-index: only those wheels, nothing from the network. The virtual environment has no
# pip of its own (the base image's pip installs into it).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip "$VIRTUAL_ENV" \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install \
        --no-cache-dir --no-index --find-links "$WHEELS" pagewarm \
    && install -d -o 65532 -g 65532 -m 0750 "$XDG_STATE_HOME"
ENV PATH=/opt/pagewarm/bin:$PATH
USER 65532:65532
WORKDIR /var/lib/pagewarm
VOLUME ["/var/lib/pagewarm"]
EXPOSE 9741
ENTRYPOINT ["/opt/pagewarm/bin/pagewarm"]
CMD ["--help"]
