"""Request and response models of the service; JSON Schemas committed in schemas/serving/."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr

PLATFORM = "pytorch_torchscript"
IMAGE_INPUT = "image"
TENSOR_INPUT = "pixel_values"
SCORES_OUTPUT = "scores"
LABELS_OUTPUT = "labels"
DETECTIONS_OUTPUT = "detections"
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "serving"

Task = Literal["detection", "classification"]


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
    """What preprocess.json says (input size, resize mode, normalisation, labels, thresholds)."""

    task: Task
    labels: list[str]
    threshold: float = Field(description="fallback label threshold")
    thresholds: dict[str, float] = Field(
        description="per-label thresholds chosen on validation; a label absent here uses "
        "`threshold`"
    )
    input_width: int
    input_height: int
    mode: str
    mean: list[float]
    std: list[float]
    box_pixels: dict[str, str] | None = Field(
        None,
        description="detectors only: per input name, the pixels that boxes are given in",
    )


class ModelMetadataResponse(_Strict):
    """GET /v2/models/{name}: OIP model metadata plus the preprocessing as `parameters`."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: ModelParameters


class Detection(_Strict):
    """One detected object; `box` is [x, y, width, height] from the image's top-left corner."""

    label: str
    score: float = Field(ge=0.0, le=1.0)
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x, y, width, height] in source-image pixels (model-input pixels for an "
        "FP32 `pixel_values` input, which has no source image)",
    )


class Detections(RootModel[list[Detection]]):
    """The `detections` of one image, best score first (each element of the BYTES output)."""


class ResponseOutput(_Strict):
    """One output tensor; `data` is flattened row-major."""

    name: str
    datatype: Literal["BYTES", "FP32"]
    shape: list[int]
    data: list[float] | list[str]


class InferResponse(_Strict):
    """POST /v2/models/{name}/infer.

    Outputs: `scores` FP32 [N, C] (image-level score per label; a detector's is each label's
    best box), `labels` BYTES [N] (JSON array text of the labels over their thresholds) and,
    for a detector, `detections` BYTES [N] (JSON text of a `Detections` list per image).
    """

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class PredictResponse(_Strict):
    """POST /predict: detections in source pixels, labels over their thresholds, label scores."""

    model: str
    version: str
    task: Task
    labels: list[str] = Field(
        description="labels whose score beats the label's own threshold (or the `threshold` "
        "query parameter), best first for a detector"
    )
    scores: dict[str, float] = Field(description="every label's image-level score")
    detections: list[Detection] = Field(
        description="best score first, in source-image pixels; empty for a classifier"
    )


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
    "detections": Detections,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every serving JSON Schema (the responses, the infer request, the predictions document)."""
    from pixelpipe.serving.predictions import PredictionsDocument

    models: dict[str, type[BaseModel]] = {**RESPONSE_MODELS, "predictions": PredictionsDocument}
    return {name: model.model_json_schema() for name, model in models.items()}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate schemas/serving/*.schema.json (committed; a test fails when they drift)."""
    from pixelpipe.schema_files import write_schema_files

    return write_schema_files(json_schemas(), directory)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """model's JSON Schema with every `$defs` reference inlined (for an OpenAPI request body)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return expand(defs[ref.removeprefix("#/$defs/")])
            return {k: expand(v) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    return dict(expand(schema))


# OpenAPI request bodies of the routes that parse their own body (errors keep the OIP shape)
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(InferRequest)}},
    }
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
