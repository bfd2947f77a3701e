"""The inference service without a network, serving a detector: Open Inference Protocol v2
and /predict answers (detections in source pixels, per-class thresholds) that validate against
the committed schemas, boxes mapped back through letterbox and fit, EXIF-rotated images, every
error status in the `{"error": ...}` shape, refusal of decompression bombs, the FP32 tensor
path, an image classifier's answers, /metrics, micro-batching, model reference parsing, and
the offline predictions + Label Studio import that batch prediction builds on."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import MEAN, STD, export_detector, unmatched

from pixelpipe.annotations.labelstudio import rectangle_config
from pixelpipe.imaging.decode import encode_jpeg
from pixelpipe.imaging.resize_cpu import plain_jpeg_size
from pixelpipe.serving.api_models import SCHEMA_DIR, json_schemas
from pixelpipe.serving.app import create_app
from pixelpipe.serving.batching import BatchConfig, BatcherStopped, MicroBatcher
from pixelpipe.serving.detections import image_labels, input_geometry, to_source
from pixelpipe.serving.predictions import (
    ls_choices_import,
    predict_files,
    predictions_document,
    validate_predictions,
)
from pixelpipe.serving.registry import ModelRef, parse_ref
from pixelpipe.settings import Settings, load_settings
from pixelpipe.training.loaders import decode_image, preprocess_images
from pixelpipe.training.mlflow_model import (
    Predictor,
    PreprocessSpec,
    export_model,
    load_predictor,
)
from pixelpipe.training.model import build_model

LABELS = ("circle", "square", "triangle")
SIZE = 48
MODEL = "test-detector"
VERSION = "3"
INFER = f"/v2/models/{MODEL}/infer"


# --- fixtures and helpers -------------------------------------------------------------------
def make_detector(out_dir: Path, **spec: Any) -> Predictor:
    """An untrained tiny detector on SIZE x SIZE letterboxed input (its prior: scores ~0.1)."""
    return load_predictor(export_detector(out_dir, LABELS, SIZE, **spec))


def make_classifier(
    out_dir: Path, threshold: float = 0.5, thresholds: dict[str, float] | None = None
) -> Predictor:
    import torch

    torch.manual_seed(0)
    spec = PreprocessSpec(
        SIZE, SIZE, "fit", MEAN, STD, LABELS, threshold, "classification", thresholds or {}
    )
    export_model(build_model("tiny", len(LABELS)), spec, out_dir)
    return load_predictor(out_dir)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return make_detector(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return make_classifier(tmp_path_factory.mktemp("classifier"))


def make_app(predictor: Predictor, **kwargs: Any) -> FastAPI:
    return create_app(predictor, MODEL, VERSION, **{"max_wait_ms": 1.0, **kwargs})


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(make_app(predictor)) as c:
        yield c


def picture(width: int = 96, height: int = 72, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    rgb[height // 4 : height // 2, width // 3 : width // 2] = rng.integers(0, 256, 3)
    return rgb


def jpeg(width: int = 96, height: int = 72, seed: int = 0) -> bytes:
    return encode_jpeg(picture(width, height, seed), 90)


def png(width: int = 96, height: int = 72, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(picture(width, height, seed)).save(buf, format="PNG")
    return buf.getvalue()


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def image_request(*blobs: bytes, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "image", "shape": [len(blobs)], "datatype": "BYTES"}
    return {"inputs": [{**tensor, "data": [b64(b) for b in blobs]}], **extra}


def validate(name: str, document: Any) -> None:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    jsonschema.validate(document, schema)


def output(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(o for o in body["outputs"] if o["name"] == name)


def detections_of(body: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The `detections` BYTES output, parsed and checked against the committed schema."""
    found = [json.loads(text) for text in output(body, "detections")["data"]]
    for image in found:
        validate("detections", image)
    return found


def inside(detections: list[dict[str, Any]], width: float, height: float) -> bool:
    return all(
        d["box"][0] >= 0
        and d["box"][1] >= 0
        and d["box"][0] + d["box"][2] <= width + 0.01
        and d["box"][1] + d["box"][3] <= height + 0.01
        for d in detections
    )


