"""Event sensor (INGEST_MODE=sqs): S3 event notifications from SQS become the polling batches.

Each tick first checks that ARTIFACTS_BUCKET and the Dagster instance answer (so an outage of
either fails the tick before any message is received and charged a receive), then receives up
to `ingest_batch_size * MAX_BATCHES_PER_TICK` messages (the S3 event JSON, raw or wrapped in an
SNS envelope). Each message is parsed and checked on its own (`s3_events`): ObjectCreated:*
images under RAW_PREFIX are batched with the polling sensor's partition names and listings, so
both modes produce the same partitions, listing objects and run requests.

- A message is deleted only after its batch listings and pending markers are stored and the
  seen set is saved.
- A poison message (not JSON, not an S3 event, or a record of the wrong shape) never fails the
  tick: its usable records are batched and the body is sent to the queue's dead-letter queue
  (the redrive policy's deadLetterTargetArn) with `pixelpipe.reason` saying why, then deleted.
  A queue without a dead-letter queue keeps it: it is logged and comes back after its
  visibility timeout, because deleting it would lose the only copy.
- A failure that is not a message's fault (S3, the instance) after messages were received
  leaves them invisible until their visibility timeout ends: a failing tick every 30 s charges
  each message one receive per visibility window, not one per tick, against maxReceiveCount.

Duplicates: S3 delivers events at least once. The instance's key-value store remembers the
newest (ETag, sequencer) of the last `SEEN_LIMIT` keys; an event for a key with the same ETag,
or with an older sequencer (a late event for an overwritten key), is a duplicate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from pixelpipe.resources.s3 import S3Resource
from pixelpipe.sensors import batching
from pixelpipe.sensors import raw_images as ri
from pixelpipe.sensors.s3_events import (
    ParsedMessage,
    S3Event,
    SeenEvents,
    parse_message,
    select_new,
)
from pixelpipe.settings import Settings, SettingsError
from pixelpipe.storage.layout import BATCHES_PREFIX

log = logging.getLogger(__name__)

RECEIVE_WAIT_SECONDS = 1
# Longer than a tick: a received message must stay invisible until this tick deletes it.
VISIBILITY_TIMEOUT_SECONDS = 300
SQS_BATCH = 10  # ReceiveMessage / DeleteMessageBatch maximum
REASON_ATTRIBUTE = "pixelpipe.reason"
MAX_REASON_CHARS = 1000


class SqsResource(dg.ConfigurableResource):
    """The queue that receives the raw bucket's S3 event notifications, and how to reach it."""

    queue_url: str | None = None
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # long polling of the receive that finds the queue empty (0 = short polling)
    wait_seconds: int = RECEIVE_WAIT_SECONDS
    # how long a received message stays hidden: a tick's work, or the wait after a failed tick
    visibility_timeout: int = VISIBILITY_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> SqsResource:
        """SQS_QUEUE_URL and SQS_ENDPOINT_URL (read with getattr until settings has them)."""
        return cls(
            queue_url=getattr(settings, "sqs_queue_url", None),
            endpoint_url=getattr(settings, "sqs_endpoint_url", None),
            region=settings.aws_region,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
        )

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "sqs",
            endpoint_url=self.endpoint_url or None,
            region_name=self.region,
            aws_access_key_id=self.access_key_id or None,
            aws_secret_access_key=self.secret_access_key or None,
        )


@dataclass
class SqsTickResult:
    """What one evaluation decided and did, with counts for the tick's log."""

    run_requests: list[dg.RunRequest] = field(default_factory=list)
    new_partitions: list[str] = field(default_factory=list)
    cursor: str = ""
    skip_reason: str | None = None
    received: int = 0
    deleted: int = 0
    new_objects: int = 0
    duplicates: int = 0
    ignored: int = 0
    test_events: int = 0
    poison: int = 0
    dead_lettered: int = 0


class IngestUnavailable(RuntimeError):
    """ARTIFACTS_BUCKET or the Dagster instance did not answer; no message was received."""


def state_key(queue_url: str) -> str:
    return f"pixelpipe/raw_images_sqs_sensor/{queue_url}"


def _preflight(instance: dg.DagsterInstance, s3: Any, settings: Settings, key: str) -> SeenEvents:
    """The seen set, once the artifacts bucket and the instance have answered a cheap read."""
    bucket = settings.artifacts_bucket
    try:
        s3.list_objects_v2(Bucket=bucket, Prefix=f"{BATCHES_PREFIX}/", MaxKeys=1)
    except Exception as exc:
        raise IngestUnavailable(
            f"ARTIFACTS_BUCKET={bucket!r} did not answer a listing ({exc}); "
            "no SQS message was received this tick"
        ) from exc
    try:
        stored = instance.run_storage.get_cursor_values({key}).get(key)
    except Exception as exc:
        raise IngestUnavailable(
            f"the Dagster instance did not answer ({exc}); no SQS message was received this tick"
        ) from exc
    seen = SeenEvents.from_json(stored)
    if batching.adopt_legacy_pending(s3, settings, batching.scope_id(key), stored):
        instance.run_storage.set_cursor_values({key: seen.to_json()})  # without the old list
    return seen


