"""Request parsing: OIP infer bodies, BYTES and FP32 inputs, requested outputs, /predict uploads."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from pixelpipe.serving.api_models import IMAGE_INPUT, TENSOR_INPUT, InferRequest, RequestInput
from pixelpipe.serving.errors import ApiError, validation_message


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_json_content_type(request: Request) -> None:
    media = media_type(request)
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
        raise ApiError(422, validation_message(exc.errors())) from exc
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


def requested_outputs(request: InferRequest, known: Sequence[str]) -> list[str]:
    """The outputs the request names (in `known` order), every known one when it names none."""
    if not request.outputs:
        return list(known)
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ApiError(422, f"unknown output {unknown[0]!r}; outputs are {', '.join(known)}")
    return [n for n in known if n in names]


async def read_upload(request: Request) -> bytes:
    """The image of a /predict request: multipart field `file`, or a raw image/* body."""
    media = media_type(request)
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
