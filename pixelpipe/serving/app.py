"""Inference service: Open Inference Protocol v2 (KServe/Triton REST), /predict and /metrics.

Run it on a registered model (the same entry the CLI and the serving benchmark use):

    python -m pixelpipe.serving.app --model pixelpipe-detector@champion --port 8080

Inputs of `POST /v2/models/{name}/infer` (exactly one per request):

* `image`: BYTES, shape [N], `data` = N base64 strings of encoded images (JPEG, PNG, ...).
* `pixel_values`: FP32, shape [N, 3, H, W], already preprocessed as preprocess.json says.

Outputs: `scores` FP32 [N, C] (image-level score per label, labels in the model's order; a
detector's is each label's best box), `labels` BYTES [N] (each element the JSON array text of
the labels over their own thresholds) and, for a detector, `detections` BYTES [N] (each the
JSON text of [{"label", "score", "box": [x, y, width, height]}], best first). Boxes are in
source-image pixels for `image`, and in model-input pixels for `pixel_values`, which has no
source image. `POST /predict` (one image, multipart field `file` or a raw image/* body) answers
{model, version, task, labels, scores, detections}; `?threshold=` overrides every threshold.
Errors are `{"error": "..."}` with 400 (bad image), 404 (unknown model or version),
413 (body or pixel count over the limit), 415 (content type) or 422 (malformed request).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pixelpipe.serving.api_models import (
    IMAGE_INPUT,
    INFER_BODY,
    PREDICT_BODY,
    SCHEMA_DIR,
    TENSOR_INPUT,
    InferRequest,
    InferResponse,
    LiveResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    PredictResponse,
    ReadyResponse,
    ServerMetadataResponse,
    json_schemas,
    write_schemas,
)
from pixelpipe.serving.batching import BatchConfig
from pixelpipe.serving.errors import ApiError, BodyLimitMiddleware, install_error_handlers
from pixelpipe.serving.metrics import MetricsMiddleware
from pixelpipe.serving.requests import (
    check_json_content_type,
    parse_bytes_input,
    parse_infer_request,
    parse_tensor_input,
    read_upload,
    requested_outputs,
)
from pixelpipe.serving.service import ModelService

__all__ = [
    "SCHEMA_DIR",
    "ApiError",
    "ModelService",
    "create_app",
    "create_app_from_registry",
    "json_schemas",
    "main",
    "serve",
    "write_schemas",
]

MAX_BODY_ENV = "SERVE_MAX_BODY_BYTES"
MAX_PIXELS_ENV = "SERVE_MAX_PIXELS"
DEFAULT_MAX_BODY = 10 * 1024 * 1024
# a 50 MP photo decodes to 150 MB of RGB; anything larger is refused before decoding
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_IMAGES = 64


# --- the routes -----------------------------------------------------------------------------
def _service(request: Request) -> ModelService:
    service: ModelService = request.app.state.service
    return service


def _check_model(service: ModelService, name: str, version: str | None = None) -> None:
    if name != service.name:
        raise ApiError(404, f"unknown model {name!r}; this service serves {service.name!r}")
    if version is not None and version != service.version:
        raise ApiError(
            404, f"model {name!r} has no version {version!r} here; serving {service.version}"
        )


async def _counted(service: ModelService, work: Callable[[], Awaitable[Response]]) -> Response:
    """Run an inference handler, counting it as nv_inference_request_success / _failure."""
    try:
        response = await work()
    except ApiError as exc:
        service.metrics.request_done(exc.status)
        raise
    service.metrics.request_done(response.status_code)
    return response


async def _infer(service: ModelService, request: Request) -> Response:
    check_json_content_type(request)
    parsed: InferRequest = parse_infer_request(await request.body())
    if len(parsed.inputs) != 1:
        raise ApiError(
            422,
            f"expected exactly one input ({IMAGE_INPUT!r} or {TENSOR_INPUT!r}), "
            f"got {len(parsed.inputs)}",
        )
    tensor = parsed.inputs[0]
    outputs = requested_outputs(parsed, service.outputs)
    if tensor.name == IMAGE_INPUT:
        blobs = parse_bytes_input(tensor, service.max_images)
        prepared = await run_in_threadpool(service.preprocess, blobs)
    elif tensor.name == TENSOR_INPUT:
        values = await run_in_threadpool(
            parse_tensor_input, tensor, service.spec, service.max_images
        )
        prepared = service.tensor_input(values)
    else:
        raise ApiError(
            422,
            f"unknown input {tensor.name!r}; inputs are {IMAGE_INPUT!r} (BYTES, base64 "
            f"images) and {TENSOR_INPUT!r} (FP32 [N, 3, H, W])",
        )
    answers = await service.answer(prepared)
    body: dict[str, Any] = {"model_name": service.name, "model_version": service.version}
    if parsed.id is not None:
        body["id"] = parsed.id
    body["outputs"] = service.infer_outputs(answers, outputs)
    return JSONResponse(body)


async def _predict(service: ModelService, request: Request, threshold: float | None) -> Response:
    blob = await read_upload(request)
    prepared = await run_in_threadpool(service.preprocess, [blob])
    (answer,) = await service.answer(prepared)
    body = {
        "model": service.name,
        "version": service.version,
        "task": service.task,
        "labels": service.labels_of(answer, threshold),
        "scores": dict(zip(service.labels, answer.scores, strict=True)),
        "detections": answer.detections,
    }
    return JSONResponse(body)


def _add_routes(app: FastAPI) -> None:
    @app.get("/v2", response_model=ServerMetadataResponse)
    async def server_metadata() -> Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("pixelpipe")
        except PackageNotFoundError:
            ours = "unknown"
        return JSONResponse({"name": "pixelpipe", "version": ours, "extensions": []})

    @app.get("/v2/health/live", response_model=LiveResponse)
    async def live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready", response_model=ReadyResponse)
    async def ready(request: Request) -> Response:
        ok = _service(request).ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}", response_model=ModelMetadataResponse)
    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadataResponse)
    async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
        service = _service(request)
        _check_model(service, name, version)
        return JSONResponse(service.metadata())

    @app.get("/v2/models/{name}/ready", response_model=ModelReadyResponse)
    @app.get("/v2/models/{name}/versions/{version}/ready", response_model=ModelReadyResponse)
    async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
        service = _service(request)
        _check_model(service, name, version)
        ok = service.ready
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    # parse_infer_request reads the body (so errors keep the OIP shape); typed in OpenAPI here
    @app.post("/v2/models/{name}/infer", response_model=InferResponse, openapi_extra=INFER_BODY)
    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=InferResponse,
        openapi_extra=INFER_BODY,
    )
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        service = _service(request)
        _check_model(service, name, version)
        return await _counted(service, lambda: _infer(service, request))

    @app.post("/predict", response_model=PredictResponse, openapi_extra=PREDICT_BODY)
    async def predict(
        request: Request,
        threshold: float | None = Query(
            None, ge=0.0, le=1.0, description="one label threshold instead of the model's own"
        ),
    ) -> Response:
        service = _service(request)
        return await _counted(service, lambda: _predict(service, request, threshold))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        data, content_type = _service(request).metrics.render()
        return Response(data, media_type=content_type)


def create_app(
    predictor: Any,
    model_name: str,
    model_version: str,
    *,
    max_batch_size: int = 16,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_images: int = DEFAULT_MAX_IMAGES,
    warm_up: bool = True,
    jpeg_dct_scaling: bool = True,
) -> FastAPI:
    """The service for one loaded Predictor (see pixelpipe.training.mlflow_model).

    jpeg_dct_scaling=False decodes every image in full, exactly like the MLflow pyfunc.
    """
    service = ModelService(
        predictor,
        model_name,
        str(model_version),
        BatchConfig(max_batch_size, max_wait_ms),
        max_pixels,
        max_images,
        jpeg_dct_scaling,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await run_in_threadpool(service.warm_up)
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(
        title="pixelpipe inference",
        description="Open Inference Protocol v2 (REST), /predict and /metrics",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    _add_routes(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics, router_app=app.router)
    return app


# --- from the registry, and the command line -------------------------------------------------
def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def create_app_from_registry(
    settings: Any,
    name: str,
    alias: str,
    *,
    cache_dir: Path | None = None,
    device: str = "auto",
    batch: BatchConfig | None = None,
) -> FastAPI:
    """Resolve NAME@ALIAS (or a version number as alias) in MLflow, download, load, serve.

    Downloads are cached under SERVE_MODEL_CACHE, else NVME_ROOT/models.
    """
    from mlflow.tracking import MlflowClient

    from pixelpipe.serving.registry import CACHE_ENV, download, resolve
    from pixelpipe.training.mlflow_model import load_predictor

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model_version = resolve(client, name, alias)
    if cache_dir is None and not os.environ.get(CACHE_ENV):
        cache_dir = Path(settings.nvme_root).resolve() / "models"
    local = download(model_version, cache_dir, tracking_uri=uri)
    predictor = load_predictor(local, resolve_device(device))
    config = batch or BatchConfig.from_settings(settings)
    return create_app(
        predictor,
        name,
        str(model_version.version),
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        max_body_bytes=int(
            getattr(settings, "serve_max_body_bytes", None)
            or _env_int(MAX_BODY_ENV, DEFAULT_MAX_BODY)
        ),
        max_pixels=int(
            getattr(settings, "serve_max_pixels", None)
            or _env_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)
        ),
    )


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    device: str = "auto",
    batch: BatchConfig | None = None,
    log_level: str = "warning",
) -> None:
    """Serve NAME@ALIAS (or NAME/VERSION) from the registry in settings until interrupted."""
    import cv2
    import uvicorn

    from pixelpipe.serving.batching import set_torch_threads
    from pixelpipe.serving.registry import parse_ref
    from pixelpipe.settings import get_settings

    cv2.setNumThreads(1)  # requests decode in parallel threads; nested cv2 threads oversubscribe
    set_torch_threads()
    ref = parse_ref(model)
    app = create_app_from_registry(
        get_settings(),
        ref.name,
        ref.version or ref.alias or "champion",
        device=device,
        batch=batch,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pixelpipe.serving.app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="NAME@ALIAS or NAME/VERSION (MLflow registry)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--max-batch", type=int, default=None, help="default SERVE_MAX_BATCH")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="default SERVE_MAX_WAIT_MS")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--write-schemas",
        nargs="?",
        const=str(SCHEMA_DIR),
        default=None,
        metavar="DIR",
        help="write the JSON Schemas and exit",
    )
    args = parser.parse_args(argv)
    if args.write_schemas:
        for path in write_schemas(Path(args.write_schemas)):
            print(path)
        return
    if not args.model:
        parser.error("--model is required")
    base = BatchConfig.from_settings()
    batch = BatchConfig(
        args.max_batch or base.max_batch_size,
        base.max_wait_ms if args.max_wait_ms is None else args.max_wait_ms,
    )
    serve(
        args.model, args.host, args.port, device=args.device, batch=batch, log_level=args.log_level
    )


if __name__ == "__main__":
    main()
