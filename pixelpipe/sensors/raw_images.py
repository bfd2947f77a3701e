"""Polling sensor: new raw images under RAW_PREFIX become batch partitions with one run each.

Per tick: one streaming ListObjectsV2 of the prefix (ceil(N/1000) requests, memory bounded by
the look-back window; see pixelpipe.storage.cursor), one PUT per new batch listing, and a
run request per batch. The cursor lives in the Dagster instance's key-value store, so the
daemon's sensor and `pixelpipe poll` share it; the sensor also reports it as its cursor.
"""

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import PurePosixPath
from typing import Any

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.sensors.batch_runs import BATCH_TAG, rerun_command, review_pending
from pixelpipe.settings import Settings
from pixelpipe.storage import cursor as cur
from pixelpipe.storage.conditional import conditional_writes
from pixelpipe.storage.layout import batch_listing_key

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MAX_BATCHES_PER_TICK = 50
# given-up batches reported by the sensor; older ones are still in the run history
MAX_FAILED_REMEMBERED = 1000
__all__ = ["BATCH_TAG", "raw_batches_partitions"]
log = logging.getLogger(__name__)


@dataclass
class TickResult:
    """What one evaluation decided."""

    run_requests: list[dg.RunRequest] = field(default_factory=list)
    new_partitions: list[str] = field(default_factory=list)
    cursor: str = ""
    skip_reason: str | None = None
    listed: int = 0
    new_objects: int = 0
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    newly_failed: list[str] = field(default_factory=list)


def cursor_key(bucket: str, prefix: str) -> str:
    return f"pixelpipe/raw_images_sensor/{bucket}/{prefix}"


def is_image_key(prefix: str, annotations_prefix: str):  # noqa: ANN201
    """A predicate: image suffix, and not under ANNOTATIONS_PREFIX (exports are not images)."""
    skip = annotations_prefix.strip("/") + "/"

    def check(key: str) -> bool:
        return not key.startswith(skip) and PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES

    return check


def partition_name(objects: list[cur.ObjectInfo]) -> str:
    """b-<newest LastModified>-<digest of keys+etags>: sortable, and the same for the same batch."""
    digest = hashlib.sha256("\n".join(f"{o.key}\0{o.etag}" for o in objects).encode())
    stamp = max(o.last_modified for o in objects).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"b-{stamp}-{digest.hexdigest()[:10]}"


def _load_state(
    instance: dg.DagsterInstance, key: str
) -> tuple[cur.CursorState, list[str], list[str]]:
    raw = instance.run_storage.get_cursor_values({key}).get(key)
    if not raw:
        return cur.CursorState(), [], []
    body = json.loads(raw)
    state = cur.CursorState.from_json(body["scan"])
    return state, list(body.get("pending", [])), list(body.get("failed", []))


