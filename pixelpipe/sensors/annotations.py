"""Sensor: new or changed Label Studio exports under ANNOTATIONS_PREFIX refresh the annotations."""

import hashlib
import json
from typing import Any

import dagster as dg

from pixelpipe.resources.s3 import S3Resource
from pixelpipe.sensors import seen_archive
from pixelpipe.sensors.batching import scope_id
from pixelpipe.settings import Settings
from pixelpipe.storage import cursor as cur


def _is_export(key: str) -> bool:
    return key.endswith((".json", ".xml"))


def evaluate_exports(instance: dg.DagsterInstance, s3: Any, settings: Settings) -> list[str]:
    """Keys of exports (and label configs) that are new or changed since the last evaluation."""
    key = f"pixelpipe/annotations_sensor/{settings.raw_bucket}/{settings.annotations_prefix}"
    scope = scope_id(key)
    raw = instance.run_storage.get_cursor_values({key}).get(key)
    state = cur.CursorState.from_json(raw)
    state.archive, etag = seen_archive.load(s3, settings.artifacts_bucket, scope)
    scan = cur.scan(
        cur.list_objects(s3, settings.raw_bucket, settings.annotations_prefix + "/"),
        state,
        lookback_seconds=settings.ingest_lookback_seconds,
        is_candidate=_is_export,
    )
    if scan.archived:
        seen_archive.save(s3, settings.artifacts_bucket, scope, scan.state.archive, etag)
    instance.run_storage.set_cursor_values({key: scan.state.to_json()})
    return [f"{o.key}@{o.etag}" for o in scan.new]


def build_annotations_sensor(job: Any, settings: Settings, interval: int) -> dg.SensorDefinition:
    """Requests `job` (raw + per-variant COCO) when exports appear or change."""

    @dg.sensor(
        name="annotations_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Exports under s3://{settings.raw_bucket}/{settings.annotations_prefix}/",
    )
    def annotations_sensor(context: dg.SensorEvaluationContext, s3: S3Resource) -> Any:
        changed = evaluate_exports(context.instance, s3.client(), settings)
        if not changed:
            return dg.SkipReason(f"no new exports under {settings.annotations_prefix}/")
        run_key = hashlib.sha256(json.dumps(sorted(changed)).encode()).hexdigest()[:16]
        return dg.RunRequest(run_key=run_key, tags={"pixelpipe/exports": str(len(changed))})

    return annotations_sensor
