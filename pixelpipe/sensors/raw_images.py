"""Polling sensor: new raw images under RAW_PREFIX become batch partitions with one run each.

Per tick: a streaming ListObjectsV2 of the prefix, cut at SENSOR_TICK_BUDGET_SECONDS and
resumed after the last key on the next tick, so a huge prefix is covered over several ticks
while the runs of the first start at once (pixelpipe.storage.cursor decides what is new); one
PUT per new batch listing and its pending marker (pixelpipe.sensors.batching); a run request per
pending batch. The cursor's window lives in the Dagster instance's key-value store and its
archive in ARTIFACTS_BUCKET, shared by the daemon's sensor and `pixelpipe poll`; the cursor
Dagster stores is a summary of a few hundred bytes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.sensors import batching, seen_archive
from pixelpipe.sensors.batch_runs import BATCH_TAG
from pixelpipe.settings import Settings
from pixelpipe.storage import cursor as cur

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MAX_BATCHES_PER_TICK = batching.MAX_BATCHES_PER_TICK
LATE_KEYS_LOGGED = 20
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
    late: int = 0
    complete: bool = True
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    newly_failed: list[str] = field(default_factory=list)


def cursor_key(bucket: str, prefix: str) -> str:
    return f"pixelpipe/raw_images_sensor/{bucket}/{prefix}"


def is_image_key(prefix: str, annotations_prefix: str) -> Callable[[str], bool]:
    """A predicate: image suffix, and not under ANNOTATIONS_PREFIX (exports are not images)."""
    skip = annotations_prefix.strip("/") + "/"

    def check(key: str) -> bool:
        # PurePosixPath(key).suffix, without building a path per listed object
        name = key[key.rfind("/") + 1 :]
        dot = name.rfind(".")
        return dot > 0 and not key.startswith(skip) and name[dot:].lower() in IMAGE_SUFFIXES

    return check


def _load_state(instance: dg.DagsterInstance, key: str) -> tuple[cur.CursorState, str]:
    raw = instance.run_storage.get_cursor_values({key}).get(key)
    if not raw:
        return cur.CursorState(), ""
    return cur.CursorState.from_json(json.loads(raw)["scan"]), raw


def evaluate_tick(
    instance: dg.DagsterInstance,
    s3: Any,
    settings: Settings,
    prefix: str,
    job_name: str,
    *,
    retry_failed: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> TickResult:
    """List (part of) the prefix, store each new batch, return run requests + a small cursor.

    Batches stay pending until their latest run succeeded; failed ones are re-requested (or
    left to the daemon's run retries, see pixelpipe.sensors.batch_runs) up to RUN_RETRIES.
    """
    say = echo or log.info
    bucket = settings.raw_bucket
    key = cursor_key(bucket, prefix)
    scope = batching.scope_id(key)
    state, stored = _load_state(instance, key)
    if batching.adopt_legacy_pending(s3, settings, scope, stored):
        stored = ""  # rewritten below without the list
    state.archive, archive_etag = seen_archive.load(s3, settings.artifacts_bucket, scope)
    scan_prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    listing = cur.Listing(
        s3,
        bucket,
        scan_prefix,
        start_after=state.resume_after,
        deadline=time.monotonic() + settings.sensor_tick_budget_seconds,
    )
    scan = cur.scan(
        listing,
        state,
        lookback_seconds=settings.ingest_lookback_seconds,
        max_new=settings.ingest_batch_size * MAX_BATCHES_PER_TICK,
        is_candidate=is_image_key(prefix, settings.annotations_prefix),
    )
    result = TickResult(listed=scan.listed, new_objects=len(scan.new), late=len(scan.late))
    result.complete = listing.complete
    if scan.late:
        shown = ", ".join(o.key for o in scan.late[:LATE_KEYS_LOGGED])
        say(f"{len(scan.late)} new object(s) older than the look-back floor, processed: {shown}")
    if scan.capped:
        say("newest LastModified is ahead of the S3 server's clock; high-water mark capped")
    result.new_partitions = batching.store_batches(s3, settings, scope, scan.new, prefix)
    if scan.archived:
        seen_archive.save(s3, settings.artifacts_bucket, scope, scan.state.archive, archive_etag)
    updated = json.dumps({"scan": scan.state.to_json()})
    if updated != stored:  # an idle tick writes nothing
        instance.run_storage.set_cursor_values({key: updated})
    # Re-request batches whose run does not exist yet (run_key makes this safe, and a tick
    # that died after storing its listings cannot lose a batch) or failed, within RUN_RETRIES.
    review = batching.review(
        instance, s3, settings, scope, job_name, retry_failed=retry_failed, log=say
    )
    result.run_requests = review.requests
    result.retrying = review.retrying
    result.newly_failed = [s.partition for s in review.newly_failed]
    result.failed = review.failed
    summary = {
        **scan.state.summary(),
        "listed": scan.listed,
        "new": len(scan.new),
        "late": len(scan.late),
        "pending": len(review.pending),
        "failed": len(review.failed),
    }
    result.cursor = json.dumps(summary, separators=(",", ":"))
    if not result.run_requests:
        listed = "listed" if listing.complete else "listed so far (the next tick resumes)"
        base = (
            f"no new images under s3://{bucket}/{scan_prefix} ({scan.listed} objects {listed}, "
            f"{scan.skipped_not_candidate} not images)"
        )
        result.skip_reason = batching.skip_message(base, review.failed, settings.run_retries)
    return result


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
    def raw_images_sensor(context: dg.SensorEvaluationContext, s3: S3Resource) -> dg.SensorResult:
        tick = evaluate_tick(
            context.instance,
            s3.client(),
            settings,
            settings.raw_prefix,
            job.name,
            echo=context.log.info,
        )
        return batching.sensor_result(tick.run_requests, tick.cursor, tick.skip_reason)

    return raw_images_sensor
