"""Serving against the real stack: a tiny detector logged to MLflow and registered, promoted to
'champion' (with clear errors for unknown versions and a missing candidate), served by the
same `python -m pixelpipe.serving.app --model NAME@champion` entry the CLI uses on a loopback
port (ready, infer, /predict, /metrics), giving the same detections as `mlflow models serve`
of that version on letterboxed non-square images, and a short serving benchmark against
`mlflow models serve` that writes a CSV with both targets."""

from __future__ import annotations

import base64
import csv
import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import MEAN, STD, detector_module, unmatched

from pixelpipe.bench.serve import bench_image, running, start_mlflow, start_ours
from pixelpipe.settings import Settings

pytestmark = pytest.mark.stack
LABELS = ("circle", "square", "triangle")
SIZE = 128
THRESHOLDS = {"circle": 0.25}


def register_tiny_model(settings: Settings, name: str) -> str:
    """Log an untrained tiny detector as the pyfunc training logs, register it as 'candidate'.

    Its heatmap is spread wider than the prior's, so that scores differ from box to box.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from pixelpipe.training.mlflow_model import (
        PreprocessSpec,
        experiment_id,
        log_pyfunc_model,
        register_candidate,
        tracking_uri,
    )

    uri = settings.mlflow_tracking_uri
    spec = PreprocessSpec(
        SIZE, SIZE, "letterbox", MEAN, STD, LABELS, 0.5, "detection", dict(THRESHOLDS)
    )
    model = _seeing_detector(spec)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with tracking_uri(uri):
        with mlflow.start_run(experiment_id=experiment_id(client, settings.mlflow_experiment)):
            info = log_pyfunc_model(model, spec, bench_image(64, 48))
        return register_candidate(client, info.model_uri, name)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def champion(settings: Settings, client: Any) -> str:
    """The registered model's new version, promoted from 'candidate' to 'champion'."""
    from pixelpipe.serving.registry import promote

    version = register_tiny_model(settings, settings.registered_model_name)
    assert promote(client, settings.registered_model_name) == version
    return version


