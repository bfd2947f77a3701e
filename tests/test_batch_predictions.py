"""batch_predictions with a detector through the real stack: the champion scores a batch's RAW
images (a broken one fails alone, with its reason); the predictions document validates and
holds boxes in raw pixels; the COCO results load with pycocotools against their images, with
the training COCO's category ids; the Label Studio import has RectangleLabels pre-annotations
in percent of the raw image, only boxes over their class's threshold, pointing at
s3://RAW_BUCKET/<key> as raw_annotations resolves it; `convert coco-to-ls` keeps the scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from pipeline_helpers import instance, tick, unique_prefix, upload_sample
from typer.testing import CliRunner

from pixelpipe import manifests as mf
from pixelpipe.annotations.coco import categories
from pixelpipe.annotations.labelstudio import config_label_names
from pixelpipe.annotations.refs import resolve_ref
from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.cli import app
from pixelpipe.datagen import CLASSES
from pixelpipe.definitions import build_definitions
from pixelpipe.serving.predictions import validate_predictions
from pixelpipe.serving.registry import promote
from pixelpipe.settings import Settings

pytestmark = pytest.mark.stack
# every class but "cross" has its own threshold of 0; cross falls back to 0.5, which an
# untrained detector's scores (about 0.5 x 1/5) never beat: its boxes stay out of Label Studio
THRESHOLDS = {label: 0.0 for label in CLASSES if label != "cross"}
MAX_BOXES = 4


def register_tiny_detector(settings: Settings, name: str, k: int = MAX_BOXES) -> str:
    """An untrained tiny detector over datagen's classes, logged and registered as 'candidate'
    the way training does it; at most k boxes per image."""
    import mlflow

    from pixelpipe.bench.serve import bench_image
    from pixelpipe.training.detector import DetectorExport, build_detector
    from pixelpipe.training.mlflow_model import (
        PreprocessSpec,
        experiment_id,
        log_pyfunc_model,
        register_candidate,
        tracking_uri,
    )

    torch.manual_seed(0)
    uri = settings.mlflow_tracking_uri
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = PreprocessSpec(
        64, 48, "fit", mean, std, CLASSES, 0.5, task="detection", thresholds=THRESHOLDS
    )
    net = build_detector("tiny", len(CLASSES))
    with torch.no_grad():
        net.heatmap[-1].bias.zero_()  # every centre an object: scores about 0.5 x 1/classes
    model = DetectorExport(net, k=k)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with tracking_uri(uri):
        with mlflow.start_run(experiment_id=experiment_id(client, settings.mlflow_experiment)):
            info = log_pyfunc_model(model, spec, bench_image(64, 48))
        return register_candidate(client, info.model_uri, name)


def run_batch_predictions(settings: Settings, inst: Any, partition: str) -> dict[str, Any]:
    """batch_predictions for one partition through the definitions; its metadata."""
    import dagster as dg

    out = (
        build_definitions(settings)
        .resolve_implicit_global_asset_job_def()
        .execute_in_process(
            asset_selection=[dg.AssetKey("batch_predictions")],
            partition_key=partition,
            instance=inst,
        )
    )
    assert out.success
    (event,) = out.get_asset_materialization_events()
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def _px(value: dict[str, Any], width: int, height: int) -> list[float]:
    return [value["x"] * width / 100, value["y"] * height / 100,
            value["width"] * width / 100, value["height"] * height / 100]  # fmt: skip


def test_detector_predictions_for_a_batch(settings: Settings, s3: Any, tmp_path: Path) -> None:
    name = f"{settings.registered_model_name}-detect"
    scoped = settings.model_copy(update={"registered_model_name": name})
    version = register_tiny_detector(scoped, name)
    promote(MlflowClient(settings.mlflow_tracking_uri), name)
    prefix = unique_prefix(settings, "predict")
    sample = upload_sample(settings, tmp_path, prefix, count=2)
    broken = f"{prefix}/broken.jpg"
    s3.put_object(Bucket=settings.raw_bucket, Key=broken, Body=b"not a jpeg")
    inst = instance(settings)
    result, _ = tick(settings, prefix, inst)
    (request,) = result.run_requests
    for partitions in result.dynamic_partitions_requests:
        inst.add_dynamic_partitions(raw_batches_partitions.name, list(partitions.partition_keys))

    meta = run_batch_predictions(scoped, inst, request.partition_key)

    assert (meta["model_version"], meta["task"]) == (version, "detection")
    assert (meta["images"], meta["failures"]) == (2, 1)
    manifest = mf.read_json(s3, meta["manifest_uri"])
    mf.validate_against_schema("prediction_manifest", manifest)
    assert {a["format"]: a["uri"] for a in manifest["artifacts"]} == {
        "pixelpipe_predictions": meta["predictions_uri"],
        "coco_results": meta["coco_results_uri"],
        "coco": meta["coco_images_uri"],
        "label_studio_json": meta["label_studio_import_uri"],
    }
    (failure,) = manifest["failures"]
    assert failure["source_uri"] == f"s3://{settings.raw_bucket}/{broken}" and failure["reason"]

    doc = mf.read_json(s3, meta["predictions_uri"])
    validate_predictions(doc)
    assert doc["task"] == "detection" and doc["labels"] == list(CLASSES)
    assert doc["thresholds"] == THRESHOLDS
    good = [r for r in doc["predictions"] if not r.get("error")]
    assert len(good) == 2 and all(r["path"].startswith(f"{prefix}/") for r in good)
    for record in good:  # raw images, so raw pixels
        local = sample / "images" / record["path"].removeprefix(f"{prefix}/")
        assert (record["width"], record["height"]) == Image.open(local).size
        assert 0 < len(record["detections"]) <= MAX_BOXES
        for d in record["detections"]:
            x, y, w, h = d["box"]
            assert min(x, y) >= 0 and w > 0 and h > 0
            assert x + w <= record["width"] + 0.01 and y + h <= record["height"] + 0.01
        best = {c: max([d["score"] for d in record["detections"] if d["label"] == c], default=0)
                for c in CLASSES}  # fmt: skip
        assert record["scores"] == pytest.approx(best)
        assert record["labels"] == [c for c in CLASSES if best[c] > THRESHOLDS.get(c, 0.5)]

    # COCO results: the category ids the training COCO uses (label config order, coco.py)
    from pycocotools.coco import COCO

    images = mf.read_json(s3, meta["coco_images_uri"])
    results = mf.read_json(s3, meta["coco_results_uri"])
    config = (sample / "annotations" / "label_config.xml").read_text()
    assert images["categories"] == categories(config_label_names(config))
    gt = COCO()
    gt.dataset = images
    gt.createIndex()
    dt = gt.loadRes(results)
    assert len(dt.getAnnIds()) == meta["detections"] == sum(len(r["detections"]) for r in good)
    file_of = {im["id"]: im["file_name"] for im in images["images"]}
    name_of = {c["id"]: c["name"] for c in images["categories"]}
    record_of = {r["path"]: r for r in good}
    for ann in dt.loadAnns(dt.getAnnIds()):
        record = record_of[file_of[ann["image_id"]]]
        assert {"label": name_of[ann["category_id"]], "score": ann["score"],
                "box": ann["bbox"]} in record["detections"]  # fmt: skip

    # Label Studio: boxes over their class's threshold, percent of the raw image
    tasks = mf.read_json(s3, meta["label_studio_import_uri"])
    assert len(tasks) == 2 == meta["label_studio_tasks"]
    kept_total = 0
    for task in tasks:
        ref = task["data"]["image"]
        key = resolve_ref(ref, settings.raw_bucket, settings.raw_prefix)
        assert ref == f"s3://{settings.raw_bucket}/{key}"
        record = record_of[key]
        kept = [d for d in record["detections"] if d["score"] > THRESHOLDS.get(d["label"], 0.5)]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == f"{name}/{version}"
        results_ = prediction["result"]
        assert len(results_) == len(kept)
        kept_total += len(kept)
        for region, d in zip(results_, kept, strict=True):
            assert (region["type"], region["from_name"], region["to_name"]) == (
                "rectanglelabels", "label", "image",
            )  # fmt: skip
            assert f'<RectangleLabels name="{region["from_name"]}"' in config
            w, h = record["width"], record["height"]
            assert (region["original_width"], region["original_height"]) == (w, h)
            assert region["value"]["rotation"] == 0 and region["image_rotation"] == 0
            assert region["value"]["rectanglelabels"] == [d["label"]] != ["cross"]
            assert _px(region["value"], w, h) == pytest.approx(d["box"], abs=1e-6)
            assert region["score"] == d["score"]
        if kept:
            assert prediction["score"] == pytest.approx(sum(d["score"] for d in kept) / len(kept))
    assert kept_total == meta["label_studio_boxes"] > 0

    # `pixelpipe convert coco-to-ls` on the same results keeps every box's score
    coco = {**images, "annotations": dt.dataset["annotations"]}
    (tmp_path / "scored.json").write_text(json.dumps(coco))
    args = ["convert", "coco-to-ls", str(tmp_path / "scored.json"), str(tmp_path / "ls.json")]
    done = CliRunner().invoke(app, [*args, "--bucket", settings.raw_bucket])
    assert done.exit_code == 0, done.output
    converted = json.loads((tmp_path / "ls.json").read_text())
    scores = sorted(r["score"] for t in converted for r in t["predictions"][0]["result"])
    assert scores == sorted(a["score"] for a in results)
