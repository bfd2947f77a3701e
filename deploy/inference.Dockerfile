# syntax=docker/dockerfile:1.7
# Inference image: `pixelpipe serve` (FastAPI, Open Inference Protocol v2, /predict, /metrics)
# with only the serving dependencies (requirements-serve.txt) and a CPU torch by default.
#   docker build -f deploy/inference.Dockerfile -t pixelpipe-inference .    (from the repo root)
#   docker run -p 8080:8080 -e MLFLOW_TRACKING_URI=... pixelpipe-inference [--model NAME@ALIAS]
# The container serves REGISTERED_MODEL_NAME@champion unless --model says otherwise; it is
# ready (HEALTHCHECK) once that version is downloaded and loaded.
# GPU serving: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (and run with
# --gpus all); the default CPU wheel keeps the image small.
FROM python:3.11.11-slim-bookworm
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG APP_UID=10001

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVME_ROOT=/var/lib/pixelpipe/nvme \
    HOME=/home/pixelpipe

RUN groupadd --gid ${APP_UID} pixelpipe \
    && useradd --uid ${APP_UID} --gid ${APP_UID} --create-home --home-dir /home/pixelpipe \
       --shell /usr/sbin/nologin pixelpipe

RUN python -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY deploy/requirements-serve.txt /tmp/requirements-serve.txt
RUN python -m pip install -r /tmp/requirements-serve.txt

WORKDIR /opt/pixelpipe
COPY pyproject.toml README.md ./
COPY pixelpipe ./pixelpipe
COPY schemas ./schemas
# --no-deps: the serving dependencies above, not the pipeline's (Dagster, albumentations, DALI)
RUN python -m pip install --no-deps -e . \
    && mkdir -p ${NVME_ROOT} \
    && chown -R ${APP_UID}:${APP_UID} ${NVME_ROOT} /home/pixelpipe

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
ENTRYPOINT ["pixelpipe", "serve", "--host", "0.0.0.0", "--port", "8080"]