@pytest.fixture(scope="module")
def service(
    settings: Settings, champion: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("serve-logs")
    server = start_ours(settings, f"{settings.registered_model_name}@champion", logs)
    with running(server, timeout=120):
        yield server.base_url


def test_promote_moves_champion_and_explains_bad_requests(
    settings: Settings, client: Any, champion: str
) -> None:
    from pixelpipe.serving.registry import RegistryError, promote, resolve

    name = settings.registered_model_name
    assert resolve(client, name, "champion").version == champion
    assert promote(client, name, champion) == champion
    with pytest.raises(RegistryError, match="no version 999"):
        promote(client, name, "999")
    lonely = f"{name}-{secrets.token_hex(3)}"
    client.create_registered_model(lonely)
    with pytest.raises(RegistryError, match="no 'candidate' version to promote"):
        promote(client, lonely)


def test_served_model_answers_oip_predict_and_metrics(
    settings: Settings, champion: str, service: str
) -> None:
    name = settings.registered_model_name
    with httpx.Client(base_url=service, timeout=30) as http:
        assert http.get("/v2/health/ready").json() == {"ready": True}
        meta = http.get(f"/v2/models/{name}").json()
        assert meta["versions"] == [champion] and meta["parameters"]["labels"] == list(LABELS)
        assert meta["parameters"]["task"] == "detection"
        assert meta["parameters"]["thresholds"] == THRESHOLDS
        image = bench_image(120, 90, seed=3)
        tensor = {"name": "image", "datatype": "BYTES", "shape": [1]}
        body = {"inputs": [{**tensor, "data": [base64.b64encode(image).decode("ascii")]}]}
        infer = http.post(f"/v2/models/{name}/infer", json=body)
        assert infer.status_code == 200, infer.text
        outputs = {o["name"]: o for o in infer.json()["outputs"]}
        assert outputs["scores"]["shape"] == [1, len(LABELS)]
        assert infer.json()["model_version"] == champion
        predict = http.post("/predict", files={"file": ("a.jpg", image, "image/jpeg")})
        assert predict.status_code == 200, predict.text
        assert predict.json()["version"] == champion
        assert list(predict.json()["scores"].values()) == outputs["scores"]["data"]
        assert json.loads(outputs["labels"]["data"][0]) == predict.json()["labels"]
        found = predict.json()["detections"]
        assert found and json.loads(outputs["detections"]["data"][0]) == found
        assert all(d["box"][0] + d["box"][2] <= 120.01 for d in found)  # source pixels
        assert http.get("/v2/models/other").status_code == 404
        metrics = http.get("/metrics").text
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    info = ("name", name), ("platform", "pytorch_torchscript"), ("version", champion)
    assert found[("pixelpipe_model_info", info)] == 1
    predicted = ("handler", "/predict"), ("method", "POST"), ("status", "200")
    assert found[("http_requests_total", predicted)] == 1
    model = ("model", name), ("version", champion)
    assert found[("nv_inference_count_total", model)] == 2


def _seeing_detector(spec: Any) -> Any:
    """The first seeded untrained detector that finds boxes inside both test images: an untrained
    net's strongest centres may all lie in the letterbox bars, whose boxes are dropped."""
    from pixelpipe.training.mlflow_model import Predictor

    for seed in range(32):
        model = detector_module(len(LABELS), spread=10.0, seed=seed)
        found = Predictor(model.eval(), spec).detect(agreement_images())
        if all(found):
            return model
    raise AssertionError("no seed in 0..31 gives an untrained detector that sees both images")


def agreement_images() -> list[bytes]:
    """The agreement test's images: letterboxed with bars on top and on the sides."""
    return [png_photo(640, 480, 5), png_photo(300, 500, 6)]


def png_photo(width: int, height: int, seed: int) -> bytes:
    """bench_image's photo-like picture as a PNG: both servers decode it the same way (our
    service decodes plain JPEGs at DCT scale, as stage 2 does, so its pixels differ a little)."""
    from PIL import Image

    from pixelpipe.training.loaders import decode_image

    buf = io.BytesIO()
    Image.fromarray(decode_image(bench_image(width, height, seed))).save(buf, format="PNG")
    return buf.getvalue()


def test_pyfunc_and_service_give_the_same_detections(
    settings: Settings, champion: str, service: str, tmp_path: Path
) -> None:
    name = settings.registered_model_name
    images = agreement_images()  # letterboxed: bars top, sides
    data = [base64.b64encode(image).decode("ascii") for image in images]
    mlflow_server = start_mlflow(settings, f"models:/{name}@champion", tmp_path)
    with running(mlflow_server), httpx.Client(timeout=60) as http:
        frame = {"dataframe_split": {"columns": ["image"], "data": [[d] for d in data]}}
        pyfunc = http.post(f"{mlflow_server.base_url}/invocations", json=frame)
        tensor = {"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}
        ours = http.post(f"{service}/v2/models/{name}/infer", json={"inputs": [tensor]})
        predict = http.post(f"{service}/predict", files={"file": ("a.png", images[0])})
    assert pyfunc.status_code == 200, pyfunc.text
    assert ours.status_code == 200, ours.text
    rows = pyfunc.json()["predictions"]
    outputs = {o["name"]: o for o in ours.json()["outputs"]}
    found = [json.loads(text) for text in outputs["detections"]["data"]]
    labels = [json.loads(text) for text in outputs["labels"]["data"]]
    for i, (row, (width, height)) in enumerate(zip(rows, [(640, 480), (300, 500)], strict=True)):
        expected = json.loads(row["detections"])
        assert expected and unmatched(expected, found[i]) == [], f"image {i}"
        assert all(d["box"][0] + d["box"][2] <= width + 0.01 for d in found[i])
        assert all(d["box"][1] + d["box"][3] <= height + 0.01 for d in found[i])
        assert set(row["labels"]) == set(labels[i]), f"image {i}"
        scores = outputs["scores"]["data"][i * len(LABELS) : (i + 1) * len(LABELS)]
        assert scores == pytest.approx([row[label] for label in LABELS], abs=1e-3)
    assert unmatched(json.loads(rows[0]["detections"]), predict.json()["detections"]) == []


def test_serving_benchmark_measures_both_servers(
    settings: Settings, champion: str, tmp_path: Path
) -> None:
    from pixelpipe.bench.serve import TARGETS, run_bench

    rows = run_bench(
        settings,
        settings.registered_model_name,
        champion,
        concurrency=2,
        seconds=2.0,
        out_dir=tmp_path,
        rounds=1,
        image=bench_image(160, 120),
        make_plot=False,
    )
    with (tmp_path / "serve.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [r["target"] for r in written] == list(TARGETS)
    for row in written:
        assert float(row["req_per_s"]) > 0, row
        assert int(row["errors"]) == 0, row["first_error"]
    assert {r["target"] for r in rows} == {"ours-infer", "mlflow-invocations", "ours-predict"}
