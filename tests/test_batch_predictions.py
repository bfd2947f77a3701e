"""batch_predictions: the champion scores a stage-2 batch; predictions validate and go back to
Label Studio as <Choices> pre-annotations, both referenced by a manifest."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from pipeline_helpers import execute, instance, tick, unique_prefix, upload_sample
from test_serving_live import register_tiny_model

from pixelpipe import manifests as mf
from pixelpipe.definitions import build_definitions
from pixelpipe.serving.predictions import validate_predictions
from pixelpipe.serving.registry import promote
from pixelpipe.settings import Settings


def test_batch_predictions_for_a_batch(settings: Settings, s3, tmp_path: Path) -> None:
    import dagster as dg

    name = f"{settings.registered_model_name}-batch"
    scoped = settings.model_copy(update={"registered_model_name": name})
    version = register_tiny_model(scoped, name)
    promote(MlflowClient(settings.mlflow_tracking_uri), name)
    prefix = unique_prefix(settings, "predict")
    upload_sample(settings, tmp_path, prefix, count=2)
    inst = instance(settings)
    result, _ = tick(settings, prefix, inst)
    (run,) = execute(build_definitions(settings), inst, result)
    partition = result.run_requests[0].partition_key

    defs = build_definitions(scoped)
    out = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[dg.AssetKey("batch_predictions")],
        partition_key=partition,
        instance=inst,
    )
    assert out.success
    (event,) = out.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    assert meta["model_version"] == version and meta["images"] == 2 * settings.augment_copies
    manifest = mf.read_json(s3, meta["manifest_uri"])
    mf.validate_against_schema("prediction_manifest", manifest)
    assert {a["format"] for a in manifest["artifacts"]} == {
        "pixelpipe_predictions",
        "label_studio_json",
    }
    doc = mf.read_json(s3, meta["predictions_uri"])
    validate_predictions(doc)
    variant = settings.variants[0].name
    assert all(p["path"].startswith(f"{variant}/{partition}/") for p in doc["predictions"])
    assert all(set(p["scores"]) == set(doc["labels"]) for p in doc["predictions"])
    tasks = mf.read_json(s3, meta["label_studio_import_uri"])
    assert len(tasks) == len(doc["predictions"])
    labels_of = {p["path"]: p["labels"] for p in doc["predictions"]}
    for task in tasks:
        image = task["data"]["image"]
        assert image.startswith(f"s3://{settings.normalized_bucket}/{variant}/")
        chosen = labels_of[image.split("/", 3)[3]]
        results = task["predictions"][0]["result"]
        if not chosen:  # nothing over the threshold: nothing pre-selected for the reviewer
            assert results == []
            continue
        (item,) = results
        assert item["type"] == "choices" and item["from_name"] == "class"
        assert item["to_name"] == "image" and item["value"]["choices"] == chosen
