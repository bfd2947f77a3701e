"""Bad input never makes the inference service (serving a detector) fail: hundreds of malformed
requests (random bytes, broken JSON, wrong types and shapes, truncated and bit-flipped images,
oversized bodies, wrong content types, odd paths and methods) all get a 4xx answer in the
`{"error": ...}` shape, and the service is still ready and answering correctly afterwards."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_helpers import export_detector

from pixelpipe.imaging.decode import encode_jpeg
from pixelpipe.serving.app import create_app
from pixelpipe.training.mlflow_model import load_predictor

MODEL = "fuzz-detector"
INFER = f"/v2/models/{MODEL}/infer"
SIZE = 32
MAX_BODY = 64 * 1024
SEED = 20240611
CASES = 600

Request = dict[str, Any]  # keyword arguments of TestClient.request, plus method and url


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    out: Path = tmp_path_factory.mktemp("model")
    predictor = load_predictor(export_detector(out, ("a", "b"), SIZE))
    app = create_app(predictor, MODEL, "1", max_body_bytes=MAX_BODY, max_wait_ms=0.5)
    # 5xx must come back as responses to be counted, not be raised into the test
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def good_jpeg() -> bytes:
    import numpy as np

    rng = np.random.default_rng(0)
    return encode_jpeg(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), 80)


def good_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (20, 24), (10, 200, 30, 128)).save(buf, format="PNG")
    return buf.getvalue()


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def valid_body() -> dict[str, Any]:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(good_jpeg())]}
    return {"inputs": [tensor]}


# --- generators of malformed requests -------------------------------------------------------
def _junk_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "none", "bool", "bigint", "list", "dict"]
    kind = rng.choice(kinds if depth < 3 else kinds[:6])
    if kind == "int":
        return rng.randint(-5, 5)
    if kind == "float":
        return rng.choice([0.5, -1e300, 1e-300, 3.0])
    if kind == "str":
        return rng.choice(["", "BYTES", "FP32", "image", "x" * 50, "\u00e9\u0000", "[]"])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "bigint":
        return rng.choice([10**30, -(10**20), 2**63])
    if kind == "list":
        return [_junk_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["name", "shape", "data", "datatype", "q"]): _junk_value(rng, depth + 1)}


def mutated_json(rng: random.Random) -> Request:
    """A valid infer body with one or two fields replaced, dropped or retyped."""
    body = valid_body()
    tensor = body["inputs"][0]
    for _ in range(rng.randint(1, 2)):
        target = rng.choice(["body", "tensor", "tensor", "tensor"])
        holder = body if target == "body" else tensor
        key = rng.choice(list(holder) + ["outputs", "parameters", "id"])
        if rng.random() < 0.3:
            holder.pop(key, None)
        else:
            holder[key] = _junk_value(rng)
    return {"method": "POST", "url": INFER, "json": body}


def wrong_shapes(rng: random.Random) -> Request:
    """Well-formed JSON with inconsistent shapes, datatypes and tensor values."""
    n = rng.randint(0, 3)
    choice = rng.randrange(6)
    if choice == 0:
        tensor = {"name": "image", "datatype": "BYTES", "shape": [n + 1], "data": ["aGk="] * n}
    elif choice == 1:
        shape = [1, 3, SIZE, rng.choice([0, 1, SIZE + 1, -SIZE])]
        tensor = {"name": "pixel_values", "datatype": "FP32", "shape": shape, "data": [0.0] * 9}
    elif choice == 2:
        value = rng.choice([True, None, "1", [1, [2]], {"v": 1}])
        data = [value] * (3 * SIZE * SIZE)
        shape = [1, 3, SIZE, SIZE]
        tensor = {"name": "pixel_values", "datatype": "FP32", "shape": shape, "data": data}
    elif choice == 3:
        ragged = [[[0.0] * SIZE] * SIZE, [[0.0] * (SIZE - 1)] * SIZE, [[0.0]]]
        shape = [1, 3, SIZE, SIZE]
        tensor = {"name": "pixel_values", "datatype": "FP32", "shape": shape, "data": [ragged]}
    elif choice == 4:
        shape = [rng.choice([0, 65, 10**6, -1]), 3, SIZE, SIZE]
        tensor = {"name": "pixel_values", "datatype": "FP32", "shape": shape, "data": [0.5] * 12}
    else:
        tensor = {"name": "image", "datatype": "BYTES", "shape": [1, 2, 3], "data": [["aGk="]]}
    body: dict[str, Any] = {"inputs": [tensor] * rng.choice([1, 1, 2])}
    return {"method": "POST", "url": INFER, "content": json.dumps(body), "headers": _json()}


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}


def damaged_image(rng: random.Random) -> Request:
    """Truncated, bit-flipped or spliced JPEG/PNG bytes, by infer (base64) or /predict."""
    blob = bytearray(rng.choice([good_jpeg(), good_png()]))
    how = rng.randrange(4)
    if how == 0:
        blob = blob[: rng.randint(0, len(blob) - 1)]
    elif how == 1:
        for _ in range(rng.randint(1, 20)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    elif how == 2:
        start = rng.randrange(len(blob))
        blob[start : start + 16] = rng.randbytes(16)
    else:
        blob = blob[:10] + rng.randbytes(rng.randint(0, 400))
    if rng.random() < 0.5:
        body = {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(blob)]}]
        }
        return {"method": "POST", "url": INFER, "json": body}
    return {"method": "POST", "url": "/predict", "files": {"file": ("x.jpg", bytes(blob))}}


def random_bytes(rng: random.Random) -> Request:
    """Random bytes under random content types, to either inference endpoint."""
    content_type = rng.choice(
        ["application/json", "text/plain", "", "application/octet-stream", "image/png",
         "multipart/form-data", "multipart/form-data; boundary=zz", "application/x+json",
         "\x7f/\x7f", "application/json; charset=utf-16"]
    )  # fmt: skip
    headers = {"content-type": content_type} if content_type else {}
    url = rng.choice([INFER, "/predict"])
    body = rng.randbytes(rng.randint(0, 2000))
    if rng.random() < 0.3:
        body = b'{"inputs": [' + body
    return {"method": "POST", "url": url, "content": body, "headers": headers}


def broken_multipart(rng: random.Random) -> Request:
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n",
    ]
    body = parts[0].encode() + good_jpeg()[: rng.randint(0, 500)]
    if rng.random() < 0.5:
        body += f"\r\n--{boundary}--\r\n".encode()
    if rng.random() < 0.3:
        body = body.replace(b"form-data", b"f\x00rm")
    header_boundary = rng.choice([boundary, "other", ""])
    headers = {"content-type": f"multipart/form-data; boundary={header_boundary}"}
    return {"method": "POST", "url": "/predict", "content": body, "headers": headers}


def oversized(rng: random.Random) -> Request:
    """Bodies over the limit, declared or streamed without Content-Length."""
    size = MAX_BODY + rng.randint(1, 4096)
    url = rng.choice([INFER, "/predict"])
    if rng.random() < 0.5:
        return {"method": "POST", "url": url, "content": b"{" * size, "headers": _json()}

    def chunks() -> Iterator[bytes]:
        for _ in range(size // 8192 + 1):
            yield b"0" * 8192

    return {"method": "POST", "url": url, "content": chunks(), "headers": _json()}


def odd_route(rng: random.Random) -> Request:
    """Other methods on the infer endpoint, unknown models, versions and paths."""
    method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO"])
    url = rng.choice(
        [INFER, f"{INFER}/", f"/v2/models/{MODEL}/versions/x/infer", "/v2/models//infer",
         "/v2/models/%00/infer", f"/v2/models/{'m' * 300}/infer", "/v2/models/../../etc/passwd",
         f"/v2/models/{MODEL}/infer?x=%ff", "/predict?threshold=2", "/predict?threshold=nan",
         f"/v2/models/{MODEL}/versions/1/infer/extra", "/v2/health/ready/x", "/metrics/.."]
    )  # fmt: skip
    return {"method": method, "url": url, "content": b"{}", "headers": _json()}


def deep_json(rng: random.Random) -> Request:
    depth = rng.choice([50, 2000, 50_000])
    text = '{"inputs": ' + "[" * depth + "]" * depth + "}"
    return {"method": "POST", "url": INFER, "content": text, "headers": _json()}


GENERATORS: list[Callable[[random.Random], Request]] = [
    mutated_json, mutated_json, wrong_shapes, damaged_image, damaged_image, random_bytes,
    broken_multipart, odd_route, deep_json, oversized,
]  # fmt: skip


def malformed_requests(count: int, seed: int) -> Iterator[Request]:
    rng = random.Random(seed)
    for i in range(count):
        yield GENERATORS[i % len(GENERATORS)](rng)


# --- the tests ------------------------------------------------------------------------------
def _send(client: TestClient, request: Request) -> Any:
    kwargs = dict(request)
    return client.request(kwargs.pop("method"), kwargs.pop("url"), **kwargs)


def _still_serving(client: TestClient) -> None:
    assert client.get("/v2/health/ready").json() == {"ready": True}
    answer = client.post(INFER, json=valid_body())
    assert answer.status_code == 200
    scores, labels, detections = answer.json()["outputs"]
    assert scores["shape"] == [1, 2] and detections["name"] == "detections"
    boxes = json.loads(detections["data"][0])
    assert boxes and all(d["label"] in ("a", "b") and len(d["box"]) == 4 for d in boxes)


def test_malformed_requests_never_get_a_5xx(client: TestClient) -> None:
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for request in malformed_requests(CASES, SEED):
        response = _send(client, request)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            failures.append(f"{request['method']} {request['url']}: {response.text[:200]}")
        elif response.status_code >= 400 and request["method"] != "HEAD":
            assert set(response.json()) == {"error"}, response.text
    assert failures == [], f"{len(failures)} 5xx answers, e.g. {failures[:3]}"
    assert sum(statuses.values()) == CASES
    assert {400, 404, 405, 413, 415, 422} <= set(statuses), statuses
    _still_serving(client)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
TENSORS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["image", "pixel_values", ""]) | st.text(max_size=5),
        "datatype": st.sampled_from(["BYTES", "FP32", "INT8"]) | JSON_VALUES,
        "shape": st.lists(st.integers(-3, 70), max_size=5) | JSON_VALUES,
        "data": st.lists(st.sampled_from(["aGk=", "", 0.5, 1, None]), max_size=6) | JSON_VALUES,
    },
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(inputs=st.lists(TENSORS, max_size=3) | JSON_VALUES, outputs=JSON_VALUES)
def test_arbitrary_infer_json_is_answered_without_a_5xx(
    client: TestClient, inputs: Any, outputs: Any
) -> None:
    # json.dumps, not json=: NaN and Infinity tokens are part of what a client may send
    body = json.dumps({"inputs": inputs, "outputs": outputs})
    response = client.post(INFER, content=body, headers=_json())
    assert response.status_code < 500, response.text
    assert response.status_code in (200, 400, 413, 422), response.text