def best_scores(detections: list[dict[str, Any]]) -> list[float]:
    return [max((d["score"] for d in detections if d["label"] == k), default=0.0) for k in LABELS]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(text: str, metric: str, /, **labels: str) -> float:
    """Sum of the samples called `metric` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples(text).items() if n == metric and wanted <= lab)


# --- schemas --------------------------------------------------------------------------------
def test_committed_schemas_match_models() -> None:
    for name, schema in json_schemas().items():
        path = SCHEMA_DIR / f"{name}.schema.json"
        assert path.exists(), f"{path} missing: python -m pixelpipe.serving.app --write-schemas"
        assert json.loads(path.read_text()) == json.loads(json.dumps(schema)), f"{path} drifted"


def test_health_and_metadata_answers_validate(client: TestClient) -> None:
    live = client.get("/v2/health/live")
    ready = client.get("/v2/health/ready")
    assert (live.status_code, ready.status_code) == (200, 200)
    validate("health_live", live.json())
    validate("health_ready", ready.json())
    assert ready.json() == {"ready": True}
    validate("server_metadata", client.get("/v2").json())

    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/{VERSION}"):
        meta = client.get(path)
        assert meta.status_code == 200
        validate("model_metadata", meta.json())
    body = meta.json()
    assert body["name"] == MODEL and body["versions"] == [VERSION]
    assert body["parameters"]["labels"] == list(LABELS)  # from preprocess.json, not hard-coded
    inputs = {t["name"]: t for t in body["inputs"]}
    assert inputs["pixel_values"] == {
        "name": "pixel_values",
        "datatype": "FP32",
        "shape": [-1, 3, SIZE, SIZE],
    }
    assert inputs["image"]["datatype"] == "BYTES"
    assert [o["name"] for o in body["outputs"]] == ["scores", "labels", "detections"]
    params = body["parameters"]
    assert (params["task"], params["mode"], params["thresholds"]) == ("detection", "letterbox", {})
    assert "model input pixels (48x48)" in params["box_pixels"]["pixel_values"]
    assert "source image pixels" in params["box_pixels"]["image"]
    model_ready = client.get(f"/v2/models/{MODEL}/ready")
    assert model_ready.status_code == 200
    validate("model_ready", model_ready.json())
    assert model_ready.json() == {"name": MODEL, "ready": True}


# --- inference ------------------------------------------------------------------------------
def test_infer_with_encoded_images(client: TestClient, predictor: Predictor) -> None:
    request = image_request(png(), jpeg(seed=1), id="req-7")
    validate("infer_request", request)
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    validate("infer_response", body)
    assert (body["model_name"], body["model_version"], body["id"]) == (MODEL, VERSION, "req-7")
    assert [o["name"] for o in body["outputs"]] == ["scores", "labels", "detections"]
    found = detections_of(body)
    assert all(found) and all(inside(image, 96, 72) for image in found)  # source pixels
    # a PNG takes exactly the pyfunc's path; JPEGs decode at DCT scale like stage 2
    assert unmatched(predictor.detect([png()])[0], found[0]) == []
    scores = output(body, "scores")
    assert scores["datatype"] == "FP32" and scores["shape"] == [2, len(LABELS)]
    grid = np.asarray(scores["data"]).reshape(2, len(LABELS))
    assert [best_scores(image) for image in found] == grid.tolist()  # each label's best box
    np.testing.assert_allclose(grid[0], predictor.scores([png()])[0], atol=1e-3)
    labels = output(body, "labels")
    assert labels["datatype"] == "BYTES" and labels["shape"] == [2]
    for text, image in zip(labels["data"], found, strict=True):
        assert json.loads(text) == image_labels(image, {}, 0.5)
    only = client.post(INFER, json=image_request(png(), outputs=[{"name": "detections"}]))
    assert [o["name"] for o in only.json()["outputs"]] == ["detections"]
    assert detections_of(only.json())[0] == found[0]


def test_infer_with_a_preprocessed_fp32_tensor(client: TestClient, predictor: Predictor) -> None:
    import torch

    s = predictor.spec
    tensor = preprocess_images([png()], s.input_width, s.input_height, s.mode, s.mean, s.std)
    request = {
        "inputs": [
            {
                "name": "pixel_values",
                "datatype": "FP32",
                "shape": list(tensor.shape),
                "data": tensor.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "detections"}, {"name": "scores"}],
    }
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    validate("infer_response", body)
    assert [o["name"] for o in body["outputs"]] == ["scores", "detections"]
    # no source image: boxes stay in the model's input pixels
    with torch.inference_mode():
        raw = predictor.module(tensor.contiguous())[0].numpy()
    expected = to_source(raw, input_geometry(SIZE, SIZE, s), LABELS)
    (found,) = detections_of(body)
    assert found and inside(found, SIZE, SIZE)
    assert unmatched(expected, found) == []
    assert output(body, "scores")["data"] == best_scores(found)
    nested = {**request["inputs"][0], "data": tensor.tolist()}  # nested data is valid OIP too
    again = client.post(f"/v2/models/{MODEL}/versions/{VERSION}/infer", json={"inputs": [nested]})
    assert again.status_code == 200
    assert detections_of(again.json())[0] == found


def test_predict_multipart_and_raw_body(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    validate("predict_response", body)
    assert (body["model"], body["version"], body["task"]) == (MODEL, VERSION, "detection")
    assert body["detections"] and inside(body["detections"], 96, 72)
    infer = client.post(INFER, json=image_request(jpeg())).json()
    assert body["detections"] == detections_of(infer)[0]
    assert list(body["scores"]) == list(LABELS)
    assert list(body["scores"].values()) == output(infer, "scores")["data"]
    assert body["labels"] == image_labels(body["detections"], {}, 0.5)
    raw = client.post("/predict", content=jpeg(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["detections"] == body["detections"]
    everything = client.post("/predict?threshold=0", files={"file": ("a.jpg", jpeg())})
    nothing = client.post("/predict?threshold=1", files={"file": ("a.jpg", jpeg())})
    assert set(everything.json()["labels"]) == {d["label"] for d in body["detections"]}
    assert nothing.json()["labels"] == []
    assert nothing.json()["detections"] == body["detections"]  # the threshold picks labels only


def test_per_class_thresholds_pick_the_labels(tmp_path: Path) -> None:
    thresholds = {"circle": 0.0, "square": 1.0}  # triangle: the 0.99 fallback
    detector = make_detector(tmp_path / "detector", threshold=0.99, thresholds=thresholds)
    with TestClient(make_app(detector, warm_up=False)) as c:
        meta = c.get(f"/v2/models/{MODEL}").json()
        body = c.post("/predict", files={"file": ("a.png", png())}).json()
        infer = c.post(INFER, json=image_request(png())).json()
        low = c.post("/predict?threshold=0.05", files={"file": ("a.png", png())}).json()
    assert meta["parameters"]["thresholds"] == thresholds
    assert {d["label"] for d in body["detections"]} == set(LABELS)
    assert body["labels"] == ["circle"]
    assert json.loads(output(infer, "labels")["data"][0]) == ["circle"]
    assert set(low["labels"]) == set(LABELS)  # the query parameter overrides every threshold


def test_input_boxes_map_back_to_source_pixels() -> None:
    labels = ("a", "b")
    letterbox = PreprocessSpec(128, 128, "letterbox", MEAN, STD, labels, task="detection")
    geom = input_geometry(640, 480, letterbox)
    assert (geom.scale_x, geom.scale_y, geom.pad_x, geom.pad_y) == (0.2, 0.2, 0, 16)
    raw = np.array(
        [
            [10, 26, 20, 40, 0.9, 1],  # inside the picture
            [0, 0, 128, 20, 0.8, 0],  # starts in the top bar: clipped to the image
            [0, 0, 128, 10, 0.7, 0],  # only bar: dropped
            [5, 30, 5, 5, 0.01, 0],  # under the 0.05 floor: dropped
        ]
    )
    assert to_source(raw, geom, labels) == [
        {"label": "b", "score": 0.9, "box": [50.0, 50.0, 100.0, 200.0]},
        {"label": "a", "score": 0.8, "box": [0.0, 0.0, 640.0, 20.0]},
    ]
    fit = PreprocessSpec(128, 128, "fit", MEAN, STD, labels, task="detection")
    geom = input_geometry(640, 480, fit)
    assert (geom.resized_width, geom.resized_height, geom.crop_x, geom.crop_y) == (171, 128, 21, 0)
    source = [100.0, 60.0, 200.0, 150.0]
    x, y = source[0] * geom.scale_x - 21, source[1] * geom.scale_y
    w, h = source[2] * geom.scale_x, source[3] * geom.scale_y
    (found,) = to_source(np.array([[x, y, w, h, 0.5, 0]]), geom, labels)
    assert found["box"] == pytest.approx(source, abs=0.01)
    # a box at the crop's left edge starts 21 input pixels into the resized image
    (edge,) = to_source(np.array([[0, 0, 10, 10, 0.5, 0]]), geom, labels)
    assert edge["box"][0] == pytest.approx(21 / geom.scale_x, abs=0.01)


def exif_jpeg(width: int, height: int, orientation: int) -> bytes:
    image = Image.fromarray(picture(width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def test_boxes_are_in_upright_source_pixels(client: TestClient, predictor: Predictor) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    rotated, plain = exif_jpeg(96, 72, 6), jpeg(96, 72)
    # the DCT path sizes by the header: plain_jpeg_size takes no EXIF-rotated file, so a
    # header size is always the upright size, the one a full decode gives
    assert plain_jpeg_size(rotated) is None and plain_jpeg_size(plain) == (96, 72)
    assert decode_image(plain).shape[:2] == (72, 96)
    (plain_geom,) = service.preprocess([plain]).geometries
    assert plain_geom == input_geometry(96, 72, predictor.spec)
    (rotated_geom,) = service.preprocess([rotated]).geometries
    assert (rotated_geom.src_width, rotated_geom.src_height) == (72, 96)
    assert decode_image(rotated).shape[:2] == (96, 72)
    body = client.post("/predict", files={"file": ("r.jpg", rotated, "image/jpeg")}).json()
    assert body["detections"] and inside(body["detections"], 72, 96)
    assert unmatched(predictor.detect([rotated])[0], body["detections"]) == []


def test_classifier_models_answer_scores_and_labels(tmp_path: Path) -> None:
    thresholds = {"circle": 0.0, "square": 1.0}
    classifier = make_classifier(tmp_path / "classifier", 0.5, thresholds)
    with TestClient(make_app(classifier, warm_up=False)) as c:
        meta = c.get(f"/v2/models/{MODEL}").json()
        infer = c.post(INFER, json=image_request(png(), jpeg(seed=1)))
        predict = c.post("/predict", files={"file": ("a.png", png())})
        asked = c.post(INFER, json=image_request(png(), outputs=[{"name": "detections"}]))
    validate("model_metadata", meta)
    assert meta["parameters"]["task"] == "classification"
    assert "box_pixels" not in meta["parameters"]
    assert [o["name"] for o in meta["outputs"]] == ["scores", "labels"]
    assert infer.status_code == 200, infer.text
    validate("infer_response", infer.json())
    assert [o["name"] for o in infer.json()["outputs"]] == ["scores", "labels"]
    grid = np.asarray(output(infer.json(), "scores")["data"]).reshape(2, len(LABELS))
    assert ((grid > 0) & (grid < 1)).all()
    np.testing.assert_allclose(grid[0], classifier.scores([png()])[0], atol=1e-5)
    np.testing.assert_allclose(grid[1], classifier.scores([jpeg(seed=1)])[0], atol=0.05)
    for text, row in zip(output(infer.json(), "labels")["data"], grid, strict=True):
        expected = ["circle"] + (["triangle"] if row[2] > 0.5 else [])
        assert json.loads(text) == expected
    assert predict.status_code == 200
    validate("predict_response", predict.json())
    assert predict.json()["task"] == "classification" and predict.json()["detections"] == []
    assert list(predict.json()["scores"].values()) == grid[0].tolist()
    assert asked.status_code == 422 and "unknown output 'detections'" in asked.json()["error"]


# --- errors ---------------------------------------------------------------------------------
def _tensor(name: str, datatype: str, shape: list[Any], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


JSON = {"content-type": "application/json"}
ERROR_CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (id, path, httpx kwargs, status, part of the message)
    ("corrupt-b64-image", INFER, {"json": image_request(b"not an image at all")}, 400, "image"),
    ("truncated-jpeg", INFER, {"json": image_request(jpeg()[:700])}, 400, "truncated"),
    ("corrupt-upload", "/predict", {"files": {"file": ("x.jpg", b"\xff\xd8garbage")}}, 400, ""),
    ("empty-upload", "/predict", {"files": {"file": ("x.jpg", b"")}}, 400, "empty"),
    ("infer-as-text", INFER, {"content": b"{}", "headers": {"content-type": "text/plain"}},
     415, "content type"),
    ("infer-as-binary", INFER, {"content": b"\x00", "headers": {
        "content-type": "application/octet-stream"}}, 415, "binary"),
    ("predict-as-json", "/predict", {"json": {"file": "x"}}, 415, "multipart/form-data"),
    ("bad-json", INFER, {"content": b'{"inputs": [', "headers": JSON}, 422, "JSON"),
    ("json-array", INFER, {"json": [1, 2]}, 422, "object"),
    ("no-inputs", INFER, {"json": {"inputs": []}}, 422, "inputs"),
    ("missing-field", INFER, {"json": {"inputs": [{"name": "image", "data": []}]}}, 422,
     "shape"),
    ("wrong-datatype", INFER, {"json": _tensor("image", "FP32", [1], ["aGk="])}, 422, "BYTES"),
    ("wrong-shape", INFER, {"json": _tensor("image", "BYTES", [2], [b64(png())])}, 422, "shape"),
    ("bad-base64", INFER, {"json": _tensor("image", "BYTES", [1], ["%%%"])}, 422, "base64"),
    ("number-as-image", INFER, {"json": _tensor("image", "BYTES", [1], [7])}, 422, "base64"),
    ("unknown-input", INFER, {"json": _tensor("pixels", "FP32", [1], [0.0])}, 422, "unknown"),
    ("tensor-shape", INFER, {"json": _tensor("pixel_values", "FP32", [1, 3, 8, 8],
                                             [0.0] * 192)}, 422, "shape"),
    ("tensor-too-few", INFER, {"json": _tensor("pixel_values", "FP32", [1, 3, SIZE, SIZE],
                                               [0.0] * 7)}, 422, "fill"),
    ("tensor-strings", INFER, {"json": _tensor("pixel_values", "FP32", [1, 3, SIZE, SIZE],
                                               ["0"] * (3 * SIZE * SIZE))}, 422, "numbers"),
    ("tensor-nan", INFER, {"content": json.dumps(_tensor(
        "pixel_values", "FP32", [1, 3, SIZE, SIZE], [float("nan")] * (3 * SIZE * SIZE))),
        "headers": JSON}, 422, "finite"),
    ("unknown-output", INFER, {"json": {**image_request(png()), "outputs": [{"name": "x"}]}},
     422, "output"),
    ("no-file-field", "/predict", {"files": {"image": ("a.jpg", b"x")}}, 422, "'file'"),
    ("bad-threshold", "/predict?threshold=abc", {"content": jpeg(), "headers": {
        "content-type": "image/jpeg"}}, 422, "threshold"),
    ("unknown-model", "/v2/models/other/infer", {"json": image_request(png())}, 404,
     "unknown model"),
    ("unknown-version", f"/v2/models/{MODEL}/versions/9/infer", {"json": image_request(png())},
     404, "version"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "needle"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_bad_requests_get_an_oip_error(
    client: TestClient, path: str, kwargs: dict[str, Any], status: int, needle: str
) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    validate("error", response.json())
    assert needle in response.json()["error"]


@pytest.mark.parametrize(
    "path", ["/v2/models/other", "/v2/models/other/ready", f"/v2/models/{MODEL}/versions/1"]
)
def test_unknown_model_metadata_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    validate("error", response.json())


def test_unknown_paths_and_methods_answer_in_the_error_shape(client: TestClient) -> None:
    for response, status in (
        (client.get("/v3/nothing"), 404),
        (client.get(INFER), 405),
        (client.put("/predict"), 405),
    ):
        assert response.status_code == status
        validate("error", response.json())


def test_body_limit_checks_content_length_and_the_streamed_body(predictor: Predictor) -> None:
    with TestClient(make_app(predictor, max_body_bytes=4096, warm_up=False)) as small:
        declared = small.post(INFER, content=b"x" * 5000, headers=JSON)
        assert declared.status_code == 413
        assert "Content-Length" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
            yield from (b"y" * 1024 for _ in range(8))

        streamed = small.post(INFER, content=chunks(), headers=JSON)
        assert streamed.status_code == 413
        assert "more than" in streamed.json()["error"]  # counted, not declared
        validate("error", streamed.json())
        assert small.post(INFER, json=image_request(png(20, 20))).status_code == 200


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (IHDR rewritten, CRC fixed)."""
    blob = bytearray(png(8, 8))
    start = 8 + 8  # signature, then length + b"IHDR"
    blob[start : start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(blob[12 : start + 13]))
    blob[start + 13 : start + 17] = struct.pack(">I", crc)
    return bytes(blob)


