"""Inference service: Open Inference Protocol v2 (KServe/Triton REST), /predict and /metrics.

Run it on a registered model (the same entry the CLI and the serving benchmark use):

    python -m pixelpipe.serving.app --model pixelpipe-detector@champion --port 8080

Inputs of `POST /v2/models/{name}/infer` (exactly one per request):

* `image`: BYTES, shape [N], `data` = N base64 strings of encoded images (JPEG, PNG, ...).
* `pixel_values`: FP32, shape [N, 3, H, W], already preprocessed as preprocess.json says.

Outputs: `scores` FP32 [N, C] (sigmoid score per label, labels in the model's order) and
`labels` BYTES [N] (each element the JSON array text of the labels over the threshold).
Errors are `{"error": "..."}` with 400 (bad image), 404 (unknown model or version),
413 (body or pixel count over the limit), 415 (content type) or 422 (malformed request).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import simplejpeg
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixelpipe.imaging.variants import Variant
from pixelpipe.serving.batching import BatchConfig, BatcherStopped, MicroBatcher
from pixelpipe.serving.metrics import (
    ASGIApp,
    Message,
    MetricsMiddleware,
    Receive,
    Scope,
    Send,
    ServingMetrics,
)

MAX_BODY_ENV = "SERVE_MAX_BODY_BYTES"
MAX_PIXELS_ENV = "SERVE_MAX_PIXELS"
DEFAULT_MAX_BODY = 10 * 1024 * 1024
# a 50 MP photo decodes to 150 MB of RGB; anything larger is refused before decoding
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_IMAGES = 64
PLATFORM = "pytorch_torchscript"
IMAGE_INPUT = "image"
TENSOR_INPUT = "pixel_values"
SCORES_OUTPUT = "scores"
LABELS_OUTPUT = "labels"
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "serving"


# --- response and request models (their JSON Schemas are committed in schemas/serving/) ----
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(_Strict):
    """Every non-2xx answer (OIP error shape)."""

    error: str


class LiveResponse(_Strict):
    """GET /v2/health/live."""

    live: bool


class ReadyResponse(_Strict):
    """GET /v2/health/ready (503 while not ready)."""

    ready: bool


class ServerMetadataResponse(_Strict):
    """GET /v2."""

    name: str
    version: str
    extensions: list[str]


class ModelReadyResponse(_Strict):
    """GET /v2/models/{name}/ready (503 while not ready)."""

    name: str
    ready: bool


class TensorMetadata(_Strict):
    """An input or output tensor: -1 in shape = any size."""

    name: str
    datatype: Literal["BYTES", "FP32"]
    shape: list[int]


class ModelParameters(_Strict):
    """What preprocess.json says: input size, resize mode, normalisation, labels, threshold."""

    labels: list[str]
    threshold: float
    input_width: int
    input_height: int
    mode: str
    mean: list[float]
    std: list[float]


class ModelMetadataResponse(_Strict):
    """GET /v2/models/{name}: OIP model metadata plus the preprocessing as `parameters`."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: ModelParameters


class ResponseOutput(_Strict):
    """One output tensor; `data` is flattened row-major."""

    name: str
    datatype: Literal["BYTES", "FP32"]
    shape: list[int]
    data: list[float] | list[str]


class InferResponse(_Strict):
    """POST /v2/models/{name}/infer."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class PredictResponse(_Strict):
    """POST /predict: labels over the threshold and every label's score."""

    model: str
    version: str
    labels: list[str]
    scores: dict[str, float]


class RequestInput(BaseModel):
    """One OIP input tensor."""

    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    """An output the client asks for."""

    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """POST /v2/models/{name}/infer body."""

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