def evaluate_tick(
    instance: dg.DagsterInstance,
    s3: Any,
    settings: Settings,
    prefix: str,
    job_name: str,
    *,
    retry_failed: bool | None = None,
) -> TickResult:
    """List the prefix, store a listing per new batch, and return run requests + next cursor.

    Batches stay pending until their latest run succeeded; failed ones are re-requested (or
    left to the daemon's run retries, see pixelpipe.sensors.batch_runs) up to RUN_RETRIES.
    """
    bucket = settings.raw_bucket
    key = cursor_key(bucket, prefix)
    state, pending, failed = _load_state(instance, key)
    scan_prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    scan = cur.scan(
        cur.list_objects(s3, bucket, scan_prefix),
        state,
        lookback_seconds=settings.ingest_lookback_seconds,
        max_new=settings.ingest_batch_size * MAX_BATCHES_PER_TICK,
        is_candidate=is_image_key(prefix, settings.annotations_prefix),
    )
    result = TickResult(listed=scan.listed, new_objects=len(scan.new))
    conditional = conditional_writes(
        s3, settings.s3_endpoint_url, settings.artifacts_bucket, settings.s3_conditional_writes
    )
    for group in cur.batches(scan.new, settings.ingest_batch_size):
        name = partition_name(group)
        listing = mf.BatchListing(
            partition=name,
            bucket=bucket,
            prefix=prefix.strip("/"),
            created_at=mf.now_iso(),
            objects=[
                mf.BatchObject(
                    key=o.key, etag=o.etag, size=o.size, last_modified=o.last_modified.isoformat()
                )
                for o in group
            ],
        )
        put_listing(s3, settings.artifacts_bucket, listing, conditional)
        result.new_partitions.append(name)
        pending.append(name)
    # Re-request batches whose run does not exist yet (run_key makes this safe, and a tick
    # that died after storing its cursor cannot lose a batch) or failed, within RUN_RETRIES.
    review = review_pending(
        instance, pending, job_name, max_retries=settings.run_retries, retry_failed=retry_failed
    )
    result.run_requests = review.requests
    result.retrying = [s.partition for s in review.retrying]
    result.newly_failed = [s.partition for s in review.given_up]
    for status in review.given_up:
        log.error(
            f"batch {status.partition} failed {status.attempts} times (last run "
            f"{status.last_run_id}: {status.last_status}); re-run it with "
            f"`{rerun_command(status.partition)}`"
        )
    failed = [p for p in dict.fromkeys(failed + result.newly_failed) if p not in review.pending]
    result.failed = failed[-MAX_FAILED_REMEMBERED:]
    body = {"scan": scan.state.to_json(), "pending": review.pending, "failed": result.failed}
    result.cursor = json.dumps(body, separators=(",", ":"))
    instance.run_storage.set_cursor_values({key: result.cursor})
    if not result.run_requests:
        result.skip_reason = (
            f"no new images under s3://{bucket}/{scan_prefix} "
            f"({scan.listed} objects listed, {scan.skipped_not_candidate} not images)"
        )
        if result.failed:
            result.skip_reason += (
                f"; {len(result.failed)} batch(es) failed after {settings.run_retries} "
                f"retries, e.g. `{rerun_command(result.failed[-1])}`"
            )
    return result


def put_listing(s3: Any, bucket: str, listing: mf.BatchListing, conditional: bool) -> None:
    import botocore.exceptions

    body = listing.model_dump_json(indent=1).encode()
    extra = {"IfNoneMatch": "*"} if conditional else {}
    try:
        s3.put_object(
            Bucket=bucket,
            Key=batch_listing_key(listing.partition),
            Body=body,
            ContentType="application/json",
            **extra,
        )
    except botocore.exceptions.ClientError as exc:
        # the same batch (same keys and ETags) was listed before: its listing stands
        if exc.response.get("Error", {}).get("Code") not in {"PreconditionFailed", "412"}:
            raise


def build_raw_images_sensor(
    job: Any, settings: Settings, interval: int = 30
) -> dg.SensorDefinition:
    """The sensor over settings.raw_prefix that requests `job` for each new batch."""

    @dg.sensor(
        name="raw_images_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New images under s3://{settings.raw_bucket}/{settings.raw_prefix}/",
    )
    def raw_images_sensor(context: dg.SensorEvaluationContext, s3: S3Resource):  # noqa: ANN202
        tick = evaluate_tick(context.instance, s3.client(), settings, settings.raw_prefix, job.name)
        if tick.skip_reason:
            return dg.SensorResult(skip_reason=dg.SkipReason(tick.skip_reason), cursor=tick.cursor)
        return dg.SensorResult(
            run_requests=tick.run_requests,
            dynamic_partitions_requests=[
                # pending batches from a tick that died are (re-)added too; adding is idempotent
                raw_batches_partitions.build_add_request(
                    [r.partition_key for r in tick.run_requests if r.partition_key]
                )
            ],
            cursor=tick.cursor,
        )

    return raw_images_sensor