def test_decompression_bombs_are_refused_before_decoding(predictor: Predictor) -> None:
    with TestClient(make_app(predictor, max_pixels=100_000, warm_up=False)) as guarded:
        huge = guarded.post(INFER, json=image_request(png_bomb(60_000, 60_000)))
        assert huge.status_code == 413
        assert "decompression bomb" in huge.json()["error"]
        # over this service's limit though Pillow itself would still open it
        big = guarded.post("/predict", files={"file": ("big.png", png_bomb(1000, 1000))})
        assert big.status_code == 413
        assert "1000x1000" in big.json()["error"]
        validate("error", big.json())
        assert guarded.get("/v2/health/ready").status_code == 200


# --- metrics and batching -------------------------------------------------------------------
def test_metrics_count_requests_and_carry_the_version(client: TestClient) -> None:
    handler = "/v2/models/{name}/infer"
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.post(INFER, json=image_request(png())).status_code == 200
    assert client.post(INFER, content=b"{", headers=JSON).status_code == 422
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def delta(metric: str, /, **labels: str) -> float:
        return sample(text, metric, **labels) - sample(before, metric, **labels)

    assert delta("http_requests_total", handler=handler, method="POST", status="200") == 3
    assert delta("http_requests_total", handler=handler, status="422") == 1
    assert delta("nv_inference_count_total") == 3
    assert sample(text, "nv_inference_request_failure_total", reason="422") >= 1
    assert sample(text, "nv_inference_exec_count_total") >= 1
    assert sample(text, "http_request_duration_seconds_bucket", handler=handler, le="+Inf") >= 4
    assert sample(text, "pixelpipe_inference_batch_size_bucket", le="1.0") >= 1
    assert sample(text, "request_predict_seconds_count") >= 1
    assert sample(text, "pixelpipe_model_info", name=MODEL, version=VERSION) == 1
    assert 'handler="/v2/models/other' not in text  # route templates, not raw paths


