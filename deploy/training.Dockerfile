# syntax=docker/dockerfile:1.7
# Training image for CUDA GPU hosts: `pixelpipe train` (torch + DDP over NCCL, the DALI loader),
# the benchmarks, and `dagster job execute -j training_job` (a scheduled retraining recorded in
# the Postgres instance, hence dagster-postgres).
#   docker build -f deploy/training.Dockerfile -t pixelpipe-training .      (from the repo root)
#   docker run --gpus all --ipc=host pixelpipe-training pixelpipe train --variant small --epochs 10
# Multi-node: the same command on each node with --nnodes N --node-rank R --rdzv-backend c10d
# --rdzv-endpoint node0:29500 (port 29500 below). --ipc=host (or a large --shm-size) because
# DataLoader workers and NCCL share tensors through /dev/shm.
#
# torch: see pipeline.Dockerfile; TORCH_INDEX_URL empty = PyPI's CUDA 12 build of the pinned
# version, https://download.pytorch.org/whl/cuXYZ for another CUDA. DALI: linux/amd64 only.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.5.11

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
ARG PYTHON_VERSION=3.11.11
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG DAGSTER_LIBS="dagster-postgres==0.29.27"
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

COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install ${PYTHON_VERSION} \
    && uv venv --seed --python ${PYTHON_VERSION} ${VIRTUAL_ENV}

RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
      python -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    else \
      python -m pip install "torch==${TORCH_VERSION}"; \
    fi

WORKDIR /opt/pixelpipe
COPY pyproject.toml README.md ./
COPY pixelpipe ./pixelpipe
COPY schemas ./schemas
# the project itself (its pins are pyproject.toml's) and the pinned DAGSTER_LIBS
# hadolint ignore=DL3013
RUN python -m pip install -e ".[gpu]" ${DAGSTER_LIBS} \
    && mkdir -p ${NVME_ROOT} ${DAGSTER_HOME} \
    && chown -R ${APP_UID}:${APP_UID} ${NVME_ROOT} /opt/dagster /home/pixelpipe

USER 10001:10001
EXPOSE 29500
# a batch job: its exit status is its health
HEALTHCHECK NONE
ENTRYPOINT ["tini", "--"]
CMD ["pixelpipe", "train", "--help"]
