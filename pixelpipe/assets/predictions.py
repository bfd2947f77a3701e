"""Stage 4 (batch): the champion model over a batch's raw images -> predictions, COCO results
and a Label Studio import whose references raw_annotations resolves when the work comes back."""

import json
import time
from typing import Any

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.assets.training import trained_model
from pixelpipe.io_managers.staging import StagedBatch, cleanup_run
from pixelpipe.resources.mlflow import MlflowResource
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.resources.settings import SettingsResource
from pixelpipe.storage.layout import batch_listing_key

PREDICTIONS_PREFIX = "predictions"


class BatchPredictionsConfig(dg.Config):
    """Which model alias scores the batch."""

    alias: str = "champion"


def _put(client: Any, bucket: str, key: str, body: Any) -> str:
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(body, indent=1).encode(),
        ContentType="application/json",
    )
    return f"s3://{bucket}/{key}"


@dg.asset(
    partitions_def=raw_batches_partitions,
    deps=[trained_model],
    group_name="inference",
    kinds={"pytorch", "labelstudio", "coco"},
)
def batch_predictions(
    context: dg.AssetExecutionContext,
    config: BatchPredictionsConfig,
    raw_image_batches: StagedBatch,
    s3: S3Resource,
    mlflow: MlflowResource,
    settings: SettingsResource,
) -> dg.MaterializeResult:
    """The model's predictions for a batch's raw images (boxes in raw pixels for a detector),
    as COCO results and as a Label Studio import of pre-annotations for a human to review.

    Raw images, not a normalized variant: the import's `s3://RAW_BUCKET/<key>` references are
    what raw_annotations resolves, so the accepted boxes come back through the pipeline."""
    from pixelpipe.serving.prediction_files import (
        coco_images,
        coco_results,
        ls_import,
        over_threshold_count,
    )
    from pixelpipe.serving.predictions import (
        predict_files,
        predictions_document,
        validate_predictions,
    )
    from pixelpipe.serving.registry import download, resolve
    from pixelpipe.training.mlflow_model import load_predictor

    cfg = settings.get()
    client = s3.client()
    batch = raw_image_batches
    partition = context.partition_key
    version = resolve(mlflow.client(), mlflow.registered_model_name, config.alias)
    predictor = load_predictor(download(version, tracking_uri=mlflow.tracking_uri))
    started = time.perf_counter()
    records = predict_files(predictor, [str(f.local_path) for f in batch.files])
    compute = time.perf_counter() - started
    key_of = {str(f.local_path): f.source_key for f in batch.files}
    for record in records:
        record["path"] = key_of[record["path"]]  # raw object keys, not local paths
    errors = [r for r in records if r.get("error")]
    if records and len(errors) == len(records):
        # every image failing is the model's (or the runtime's) fault, not the data's
        raise dg.Failure(
            f"model {mlflow.registered_model_name} version {version.version} failed on all "
            f"{len(records)} images of {partition}; first error: {errors[0]['error']}"
        )
    doc = predictions_document(records, predictor, mlflow.registered_model_name, version.version)
    validate_predictions(doc)
    raw = cfg.raw_bucket
    outputs: list[tuple[str, Any, mf.PredictionFormat]] = [
        ("predictions.json", doc, "pixelpipe_predictions")
    ]
    if predictor.is_detector:
        outputs += [
            ("coco_results.json", coco_results(doc), "coco_results"),
            ("coco_images.json", coco_images(doc), "coco"),
        ]
    tasks = ls_import(doc, lambda key: f"s3://{raw}/{key}")
    outputs.append(("label_studio_import.json", tasks, "label_studio_json"))
    artifacts = [
        mf.PredictionArtifact(
            uri=_put(client, cfg.artifacts_bucket, f"{PREDICTIONS_PREFIX}/{partition}/{n}", b),
            format=fmt,
            images=len(records),
        )
        for n, b, fmt in outputs
    ]
    failures = list(batch.failures) + [
        mf.Failure(source_uri=f"s3://{raw}/{r['path']}", reason=r["error"])
        for r in records
        if r.get("error")
    ]
    scored = len(records) - sum(1 for r in records if r.get("error"))
    manifest = mf.PredictionManifest(
        asset="batch_predictions",
        run_id=context.run.run_id,
        partition=partition,
        created_at=mf.now_iso(),
        config={
            "model": mlflow.registered_model_name,
            "version": str(version.version),
            "alias": config.alias,
            "task": doc["task"],
            "listing": f"s3://{cfg.artifacts_bucket}/{batch_listing_key(partition)}",
        },
        artifacts=artifacts,
        failures=failures,
        stats=mf.StageStats(
            inputs=len(batch.files) + len(batch.failures),
            outputs=scored,
            failures=len(failures),
            bytes_in=batch.stage_in_bytes,
            seconds_stage_in=batch.stage_in_seconds,
            seconds_compute=compute,
            images_per_second=len(records) / compute if compute else 0.0,
        ),
    )
    uri, _ = mf.write_manifest(client, cfg.artifacts_bucket, manifest, conditional=False)
    if not cfg.nvme_keep:
        cleanup_run(cfg.nvme_root.resolve(), context.run.run_id)
    for failure in failures:
        context.log.warning(f"failed {failure.source_uri}: {failure.reason}")
    counts: dict[str, int] = {}
    for record in records:
        for label in record["labels"]:
            counts[label] = counts.get(label, 0) + 1
    uris = {a.format: a.uri for a in artifacts}
    return dg.MaterializeResult(
        metadata={
            "manifest_uri": uri,
            "predictions_uri": uris["pixelpipe_predictions"],
            **({"coco_results_uri": uris["coco_results"]} if "coco_results" in uris else {}),
            **({"coco_images_uri": uris["coco"]} if "coco" in uris else {}),
            "label_studio_import_uri": uris["label_studio_json"],
            "model_version": str(version.version),
            "task": doc["task"],
            "images": scored,
            "failures": len(failures),
            "detections": sum(len(r.get("detections") or []) for r in records),
            "label_studio_boxes": over_threshold_count(doc),
            "label_studio_tasks": len(tasks),
            "label_counts": dg.MetadataValue.json(counts),
            "images_per_second": round(len(records) / compute, 1) if compute else 0.0,
        }
    )
