"""The batching core both ingest sensors share: batch listings, pending markers, run requests.

A batch is stored as its listing (`batches/<partition>.json`: keys, ETags, sizes) and a pending
marker (`batches/_pending/<scope>/<partition>`), both in ARTIFACTS_BUCKET. Which batches still
need a run is read back from the markers on every tick, never from state a tick rewrites: two
overlapping ticks (the daemon's and `pixelpipe poll`, or an SQS tick that overran its timeout)
cannot drop each other's batches. A marker goes when its batch's latest run succeeded, and moves
to `batches/_failed/<scope>/` when its retries are spent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import botocore.exceptions
import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.sensors.batch_runs import BatchStatus, rerun_command, review_pending
from pixelpipe.settings import Settings
from pixelpipe.storage.conditional import conditional_writes
from pixelpipe.storage.layout import BATCHES_PREFIX, batch_listing_key
from pixelpipe.storage.listing import ObjectInfo, list_objects

MAX_BATCHES_PER_TICK = 200  # 12,800 new objects a tick at the default batch size
MAX_FAILED_SHOWN = 5


def scope_id(name: str) -> str:
    """A short, stable folder name for one sensor's scope (bucket + prefix, or a queue URL)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _marker(kind: str, scope: str, partition: str = "") -> str:
    return f"{BATCHES_PREFIX}/_{kind}/{scope}/{partition}"


def partition_name(objects: list[ObjectInfo]) -> str:
    """b-<newest LastModified>-<digest of keys+etags>: sortable, and the same for the same batch."""
    digest = hashlib.sha256("\n".join(f"{o.key}\0{o.etag}" for o in objects).encode())
    stamp = max(o.last_modified for o in objects).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"b-{stamp}-{digest.hexdigest()[:10]}"


def make_listing(group: list[ObjectInfo], bucket: str, prefix: str) -> mf.BatchListing:
    """The batch listing of `group`: what a partition's runs stage, pinned by ETag and size."""
    return mf.BatchListing(
        partition=partition_name(group),
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


def put_listing(s3: Any, bucket: str, listing: mf.BatchListing, conditional: bool) -> None:
    """Store a listing once; the same batch (same keys and ETags) listed again keeps the first."""
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
        if exc.response.get("Error", {}).get("Code") not in mf.CONFLICT_CODES:
            raise


def store_batches(
    s3: Any, settings: Settings, scope: str, objects: list[ObjectInfo], prefix: str
) -> list[str]:
    """Listings and pending markers for `objects` in INGEST_BATCH_SIZE groups; their names."""
    conditional = conditional_writes(
        s3, settings.s3_endpoint_url, settings.artifacts_bucket, settings.s3_conditional_writes
    )
    names = []
    for start in range(0, len(objects), settings.ingest_batch_size):
        listing = make_listing(
            objects[start : start + settings.ingest_batch_size], settings.raw_bucket, prefix
        )
        put_listing(s3, settings.artifacts_bucket, listing, conditional)
        s3.put_object(
            Bucket=settings.artifacts_bucket, Key=_marker("pending", scope, listing.partition)
        )
        names.append(listing.partition)
    return names


def adopt_legacy_pending(s3: Any, settings: Settings, scope: str, stored: str | None) -> bool:
    """Pending batches that a state from before the markers kept in a list become markers."""
    import json

    if not stored or '"pending"' not in stored:
        return False
    body = json.loads(stored)
    legacy = body.get("pending") if isinstance(body, dict) else None
    if not legacy:
        return False
    for partition in legacy:
        s3.put_object(Bucket=settings.artifacts_bucket, Key=_marker("pending", scope, partition))
    return True


def _markers(s3: Any, bucket: str, kind: str, scope: str) -> list[str]:
    prefix = _marker(kind, scope)
    return [o.key[len(prefix) :] for o in list_objects(s3, bucket, prefix)]


@dataclass
class Review:
    """This tick's run requests, what is still pending, what gave up now and before."""

    requests: list[dg.RunRequest] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    newly_failed: list[BatchStatus] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def review(
    instance: dg.DagsterInstance,
    s3: Any,
    settings: Settings,
    scope: str,
    job_name: str,
    *,
    retry_failed: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Review:
    """Run requests for the scope's pending batches; markers of finished ones are settled."""
    bucket = settings.artifacts_bucket
    pending = _markers(s3, bucket, "pending", scope)
    found = review_pending(
        instance, pending, job_name, max_retries=settings.run_retries, retry_failed=retry_failed
    )
    for partition in set(pending) - set(found.pending):
        s3.delete_object(Bucket=bucket, Key=_marker("pending", scope, partition))
    for status in found.given_up:
        s3.put_object(Bucket=bucket, Key=_marker("failed", scope, status.partition))
        s3.delete_object(Bucket=bucket, Key=_marker("pending", scope, status.partition))
        if log is not None:
            log(
                f"batch {status.partition} failed {status.attempts} times (last run "
                f"{status.last_run_id}: {status.last_status}); re-run it with "
                f"`{rerun_command(status.partition)}`"
            )
    failed = _markers(s3, bucket, "failed", scope)  # one LIST, empty when all is well
    if failed:  # a batch re-run by hand that succeeded is no longer reported
        again = review_pending(instance, failed, job_name, max_retries=settings.run_retries)
        still = set(again.pending) | {s.partition for s in again.given_up}
        for partition in set(failed) - still:
            s3.delete_object(Bucket=bucket, Key=_marker("failed", scope, partition))
        failed = [p for p in failed if p in still]
    return Review(
        requests=found.requests,
        pending=found.pending,
        retrying=[s.partition for s in found.retrying],
        newly_failed=found.given_up,
        failed=failed,
    )


def skip_message(base: str, failed: Iterable[str], retries: int) -> str:
    """A SkipReason that also says which batches gave up, and how to re-run one."""
    failed = list(failed)
    if not failed:
        return base
    shown = ", ".join(failed[:MAX_FAILED_SHOWN])
    return (
        f"{base}; {len(failed)} batch(es) failed after {retries} retries ({shown}); "
        f"re-run one with `{rerun_command(failed[0])}`"
    )


def sensor_result(
    requests: list[dg.RunRequest], cursor: str, skip_reason: str | None
) -> dg.SensorResult:
    """What both sensors return: runs with their partitions added, or a reason to skip."""
    if not requests:
        reason = dg.SkipReason(skip_reason or "nothing new")
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    return dg.SensorResult(
        run_requests=requests,
        # pending batches of a tick that died are (re-)added too; adding is idempotent
        dynamic_partitions_requests=[
            raw_batches_partitions.build_add_request(
                [r.partition_key for r in requests if r.partition_key]
            )
        ],
        cursor=cursor,
    )
