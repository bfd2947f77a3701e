"""Stage 4 (batch): the champion model over a stage-2 batch -> predictions + Label Studio import."""

import json
import time

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.assets.stage2 import normalized_images
from pixelpipe.assets.training import trained_model
from pixelpipe.io_managers.staging import cleanup_run
from pixelpipe.resources.mlflow import MlflowResource
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.settings import get_settings
from pixelpipe.storage.keys import key_to_path
from pixelpipe.storage.transfer import download_many


class BatchPredictionsConfig(dg.Config):
    """Which model alias and which variant of the batch to score."""

    alias: str = "champion"
    variant: str | None = None  # default: the first NORMALIZE_SIZES variant


@dg.asset(
    partitions_def=raw_batches_partitions,
    deps=[normalized_images, trained_model],
    group_name="inference",
    kinds={"pytorch", "labelstudio"},
)
def batch_predictions(
    context: dg.AssetExecutionContext,
    config: BatchPredictionsConfig,
    s3: S3Resource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Labels with scores for every image of a batch's variant, and a Label Studio import file
    whose <Choices> pre-annotations a human reviews (the human-in-the-loop path)."""
    from pixelpipe.serving.predictions import (
        ls_choices_import,
        predict_files,
        predictions_document,
        validate_predictions,
    )
    from pixelpipe.serving.registry import download, resolve
    from pixelpipe.training.mlflow_model import load_predictor

    settings = get_settings()
    client = s3.client()
    partition = context.partition_key
    variant = config.variant or settings.variants[0].name
    stage2_uri = mf.latest_manifest_uri(
        client, settings.normalized_bucket, "normalized_images", partition
    )
    if stage2_uri is None:
        raise FileNotFoundError(f"no normalized_images manifest for {partition}")
    items = [i for i in mf.read_json(client, stage2_uri)["items"] if i["variant_name"] == variant]
    version = resolve(mlflow.client(), mlflow.registered_model_name, config.alias)
    predictor = load_predictor(download(version, tracking_uri=mlflow.tracking_uri))
    root = settings.nvme_root.resolve() / "input" / context.run.run_id / "batch_predictions"
    keys = [mf.split_uri(i["output_uri"])[1] for i in items]
    wanted = [(k, str(key_to_path(root, k))) for k in keys]
    started = time.perf_counter()
    report = download_many(
        lambda: client, settings.normalized_bucket, wanted, settings.s3_max_concurrency
    )
    stage_in = time.perf_counter() - started
    started = time.perf_counter()
    records = predict_files(predictor, [p for _, p in wanted])
    compute = time.perf_counter() - started
    by_path = {p: k for k, p in wanted}
    for record in records:
        record["path"] = by_path[record["path"]]  # object keys, not local paths
    doc = predictions_document(records, predictor, mlflow.registered_model_name, version.version)
    validate_predictions(doc)
    bucket = settings.normalized_bucket
    tasks = ls_choices_import(
        records,
        lambda key: f"s3://{bucket}/{key}",
        f"{mlflow.registered_model_name}/{version.version}",
    )
    base = f"predictions/{variant}/{partition}"
    artifacts = []
    for name, body, fmt in (
        ("predictions.json", doc, "pixelpipe_predictions"),
        ("label_studio_import.json", tasks, "label_studio_json"),
    ):
        key = f"{base}/{name}"
        client.put_object(
            Bucket=settings.artifacts_bucket,
            Key=key,
            Body=json.dumps(body, indent=1).encode(),
            ContentType="application/json",
        )
        artifacts.append(
            mf.PredictionArtifact(
                uri=f"s3://{settings.artifacts_bucket}/{key}", format=fmt, images=len(records)
            )
        )
    failures = [
        mf.Failure(source_uri=f"s3://{bucket}/{f.key}", reason=f.reason) for f in report.failures
    ]
    failures += [
        mf.Failure(source_uri=f"s3://{bucket}/{r['path']}", reason=r["error"])
        for r in records
        if r.get("error")
    ]
    manifest = mf.PredictionManifest(
        asset="batch_predictions",
        run_id=context.run.run_id,
        partition=partition,
        created_at=mf.now_iso(),
        config={
            "model": mlflow.registered_model_name,
            "version": str(version.version),
            "alias": config.alias,
            "variant": variant,
            "stage2_manifest": stage2_uri,
        },
        artifacts=artifacts,
        failures=failures,
        stats=mf.StageStats(
            inputs=len(items),
            outputs=len(records) - len(failures),
            failures=len(failures),
            seconds_stage_in=stage_in,
            seconds_compute=compute,
            images_per_second=len(records) / compute if compute else 0.0,
        ),
    )
    uri, _ = mf.write_manifest(client, settings.artifacts_bucket, manifest, conditional=False)
    if not settings.nvme_keep:
        cleanup_run(settings.nvme_root.resolve(), context.run.run_id)
    counts: dict[str, int] = {}
    for record in records:
        for label in record["labels"]:
            counts[label] = counts.get(label, 0) + 1
    return dg.MaterializeResult(
        metadata={
            "manifest_uri": uri,
            "predictions_uri": artifacts[0].uri,
            "label_studio_import_uri": artifacts[1].uri,
            "model_version": str(version.version),
            "images": len(records),
            "failures": len(failures),
            "label_counts": dg.MetadataValue.json(counts),
            "images_per_second": round(len(records) / compute, 1) if compute else 0.0,
        }
    )
