"""Shared steps for the functional pipeline tests: sample data, sensor ticks, run execution."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

import dagster as dg

from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.datagen import generate
from pixelpipe.definitions import build_definitions
from pixelpipe.pipeline import INGEST_JOB, instance_for
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.settings import Settings
from pixelpipe.uploads import upload_dataset


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique_prefix(settings: Settings, name: str) -> str:
    return f"{settings.raw_prefix}/{name}-{secrets.token_hex(3)}"


def upload_sample(settings: Settings, tmp: Path, prefix: str, count: int, seed: int = 3) -> Path:
    out = tmp / f"sample-{seed}-{count}"
    if not out.exists():
        generate(out, count, seed)
    report = upload_dataset(out, settings, prefix)
    assert not report.failures, report.failures
    return out


def tick(settings: Settings, prefix: str, instance: dg.DagsterInstance) -> Any:
    """Evaluate the real sensor with Dagster's test harness against a real instance."""
    scoped = settings.model_copy(update={"raw_prefix": prefix})
    defs = build_definitions(scoped)
    sensor = defs.get_sensor_def("raw_images_sensor")
    context = dg.build_sensor_context(
        instance=instance, resources={"s3": S3Resource.from_settings(scoped)}
    )
    return sensor(context), defs


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, result: Any) -> list[Any]:
    """Run each of the sensor's run requests in-process, as `pixelpipe poll` does."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(raw_batches_partitions.name, list(request.partition_keys))
    job = defs.resolve_job_def(INGEST_JOB)
    return [
        job.execute_in_process(partition_key=r.partition_key, instance=instance, tags=dict(r.tags))
        for r in result.run_requests
    ]


def materializations(result: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        out[mat.asset_key.path[-1]] = {k: v.value for k, v in mat.metadata.items()}
    return out


def instance(settings: Settings) -> dg.DagsterInstance:
    return instance_for(settings)