RESPONSE_MODELS: dict[str, type[BaseModel]] = {
    "error": ErrorResponse,
    "health_live": LiveResponse,
    "health_ready": ReadyResponse,
    "server_metadata": ServerMetadataResponse,
    "model_ready": ModelReadyResponse,
    "model_metadata": ModelMetadataResponse,
    "infer_request": InferRequest,
    "infer_response": InferResponse,
    "predict_response": PredictResponse,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every serving JSON Schema (the responses, the infer request, the predictions document)."""
    from pixelpipe.serving.predictions import PredictionsDocument

    models = {**RESPONSE_MODELS, "predictions": PredictionsDocument}
    return {name: model.model_json_schema() for name, model in models.items()}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate schemas/serving/*.schema.json (committed; a test fails when they drift)."""
    from pixelpipe.schema_files import write_schema_files

    return write_schema_files(json_schemas(), directory)


# --- errors ---------------------------------------------------------------------------------
class ApiError(Exception):
    """An answer to a bad request: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(errors: Sequence[Any]) -> str:
    parts = []
    for err in list(errors)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "malformed request: " + "; ".join(parts) + more


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.message)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error(422, _validation_message(exc.errors()))

    async def server_error(_: Request, exc: Exception) -> Response:
        return _error(500, f"internal server error ({type(exc).__name__})")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)


class BodyLimitMiddleware:
    """Refuse bodies over max_bytes with 413: by Content-Length, and by counting what streams in.

    The body is read here (at most max_bytes) and replayed to the app, so a chunked upload
    without Content-Length cannot get past the limit either.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _error(400, "invalid Content-Length header")(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._too_large(scope, receive, send, f"Content-Length {length}")
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._too_large(scope, receive, send, f"more than {total - 1} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        message = f"request body too large: {what} > limit {self.max_bytes} bytes"
        await _error(413, message, {"Connection": "close"})(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- the model behind the service -----------------------------------------------------------
def image_size(blob: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding pixels; ApiError if unusable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(blob)) as im:
                return im.size
        except Image.DecompressionBombError as exc:
            raise ApiError(413, f"decompression bomb refused: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ApiError(400, "not a supported image (JPEG, PNG, WebP, TIFF, ...)") from exc
        except Exception as exc:  # any parser failure on user bytes is the user's bad image
            raise ApiError(400, f"corrupt image header ({type(exc).__name__})") from exc


class ModelService:
    """Predictor + micro-batcher + metrics: decode in worker threads, batch the forward pass."""

    def __init__(
        self,
        predictor: Any,
        model_name: str,
        model_version: str,
        batch: BatchConfig,
        max_pixels: int,
        max_images: int,
        dct_scaling: bool = True,
    ) -> None:
        self.predictor = predictor
        self.dct_scaling = dct_scaling
        self.spec = predictor.spec
        self.name = model_name
        self.version = str(model_version)
        self.max_pixels = max_pixels
        self.max_images = max_images
        self.metrics = ServingMetrics(model_name, self.version, PLATFORM)
        self.batcher: MicroBatcher[torch.Tensor, np.ndarray] = MicroBatcher(
            self._run_batch, batch, self.metrics.observe_batch
        )

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def ready(self) -> bool:
        return self.batcher.running

    def _run_batch(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        """One forward pass over every queued request; runs in the inference thread."""
        x = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        with torch.inference_mode():
            logits = self.predictor.module(x.to(self.predictor.device))
        scores = torch.sigmoid(logits.float()).cpu().numpy()
        bounds = np.cumsum([t.shape[0] for t in tensors])[:-1]
        return list(np.split(scores, bounds))

    def warm_up(self) -> None:
        """A few passes at batch 1 and full size: TorchScript optimises on its first calls."""
        s = self.spec
        for n in (1, 1, self.batcher.config.max_batch_size, self.batcher.config.max_batch_size):
            self._run_batch([torch.zeros(n, 3, s.input_height, s.input_width)])

    def decode(self, blob: bytes) -> np.ndarray:
        """One encoded image -> input-sized HxWx3 uint8, the way stage 2 makes its variants.

        Plain JPEGs decode at the smallest DCT scale that still covers the input size (as
        resize_cpu.decode_for_variants does for the training images); everything else, and
        any JPEG libjpeg-turbo refuses, takes the training loader's full decode.
        """
        from pixelpipe.imaging.geometry import needed_size, plan
        from pixelpipe.imaging.resize_cpu import finish, plain_jpeg_size, resize
        from pixelpipe.training.loaders import decode_image, to_input_size

        s = self.spec
        header = plain_jpeg_size(blob) if self.dct_scaling else None
        if header is not None:
            variant = Variant("input", s.input_width, s.input_height, s.mode)
            geom = plan(header[0], header[1], variant)
            need_w, need_h = needed_size([geom])
            try:
                rgb = simplejpeg.decode_jpeg(
                    blob,
                    colorspace="RGB",
                    fastdct=True,
                    fastupsample=True,
                    strict=True,
                    min_width=min(need_w, header[0]),
                    min_height=min(need_h, header[1]),
                )
                return np.ascontiguousarray(
                    finish(resize(rgb, geom.resized_width, geom.resized_height), geom)
                )
            except ValueError:
                pass  # truncated or corrupt: the full decode below names the reason
        return to_input_size(decode_image(blob), s.input_width, s.input_height, s.mode)

    def preprocess(self, blobs: Sequence[bytes]) -> torch.Tensor:
        """Encoded images -> normalised float NCHW; ApiError naming the first unusable image."""
        from pixelpipe.training.loaders import normalize

        started = time.perf_counter()
        arrays = []
        for i, blob in enumerate(blobs):
            where = f"image {i}" if len(blobs) > 1 else "image"
            if not blob:
                raise ApiError(400, f"{where} is empty")
            try:
                width, height = image_size(blob)
            except ApiError as exc:
                raise ApiError(exc.status, f"{where}: {exc.message}") from exc
            if width * height > self.max_pixels:
                raise ApiError(
                    413,
                    f"{where}: decompression bomb refused: {width}x{height} = "
                    f"{width * height} pixels > limit {self.max_pixels}",
                )
            try:
                arrays.append(self.decode(blob))
            except Exception as exc:  # ImageError and any decoder failure on user bytes
                reason = str(exc) or type(exc).__name__
                raise ApiError(400, f"{where}: cannot decode: {reason}") from exc
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        tensor = normalize(batch, self.spec.mean, self.spec.std)
        self.metrics.observe_preprocess(time.perf_counter() - started)
        return tensor

    async def scores(self, batch: torch.Tensor) -> np.ndarray:
        """N x C scores for a preprocessed batch, through the micro-batcher."""
        try:
            scores = await self.batcher.submit(batch, size=int(batch.shape[0]))
        except BatcherStopped as exc:
            raise ApiError(503, str(exc)) from exc
        if not np.isfinite(scores).all():
            raise ApiError(400, "the model produced non-finite scores for this input")
        return scores

    def labels_over(self, row: np.ndarray, threshold: float | None = None) -> list[str]:
        limit = self.spec.threshold if threshold is None else threshold
        return [label for label, v in zip(self.spec.labels, row, strict=True) if v > limit]

    def metadata(self) -> dict[str, Any]:
        s = self.spec
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [
                {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                {
                    "name": TENSOR_INPUT,
                    "datatype": "FP32",
                    "shape": [-1, 3, s.input_height, s.input_width],
                },
            ],
            "outputs": [
                {"name": SCORES_OUTPUT, "datatype": "FP32", "shape": [-1, len(s.labels)]},
                {"name": LABELS_OUTPUT, "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {
                "labels": list(s.labels),
                "threshold": s.threshold,
                "input_width": s.input_width,
                "input_height": s.input_height,
                "mode": s.mode,
                "mean": list(s.mean),
                "std": list(s.std),
            },
        }


# --- request parsing ------------------------------------------------------------------------
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _check_json_content_type(request: Request) -> None:
    media = _media_type(request)
    if media in ("", "application/json") or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    if media == "application/octet-stream":
        raise ApiError(415, "the binary tensor extension is not supported; send application/json")
    raise ApiError(415, f"unsupported content type {media!r}; send application/json")


def parse_infer_request(body: bytes) -> InferRequest:
    """The JSON body as an InferRequest; ApiError 422 saying what is malformed."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(422, f"request body is not valid JSON ({type(exc).__name__})") from exc
    if not isinstance(document, dict):
        raise ApiError(422, "malformed request: the body must be a JSON object")
    try:
        return InferRequest.model_validate(document)
    except ValidationError as exc:
        raise ApiError(422, _validation_message(exc.errors())) from exc
    except Exception as exc:  # e.g. recursion on absurdly nested data
        raise ApiError(422, f"malformed request ({type(exc).__name__})") from exc


def _flatten(data: list[Any], depth: int = 0) -> list[Any]:
    if depth > 4:
        raise ApiError(422, "malformed request: `data` is nested too deeply")
    flat: list[Any] = []
    for value in data:
        if isinstance(value, list):
            flat.extend(_flatten(value, depth + 1))
        else:
            flat.append(value)
    return flat


def parse_bytes_input(tensor: RequestInput, max_images: int) -> list[bytes]:
    """BYTES [N] (or [N, 1]) of base64 strings -> N encoded images."""
    if tensor.datatype != "BYTES":
        raise ApiError(
            422, f"input {IMAGE_INPUT!r} must have datatype BYTES, not {tensor.datatype}"
        )
    values = _flatten(tensor.data)
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] != len(values):
        raise ApiError(
            422,
            f"input {IMAGE_INPUT!r}: shape {shape} does not match {len(values)} elements; "
            "expected [N] (or [N, 1]) with N base64 strings",
        )
    if not 1 <= len(values) <= max_images:
        raise ApiError(422, f"input {IMAGE_INPUT!r}: expected 1..{max_images} images")
    blobs = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ApiError(422, f"input {IMAGE_INPUT!r} element {i} must be a base64 string")
        try:
            blobs.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, f"input {IMAGE_INPUT!r} element {i} is not valid base64") from exc
    return blobs


def parse_tensor_input(tensor: RequestInput, spec: Any, max_images: int) -> torch.Tensor:
    """FP32 [N, 3, H, W] (flat or nested data) -> a float tensor; H, W from preprocess.json."""
    if tensor.datatype != "FP32":
        raise ApiError(
            422, f"input {TENSOR_INPUT!r} must have datatype FP32, not {tensor.datatype}"
        )
    expected = [3, spec.input_height, spec.input_width]
    shape = tensor.shape
    if len(shape) != 4 or shape[1:] != expected or not 1 <= shape[0] <= max_images:
        dims = ", ".join(map(str, expected))
        raise ApiError(
            422,
            f"input {TENSOR_INPUT!r}: shape {shape}, expected [N, {dims}] "
            f"with 1 <= N <= {max_images}",
        )
    try:
        array = np.asarray(tensor.data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(422, f"input {TENSOR_INPUT!r}: `data` is ragged or not numeric") from exc
    if array.dtype.kind not in "iuf":
        raise ApiError(422, f"input {TENSOR_INPUT!r}: `data` must hold only numbers")
    if array.size != math.prod(shape):
        raise ApiError(
            422, f"input {TENSOR_INPUT!r}: {array.size} values do not fill shape {shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        values = array.reshape(shape).astype(np.float32)
    if not np.isfinite(values).all():
        raise ApiError(422, f"input {TENSOR_INPUT!r}: values must be finite FP32 numbers")
    return torch.from_numpy(values)


def _requested_outputs(request: InferRequest) -> list[str]:
    known = [SCORES_OUTPUT, LABELS_OUTPUT]
    if not request.outputs:
        return known
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ApiError(422, f"unknown output {unknown[0]!r}; outputs are {', '.join(known)}")
    return [n for n in known if n in names]


# --- the app --------------------------------------------------------------------------------
def _service(request: Request) -> ModelService:
    return request.app.state.service


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
    _check_json_content_type(request)
    parsed = parse_infer_request(await request.body())
    if len(parsed.inputs) != 1:
        raise ApiError(
            422,
            f"expected exactly one input ({IMAGE_INPUT!r} or {TENSOR_INPUT!r}), "
            f"got {len(parsed.inputs)}",
        )
    tensor = parsed.inputs[0]
    outputs = _requested_outputs(parsed)
    if tensor.name == IMAGE_INPUT:
        blobs = parse_bytes_input(tensor, service.max_images)
        batch = await run_in_threadpool(service.preprocess, blobs)
    elif tensor.name == TENSOR_INPUT:
        batch = await run_in_threadpool(
            parse_tensor_input, tensor, service.spec, service.max_images
        )
    else:
        raise ApiError(
            422,
            f"unknown input {tensor.name!r}; inputs are {IMAGE_INPUT!r} (BYTES, base64 "
            f"images) and {TENSOR_INPUT!r} (FP32 [N, 3, H, W])",
        )
    scores = await service.scores(batch)
    body: dict[str, Any] = {
        "model_name": service.name,
        "model_version": service.version,
        "outputs": [],
    }
    if parsed.id is not None:
        body["id"] = parsed.id
    if SCORES_OUTPUT in outputs:
        body["outputs"].append(
            {
                "name": SCORES_OUTPUT,
                "datatype": "FP32",
                "shape": list(scores.shape),
                "data": scores.reshape(-1).tolist(),
            }
        )
    if LABELS_OUTPUT in outputs:
        texts = [json.dumps(service.labels_over(row)) for row in scores]
        body["outputs"].append(
            {"name": LABELS_OUTPUT, "datatype": "BYTES", "shape": [len(texts)], "data": texts}
        )
    return JSONResponse(body)


async def _read_upload(request: Request) -> bytes:
    """The image of a /predict request: multipart field `file`, or a raw image/* body."""
    media = _media_type(request)
    if media.startswith("image/") or media == "application/octet-stream":
        return await request.body()
    if media != "multipart/form-data":
        raise ApiError(
            415,
            f"unsupported content type {media or 'none'!r}; send multipart/form-data "
            "with the image in field 'file' (or a raw image/* body)",
        )
    try:
        form = await request.form(max_files=4, max_fields=16)
    except Exception as exc:  # the multipart parser's errors are all about the client's body
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise ApiError(422, f"malformed multipart body: {detail}") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "malformed request: multipart field 'file' (the image) is missing")
    return await upload.read()


async def _predict(service: ModelService, request: Request, threshold: float | None) -> Response:
    blob = await _read_upload(request)
    batch = await run_in_threadpool(service.preprocess, [blob])
    row = (await service.scores(batch))[0]
    body = {
        "model": service.name,
        "version": service.version,
        "labels": service.labels_over(row, threshold),
        "scores": {label: float(v) for label, v in zip(service.labels, row, strict=True)},
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

    @app.post("/v2/models/{name}/infer", response_model=InferResponse)
    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferResponse)
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        service = _service(request)
        _check_model(service, name, version)
        return await _counted(service, lambda: _infer(service, request))

    @app.post("/predict", response_model=PredictResponse)
    async def predict(
        request: Request,
        threshold: float | None = Query(None, ge=0.0, le=1.0, description="label threshold"),
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
    _install_error_handlers(app)
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
