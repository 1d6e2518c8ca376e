# syntax=docker/dockerfile:1
# The worker image: the project and its dependencies, ready to run the Prefect worker or the flow.
#   docker build -t cxr-mlops:cpu .                                  # CPU: torch from the CPU wheel index (~1.5 GB smaller)
#   docker build -t cxr-mlops:cuda --build-arg VARIANT=cuda .        # CUDA: torch's CUDA wheels on a CUDA runtime base
# Run:  docker run --rm cxr-mlops:cpu cxr --help
#       docker run --rm --user "$(id -u)" -v "$PWD":/work -w /work -v cxr-data:/srv/cxr \
#         -e MLFLOW_TRACKING_URI=http://mlflow:5000 cxr-mlops:cpu cxr run          # the flow on a checkout
#       ... cxr-mlops:cpu prefect worker start --pool cxr-process                   # or a process worker
# There is no ENTRYPOINT on purpose: Prefect's Docker and Kubernetes workers set the container command themselves.

ARG VARIANT=cpu

# ---- the two bases: the same layout (python3 on PATH, /opt/venv), picked by VARIANT ----
FROM python:3.11-slim-bookworm AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
# Ubuntu 24.04's Python is 3.12 (the project needs 3.11+). The default PyPI torch wheels carry CUDA 12.8.
ENV TORCH_INDEX_URL=https://pypi.org/simple
# Distribution packages follow the base image's release (its security updates), not pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# A stage of this file, not a registry image, so it has no tag.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# git: DVC and the lineage tags need it; libglib: OpenCV's runtime library.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git ca-certificates libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# ---- build: a virtual environment with the project and its dependencies ----
FROM base AS build
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall torch. The team extra: the S3
# clients for a DVC remote and MLflow artifacts in an object store, and PostgreSQL's driver (compose.yaml).
COPY pyproject.toml README.md ./
RUN mkdir -p cxr tasks flows && touch cxr/__init__.py tasks/__init__.py flows/__init__.py \
    && pip install --extra-index-url "$TORCH_INDEX_URL" ".[team]"
COPY cxr ./cxr
COPY tasks ./tasks
COPY flows ./flows
RUN pip install --no-deps --force-reinstall . && cxr --help > /dev/null

# ---- runtime: the environment, the project files, an unprivileged user ----
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 MLFLOW_ENABLE_TELEMETRY=false NO_ALBUMENTATIONS_UPDATE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_EXTRA_LOGGERS=cxr \
    CXR_CACHE_DIR=/srv/cxr/decoded-cache
RUN useradd --create-home --uid 1000 cxr \
    && mkdir -p /srv/cxr/kagglehub /home/cxr/.cache \
    && ln -s /srv/cxr/kagglehub /home/cxr/.cache/kagglehub \
    && chown -R cxr:cxr /srv/cxr /home/cxr/.cache
WORKDIR /opt/cxr
COPY --chown=cxr:cxr . .
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
# Data, the DVC cache, the decoded cache and Kaggle downloads belong on this volume, not in the container.
VOLUME ["/srv/cxr"]
# The workers replace this with the flow run's command; by hand, name the command (see the top of this file).
CMD ["cxr", "--help"]