def test_concurrent_requests_share_a_batch(predictor: Predictor) -> None:
    app = make_app(predictor, max_batch_size=16, max_wait_ms=50.0, warm_up=False)
    statuses: list[int] = []
    with TestClient(app) as c:
        barrier = threading.Barrier(8)

        def call() -> None:
            barrier.wait()
            statuses.append(c.post(INFER, json=image_request(png(32, 32))).status_code)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        text = c.get("/metrics").text
    assert statuses == [200] * 8
    executions = sample(text, "pixelpipe_inference_batch_size_count")
    singles = sample(text, "pixelpipe_inference_batch_size_bucket", le="1.0")
    assert sample(text, "pixelpipe_inference_batch_size_sum") == 8
    assert executions < 8 and singles < executions  # at least one batch held several requests


def test_micro_batcher_limits_batches_and_reports_failures() -> None:
    seen: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        seen.append(items)
        if -1 in items:
            raise ValueError("bad item")
        return [2 * i for i in items]

    async def scenario() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(double, BatchConfig(3, 30.0))
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
        assert results == [2 * i for i in range(7)]
        assert all(len(b) <= 3 for b in seen) and len(seen) < 7
        assert await batcher.submit(10, size=5) == 20  # larger than a batch: runs alone
        assert seen[-1] == [10]
        with pytest.raises(ValueError, match="bad item"):
            await batcher.submit(-1)
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit(1)

    asyncio.run(scenario())


