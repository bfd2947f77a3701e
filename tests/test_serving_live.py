"""Serving against the real stack: a tiny model logged to MLflow and registered, promoted to
'champion' (with clear errors for unknown versions and a missing candidate), served by the
same `python -m pixelpipe.serving.app --model NAME@champion` entry the CLI uses on a loopback
port (ready, infer, /predict, /metrics), and a short serving benchmark against
`mlflow models serve` that writes a CSV with both targets."""

from __future__ import annotations

import base64
import csv
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pixelpipe.bench.serve import bench_image, running, start_ours
from pixelpipe.settings import Settings

pytestmark = pytest.mark.stack
LABELS = ("circle", "square", "triangle")


def register_tiny_model(settings: Settings, name: str) -> str:
    """Log an untrained tiny model as the pyfunc training logs, register it as 'candidate'."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from pixelpipe.training.mlflow_model import (
        PreprocessSpec,
        experiment_id,
        log_pyfunc_model,
        register_candidate,
        tracking_uri,
    )
    from pixelpipe.training.model import build_model

    torch.manual_seed(0)
    uri = settings.mlflow_tracking_uri
    spec = PreprocessSpec(48, 48, "fit", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), LABELS)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with tracking_uri(uri):
        with mlflow.start_run(experiment_id=experiment_id(client, settings.mlflow_experiment)):
            info = log_pyfunc_model(build_model("tiny", len(LABELS)), spec, bench_image(64, 48))
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
