"""One Definitions for the whole platform: assets, checks, sensors, jobs, resources, IO managers."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Partitioned asset checks are "preview" in dagster 1.13; they are what per-batch checks need.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
warnings.filterwarnings("ignore", message="Found asset job named")

import dagster as dg  # noqa: E402

from pixelpipe.assets import annotations as annotation_assets  # noqa: E402
from pixelpipe.assets import predictions, stage1, stage2, training  # noqa: E402
from pixelpipe.assets.partitions import raw_batches_partitions  # noqa: E402
from pixelpipe.io_managers.staging import NvmeStagingIOManager  # noqa: E402
from pixelpipe.resources.mlflow import MlflowResource  # noqa: E402
from pixelpipe.resources.s3 import S3Resource  # noqa: E402
from pixelpipe.resources.settings import SettingsResource  # noqa: E402
from pixelpipe.sensors.annotations import build_annotations_sensor  # noqa: E402
from pixelpipe.sensors.cleanup import nvme_cleanup_sensors  # noqa: E402
from pixelpipe.sensors.raw_images import build_raw_images_sensor  # noqa: E402
from pixelpipe.sensors.sqs import SqsResource, build_sqs_sensor  # noqa: E402
from pixelpipe.settings import Settings, get_settings  # noqa: E402

INGEST_ASSETS = [stage1.raw_image_batches, stage1.augmented_images, stage2.normalized_images]
ANNOTATION_ASSETS = [annotation_assets.raw_annotations, annotation_assets.coco_annotations]
TRAINING_ASSETS = [training.trained_model]
INFERENCE_ASSETS = [predictions.batch_predictions]


def build_ingest_job() -> dg.UnresolvedAssetJobDefinition:
    """Stage 1 + Stage 2 for one batch partition, steps in one process (pools stay warm)."""
    return dg.define_asset_job(
        "ingest_job",
        selection=dg.AssetSelection.assets(*INGEST_ASSETS),
        partitions_def=raw_batches_partitions,
        executor_def=dg.in_process_executor,
    )


def build_annotations_job() -> dg.UnresolvedAssetJobDefinition:
    """Label Studio exports -> raw COCO -> per-variant COCO and dataset indexes."""
    return dg.define_asset_job(
        "annotations_job",
        selection=dg.AssetSelection.assets(*ANNOTATION_ASSETS),
        executor_def=dg.in_process_executor,
    )


def resources_for(settings: Settings) -> dict[str, object]:
    s3 = S3Resource.from_settings(settings)
    return {
        "settings": SettingsResource.from_settings(settings),
        "s3": s3,
        "mlflow": MlflowResource.from_settings(settings),
        "sqs": SqsResource.from_settings(settings),
        "staging_io_manager": NvmeStagingIOManager(
            s3=s3,
            nvme_root=str(settings.nvme_root.resolve()),
            raw_bucket=settings.raw_bucket,
            artifacts_bucket=settings.artifacts_bucket,
            augmented_bucket=settings.augmented_bucket,
            normalized_bucket=settings.normalized_bucket,
            conditional_writes=settings.s3_conditional_writes,
            concurrency=settings.s3_max_concurrency,
        ),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Everything, wired to `settings` (default: the environment)."""
    settings = settings or get_settings()
    ingest_job = build_ingest_job()
    annotations_job = build_annotations_job()
    training_job = dg.define_asset_job(
        "training_job", selection=dg.AssetSelection.assets(*TRAINING_ASSETS)
    )
    return dg.Definitions(
        assets=[*INGEST_ASSETS, *ANNOTATION_ASSETS, *TRAINING_ASSETS, *INFERENCE_ASSETS],
        asset_checks=[*stage1.checks, *stage2.checks],
        jobs=[ingest_job, annotations_job, training_job],
        sensors=[
            # INGEST_MODE picks how new raw objects are found; both feed the same batching
            (build_sqs_sensor if settings.ingest_mode == "sqs" else build_raw_images_sensor)(
                ingest_job, settings, settings.sensor_interval_seconds
            ),
            build_annotations_sensor(annotations_job, settings, settings.sensor_interval_seconds),
            *nvme_cleanup_sensors(settings),
        ],
        resources=resources_for(settings),
    )


defs = build_definitions()