def _receive(
    sqs: Any, queue_url: str, limit: int, wait_seconds: int, visibility: int
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < limit:
        page = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(SQS_BATCH, limit - len(messages)),
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        if not page:
            break
        messages.extend(page)
    return messages


def _chunks(messages: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(messages), SQS_BATCH):
        yield messages[start : start + SQS_BATCH]


def _delete(
    sqs: Any, queue_url: str, messages: list[dict[str, Any]], logger: logging.Logger
) -> int:
    deleted = 0
    for chunk in _chunks(messages):
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
        answer = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        deleted += len(answer.get("Successful", []))
        for failed in answer.get("Failed", []):
            # redelivered later and then dropped as a duplicate
            logger.warning("could not delete SQS message: %s", failed)
    return deleted


def _head(s3: Any, bucket: str, key: str) -> tuple[str, int] | None:
    import botocore.exceptions

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    return head["ETag"].strip('"'), int(head["ContentLength"])


def _candidates(
    parsed: list[ParsedMessage], s3: Any, settings: Settings, result: SqsTickResult
) -> list[S3Event]:
    """Every event for an image under RAW_PREFIX, its ETag and size asked of S3 if missing."""
    prefix = settings.raw_prefix.strip("/")
    under = prefix + "/" if prefix else ""
    is_image = ri.is_image_key(prefix, settings.annotations_prefix)
    events: list[S3Event] = []
    for message in parsed:
        result.test_events += message.test_event
        result.ignored += message.other_records
        for event in message.events:
            wanted = event.bucket == settings.raw_bucket and event.key.startswith(under)
            if not wanted or not is_image(event.key):
                result.ignored += 1
                continue
            if not event.complete:
                head = _head(s3, event.bucket, event.key)
                if head is None:  # deleted since: nothing to batch
                    result.ignored += 1
                    continue
                event = event.with_head(*head)
            events.append(event)
    return events


def _record(
    instance: dg.DagsterInstance,
    s3: Any,
    settings: Settings,
    key: str,
    fresh: list[S3Event],
    result: SqsTickResult,
) -> int | None:
    """Store the listings and their pending markers, then the seen set; its size (None: same)."""
    if not fresh:
        return None
    objects = [e.info() for e in fresh]
    result.new_partitions = batching.store_batches(
        s3, settings, batching.scope_id(key), objects, settings.raw_prefix
    )
    # merged into what is stored now: an overlapping tick may have saved its own events meanwhile
    stored = instance.run_storage.get_cursor_values({key}).get(key)
    seen = SeenEvents.from_json(stored).updated(fresh)
    instance.run_storage.set_cursor_values({key: seen.to_json()})
    return len(seen.seen)


def dead_letter_url(sqs: Any, queue_url: str) -> str | None:
    """The URL of the queue's dead-letter queue (its redrive policy's target); None if none."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = attrs.get("Attributes", {}).get("RedrivePolicy")
    if not policy:
        return None
    arn = str(json.loads(policy)["deadLetterTargetArn"])  # arn:aws:sqs:<region>:<account>:<name>
    account, name = arn.split(":")[4:6]
    return str(sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])


def _dead_letter(
    sqs: Any,
    queue_url: str,
    poison: list[tuple[dict[str, Any], ParsedMessage]],
    logger: logging.Logger,
) -> list[dict[str, Any]]:
    """Send poison messages to the dead-letter queue with their reason; the ones sent."""
    if not poison:
        return []
    try:
        target = dead_letter_url(sqs, queue_url)
    except Exception as exc:  # the redrive policy still moves them after maxReceiveCount
        logger.error("could not find the dead-letter queue of %s: %s", queue_url, exc)
        return []
    sent = []
    for message, parsed in poison:
        reason = "; ".join(parsed.problems)[:MAX_REASON_CHARS]
        mid = message.get("MessageId")
        if target is None:
            logger.error(
                "SQS message %s is not a valid S3 event notification (%s); %s has no "
                "dead-letter queue, so it stays there and comes back after its visibility timeout",
                mid,
                reason,
                queue_url,
            )
            continue
        attributes = {
            REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason},
            "pixelpipe.source-queue": {"DataType": "String", "StringValue": queue_url},
            "pixelpipe.source-message-id": {"DataType": "String", "StringValue": str(mid)},
        }
        count = message.get("Attributes", {}).get("ApproximateReceiveCount")
        if count:
            attributes["pixelpipe.receive-count"] = {"DataType": "Number", "StringValue": count}
        try:
            sqs.send_message(
                QueueUrl=target, MessageBody=message.get("Body", ""), MessageAttributes=attributes
            )
        except Exception as exc:  # kept: the redrive policy moves it after maxReceiveCount
            logger.error("could not send SQS message %s to %s (%s): %s", mid, target, reason, exc)
            continue
        logger.warning("SQS message %s sent to the dead-letter queue %s: %s", mid, target, reason)
        sent.append(message)
    return sent


def evaluate_sqs_tick(
    instance: dg.DagsterInstance,
    s3: Any,
    sqs: Any,
    queue_url: str,
    settings: Settings,
    job_name: str,
    *,
    wait_seconds: int = RECEIVE_WAIT_SECONDS,
    visibility_timeout: int = VISIBILITY_TIMEOUT_SECONDS,
    logger: logging.Logger = log,
) -> SqsTickResult:
    """Receive events, store a listing per new batch, record, delete; return the run requests."""
    key = state_key(queue_url)
    seen = _preflight(instance, s3, settings, key)
    limit = settings.ingest_batch_size * batching.MAX_BATCHES_PER_TICK
    messages = _receive(sqs, queue_url, limit, wait_seconds, visibility_timeout)
    result = SqsTickResult(received=len(messages))
    parsed = [parse_message(m.get("Body")) for m in messages]
    try:
        events = _candidates(parsed, s3, settings, result)
        fresh, result.duplicates = select_new(events, seen.seen)
        result.new_objects = len(fresh)
        saved = _record(instance, s3, settings, key, fresh, result)
    except Exception:
        # Not the messages' fault: they stay invisible until their visibility timeout ends, so
        # a failing tick every interval does not charge them a receive each time.
        if messages:
            logger.error(
                "%d SQS messages left in flight for %d s after this failure",
                len(messages),
                visibility_timeout,
            )
        raise
    poison = [(m, p) for m, p in zip(messages, parsed, strict=True) if p.poison]
    result.poison = len(poison)
    sent = _dead_letter(sqs, queue_url, poison, logger)
    result.dead_lettered = len(sent)
    handled = [m for m, p in zip(messages, parsed, strict=True) if not p.poison]
    result.deleted = _delete(sqs, queue_url, handled + sent, logger)
    # Which batches need a run comes from their markers in S3, never from state a tick
    # rewrites: a tick that overran its timeout cannot drop the next tick's batches.
    review = batching.review(instance, s3, settings, batching.scope_id(key), job_name)
    result.run_requests = review.requests
    # the store holds the (large) seen set; the Dagster cursor is a summary for the UI
    seen_count = len(seen.seen) if saved is None else saved
    summary = {"pending": len(review.pending), "seen": seen_count, "received": len(messages)}
    result.cursor = json.dumps(summary, separators=(",", ":"))
    if not result.run_requests:
        result.skip_reason = (
            f"no new images from {queue_url} ({result.received} messages: "
            f"{result.duplicates} duplicates, {result.ignored} not images under "
            f"s3://{settings.raw_bucket}/{settings.raw_prefix}/, {result.test_events} test events, "
            f"{result.poison} malformed: {result.dead_lettered} sent to the dead-letter queue, "
            f"{result.poison - result.dead_lettered} kept in the queue)"
        )
    return result


def build_sqs_sensor(job: Any, settings: Settings, interval: int = 30) -> dg.SensorDefinition:
    """The event-mode sensor: requests `job` for each new batch; needs the `sqs` resource."""

    @dg.sensor(
        name="raw_images_sqs_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"S3 event notifications (SQS) for s3://{settings.raw_bucket}/{settings.raw_prefix}/"
        ),
    )
    def raw_images_sqs_sensor(
        context: dg.SensorEvaluationContext, s3: S3Resource, sqs: SqsResource
    ) -> dg.SensorResult:
        if not sqs.queue_url:
            raise SettingsError("SQS_QUEUE_URL='': expected the queue URL when INGEST_MODE=sqs")
        tick = evaluate_sqs_tick(
            context.instance,
            s3.client(),
            sqs.client(),
            sqs.queue_url,
            settings,
            job.name,
            wait_seconds=sqs.wait_seconds,
            visibility_timeout=sqs.visibility_timeout,
            logger=context.log,
        )
        return batching.sensor_result(tick.run_requests, tick.cursor, tick.skip_reason)

    return raw_images_sqs_sensor