def test_batch_config_reads_settings_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_MAX_BATCH", "4")
    monkeypatch.setenv("SERVE_MAX_WAIT_MS", "2.5")
    assert BatchConfig.from_settings() == BatchConfig(4, 2.5)
    assert BatchConfig.from_settings(load_settings()) == BatchConfig(4, 2.5)
    # values given to Settings win over the environment
    given = Settings(serve_max_batch=32, serve_max_wait_ms=0.0)
    assert BatchConfig.from_settings(given) == BatchConfig(32, 0.0)
    with pytest.raises(ValueError, match="SERVE_MAX_BATCH"):
        BatchConfig(0, 1.0)


# --- registry references, offline predictions -----------------------------------------------
def test_model_references_parse() -> None:
    assert parse_ref("clf@champion") == ModelRef("clf", alias="champion")
    assert parse_ref("models:/clf/7") == ModelRef("clf", version="7")
    assert parse_ref("clf") == ModelRef("clf", alias="champion")
    assert parse_ref("clf@candidate").uri == "models:/clf@candidate"
    for bad in ("", "@x", "clf/", "clf/abc"):
        with pytest.raises(ValueError, match="NAME@ALIAS"):
            parse_ref(bad)


def test_predict_files_and_label_studio_import(tmp_path: Path, classifier: Predictor) -> None:
    predictor = classifier
    paths = []
    for i, blob in enumerate((png(seed=1), b"broken", jpeg(seed=2))):
        paths.append(tmp_path / f"im{i}.img")
        paths[-1].write_bytes(blob)
    records = predict_files(predictor, paths, batch_size=2)
    assert [r["path"] for r in records] == [str(p) for p in paths]
    assert records[1]["error"] and records[1]["scores"] is None
    np.testing.assert_allclose(
        list(records[0]["scores"].values()), predictor.scores([png(seed=1)])[0], atol=1e-5
    )
    document = predictions_document(records, predictor, MODEL, VERSION)
    validate_predictions(document)
    with pytest.raises(jsonschema.ValidationError):
        validate_predictions({**document, "predictions": [{"scores": {}}]})

    every = Predictor(predictor.module, PreprocessSpec(**{**_spec(predictor), "threshold": 0.0}))
    tasks = ls_choices_import(
        predict_files(every, paths), lambda p: f"s3://bucket/{Path(p).name}", "v3"
    )
    assert len(tasks) == 2  # the broken file is not imported
    config = ET.fromstring(rectangle_config(list(LABELS), choices_name="class"))
    control = next(e for e in config.iter("Choices"))
    allowed = {c.get("value") for c in control.iter("Choice")}
    for task in tasks:
        assert task["data"]["image"].startswith("s3://bucket/im")
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "v3" and 0 <= prediction["score"] <= 1
        (result,) = prediction["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == (
            control.get("name"),
            control.get("toName"),
            "choices",
        )
        assert result["value"]["choices"] == list(LABELS)
        assert set(result["value"]["choices"]) <= allowed

    none = Predictor(predictor.module, PreprocessSpec(**{**_spec(predictor), "threshold": 1.0}))
    quiet = ls_choices_import(predict_files(none, paths[:1]), str, "v3")
    assert quiet[0]["predictions"][0]["result"] == []


def _spec(predictor: Predictor) -> dict[str, Any]:
    return PreprocessSpec.from_dict(predictor.spec.to_dict()).__dict__
