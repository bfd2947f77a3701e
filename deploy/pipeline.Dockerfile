# syntax=docker/dockerfile:1.7
# Code-location image: the Dagster gRPC code server and its run workers (ECS tasks), with DALI on
# CUDA. The stack's webserver and daemon run it too, with other commands (see compose.yaml).
#   docker build -f deploy/pipeline.Dockerfile -t pixelpipe-pipeline .      (from the repo root)
#
# torch: pyproject pins torch==2.13.0, which CI installs as the CPU wheel from local disk. Here
# TORCH_INDEX_URL picks the build of that same version: empty = PyPI's Linux wheel (a CUDA 12
# build that bundles its CUDA libraries), https://download.pytorch.org/whl/cu128 (or another
# cuXYZ) for a specific CUDA, https://download.pytorch.org/whl/cpu for a small CPU-only image.
# DALI (the gpu extra) ships Linux x86_64 wheels only: build for linux/amd64.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.5.11

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
ARG PYTHON_VERSION=3.11.11
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
# the Dagster family moves together: the same 0.x as dagster-aws in pyproject.toml
ARG DAGSTER_LIBS="dagster-postgres==0.29.27 dagster-k8s==0.29.27"
ARG APP_UID=10001

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NO_ALBUMENTATIONS_UPDATE=1 \
    DAGSTER_HOME=/opt/dagster/home \
    NVME_ROOT=/var/lib/pixelpipe/nvme \
    HOME=/home/pixelpipe

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid ${APP_UID} pixelpipe \
    && useradd --uid ${APP_UID} --gid ${APP_UID} --create-home --home-dir /home/pixelpipe \
       --shell /usr/sbin/nologin pixelpipe

# Ubuntu 22.04 has no Python 3.11 release build: a python-build-standalone one, at a fixed patch
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install ${PYTHON_VERSION} \
    && uv venv --seed --python ${PYTHON_VERSION} ${VIRTUAL_ENV}

# torch first: the largest layer, rebuilt only when its version or build changes
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
      python -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    else \
      python -m pip install "torch==${TORCH_VERSION}"; \
    fi

WORKDIR /opt/pixelpipe
COPY pyproject.toml README.md ./
COPY pixelpipe ./pixelpipe
# schemas/ is read at run time next to the package (manifests, predictions): an editable
# install keeps pixelpipe/ and schemas/ side by side
COPY schemas ./schemas
# the project itself (its pins are pyproject.toml's) and the pinned DAGSTER_LIBS
# hadolint ignore=DL3013
RUN python -m pip install -e ".[gpu]" ${DAGSTER_LIBS}

# workspace.yaml (python_module, in WORKDIR): webserver/daemon loading the code in-process, as
# the terraform ECS tasks run them; deploy/workspace.yaml: the code server over gRPC (compose)
COPY workspace.yaml ./workspace.yaml
COPY deploy/workspace.yaml /opt/dagster/workspace.yaml
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
# DAGSTER_HOME stays writable: an ECS entry point may write the instance config there first
RUN mkdir -p ${NVME_ROOT} ${DAGSTER_HOME}/storage \
    && chown -R ${APP_UID}:${APP_UID} ${NVME_ROOT} /opt/dagster /home/pixelpipe

USER 10001:10001
EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
ENTRYPOINT ["tini", "--"]
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "pixelpipe.definitions"]
