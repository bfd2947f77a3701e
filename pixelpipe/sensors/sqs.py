"""Event sensor (INGEST_MODE=sqs): S3 event notifications from SQS become the polling batches.

Each tick receives up to `ingest_batch_size * MAX_BATCHES_PER_TICK` messages (the S3 event
JSON, raw or wrapped in an SNS envelope), turns ObjectCreated:* records into `ObjectInfo`s
(URL-decoded key, ETag, size, eventTime), keeps images under RAW_PREFIX with the polling
sensor's predicate, drops duplicate and stale events, and batches the rest with the polling
sensor's `partition_name` and listing writer, so both modes produce the same partitions, listing
objects and run requests. Messages are deleted only after every listing is stored and the
pending batches are recorded in the instance's key-value store; a failure before that makes
them visible again at once, so the next tick sees them. Bodies that are not S3 events stay in
the queue, where the queue's redrive policy moves them to its dead-letter queue.

Duplicates: S3 delivers events at least once. The store remembers the newest (ETag, sequencer)
of the last `SEEN_LIMIT` keys; an event for a key with the same ETag, or with an older
sequencer (a late event for an overwritten key), is a duplicate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import dagster as dg

from pixelpipe.resources.s3 import S3Resource
from pixelpipe.sensors import batching
from pixelpipe.sensors import raw_images as ri
from pixelpipe.settings import Settings, SettingsError
from pixelpipe.storage import cursor as cur

log = logging.getLogger(__name__)

STATE_VERSION = 1
SEEN_LIMIT = 10_000
RECEIVE_WAIT_SECONDS = 1
# Longer than a tick: a received message must stay invisible until this tick deletes it.
VISIBILITY_TIMEOUT_SECONDS = 300
SQS_BATCH = 10  # ReceiveMessage / DeleteMessageBatch / ChangeMessageVisibilityBatch maximum
SEQUENCER_WIDTH = 64


class SqsResource(dg.ConfigurableResource):
    """The queue that receives the raw bucket's S3 event notifications, and how to reach it."""

    queue_url: str | None = None
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # long polling of the receive that finds the queue empty (0 = short polling)
    wait_seconds: int = RECEIVE_WAIT_SECONDS

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


@dataclass(frozen=True)
class S3Event:
    """One ObjectCreated record: the object as the event saw it, plus its ordering fields."""

    bucket: str
    obj: cur.ObjectInfo
    sequencer: str

    @property
    def order(self) -> tuple[datetime, str, str]:
        # the polling sensor's (time, key) order; a sequencer only orders events of one key
        return (self.obj.last_modified, self.obj.key, _padded(self.sequencer))


@dataclass
class SqsState:
    """What the event sensor keeps in the instance KV store between ticks."""

    seen: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (etag, sequencer)
    pending: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        body = {
            "v": STATE_VERSION,
            "seen": [[key, etag, seq] for key, (etag, seq) in self.seen.items()],
            "pending": self.pending,
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> SqsState:
        if not text:
            return cls()
        body = json.loads(text)
        if body.get("v") != STATE_VERSION:
            raise ValueError(f"SQS sensor state v{body.get('v')!r}, expected {STATE_VERSION}")
        seen = {str(k): (str(e), str(s)) for k, e, s in body["seen"]}
        return cls(seen, [str(p) for p in body.get("pending", [])])

    def remember(self, event: S3Event) -> None:
        self.seen.pop(event.obj.key, None)  # re-insert: the dict's order is the eviction order
        self.seen[event.obj.key] = (event.obj.etag, event.sequencer)
        while len(self.seen) > SEEN_LIMIT:
            del self.seen[next(iter(self.seen))]


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
    malformed: int = 0


class MalformedMessage(ValueError):
    """A message body that is not an S3 event notification."""


def state_key(queue_url: str) -> str:
    return f"pixelpipe/raw_images_sqs_sensor/{queue_url}"


def _padded(sequencer: str) -> str:
    # S3: compare sequencers of one key as hex strings left-padded with zeros to equal length
    return sequencer.upper().rjust(SEQUENCER_WIDTH, "0")


def _event_time(text: str) -> datetime:
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def parse_body(body: str) -> list[dict[str, Any]] | None:
    """The S3 records of a message body; None for s3:TestEvent; MalformedMessage otherwise."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedMessage("not a JSON object")
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_body(doc["Message"])  # delivered through SNS without raw delivery
    if doc.get("Event") == "s3:TestEvent":
        return None
    records = doc.get("Records")
    if not isinstance(records, list):
        raise MalformedMessage("no 'Records' list")
    return records


def parse_record(record: dict[str, Any], s3: Any) -> S3Event | None:
    """An ObjectCreated:* record as an S3Event; None for other events or a vanished object."""
    name = str(record.get("eventName", ""))
    if record.get("eventSource", "aws:s3") != "aws:s3" or not name.startswith("ObjectCreated:"):
        return None
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])  # S3 URL-encodes keys in events, '+' for spaces
        stamp = _event_time(record["eventTime"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"S3 record without {exc}") from None
    etag, size = str(obj.get("eTag", "")).strip('"'), int(obj.get("size", 0))
    if not etag:
        head = _head(s3, bucket, key)
        if head is None:
            return None
        etag, size = head
    info = cur.ObjectInfo(key=key, etag=etag, last_modified=stamp, size=size)
    return S3Event(bucket=bucket, obj=info, sequencer=str(obj.get("sequencer", "")))


def _head(s3: Any, bucket: str, key: str) -> tuple[str, int] | None:
    import botocore.exceptions

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    return head["ETag"].strip('"'), int(head["ContentLength"])


def _newer(event: S3Event, etag: str, sequencer: str) -> bool:
    """Is `event` a newer version than the remembered (etag, sequencer) of its key?"""
    if event.obj.etag == etag:
        return False
    if event.sequencer and sequencer:
        return _padded(event.sequencer) > _padded(sequencer)
    return True  # no sequencer to compare: a different ETag is a different object


def select_new(events: Iterable[S3Event], state: SqsState, result: SqsTickResult) -> list[S3Event]:
    """Drop duplicates and stale versions (within the tick and against the store), oldest first."""
    latest: dict[str, S3Event] = {}
    for event in sorted(events, key=lambda e: e.order):
        known = latest.get(event.obj.key)
        if known is not None:
            result.duplicates += 1
            if _newer(event, known.obj.etag, known.sequencer):
                latest[event.obj.key] = event
            continue
        latest[event.obj.key] = event
    fresh = []
    for event in latest.values():
        remembered = state.seen.get(event.obj.key)
        if remembered is not None and not _newer(event, *remembered):
            result.duplicates += 1
            continue
        fresh.append(event)
    return sorted(fresh, key=lambda e: e.order)


def _receive(sqs: Any, queue_url: str, limit: int, wait_seconds: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < limit:
        page = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(SQS_BATCH, limit - len(messages)),
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=VISIBILITY_TIMEOUT_SECONDS,
        ).get("Messages", [])
        if not page:
            break
        messages.extend(page)
    return messages


def _chunks(messages: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(messages), SQS_BATCH):
        yield messages[start : start + SQS_BATCH]


def _delete(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> int:
    deleted = 0
    for chunk in _chunks(messages):
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
        answer = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        deleted += len(answer.get("Successful", []))
        for failed in answer.get("Failed", []):
            # redelivered later and then dropped as a duplicate
            log.warning("could not delete SQS message: %s", failed)
    return deleted


def _release(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    """Make messages visible again now, so the next tick retries them (best effort)."""
    for chunk in _chunks(messages):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(chunk)
        ]
        try:
            sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as exc:  # the original error matters more than this one
            log.warning("could not release SQS messages (they reappear later): %s", exc)


make_listing = batching.make_listing


def _events(
    messages: list[dict[str, Any]], s3: Any, settings: Settings, result: SqsTickResult
) -> tuple[list[S3Event], list[dict[str, Any]]]:
    """Every candidate image event, and the messages that are handled once they are recorded."""
    prefix = settings.raw_prefix.strip("/")
    under = prefix + "/" if prefix else ""
    is_image = ri.is_image_key(prefix, settings.annotations_prefix)
    events: list[S3Event] = []
    handled: list[dict[str, Any]] = []
    for message in messages:
        try:
            records = parse_body(message.get("Body", ""))
            parsed = [parse_record(r, s3) for r in records] if records is not None else None
        except MalformedMessage as exc:
            result.malformed += 1
            log.warning("SQS message %s left for the DLQ: %s", message.get("MessageId"), exc)
            continue
        handled.append(message)
        if parsed is None:
            result.test_events += 1
            continue
        for event in parsed:
            if (
                event is None
                or event.bucket != settings.raw_bucket
                or not event.obj.key.startswith(under)
                or not is_image(event.obj.key)
            ):
                result.ignored += 1
            else:
                events.append(event)
    return events, handled


def _record(
    instance: dg.DagsterInstance,
    s3: Any,
    settings: Settings,
    key: str,
    state: SqsState,
    fresh: list[S3Event],
    result: SqsTickResult,
) -> None:
    """Store the listings and their pending markers, then the seen set: then messages may go."""
    if fresh:
        objects = [e.obj for e in fresh]
        scope = batching.scope_id(key)
        result.new_partitions = batching.store_batches(
            s3, settings, scope, objects, settings.raw_prefix
        )
    for event in fresh:
        state.remember(event)
    instance.run_storage.set_cursor_values({key: state.to_json()})


def evaluate_sqs_tick(
    instance: dg.DagsterInstance,
    s3: Any,
    sqs: Any,
    queue_url: str,
    settings: Settings,
    job_name: str,
    *,
    wait_seconds: int = RECEIVE_WAIT_SECONDS,
) -> SqsTickResult:
    """Receive events, store a listing per new batch, record, delete; return the run requests."""
    key = state_key(queue_url)
    state = SqsState.from_json(instance.run_storage.get_cursor_values({key}).get(key))
    limit = settings.ingest_batch_size * batching.MAX_BATCHES_PER_TICK
    messages = _receive(sqs, queue_url, limit, wait_seconds)
    result = SqsTickResult(received=len(messages))
    try:
        events, handled = _events(messages, s3, settings, result)
        fresh = select_new(events, state, result)
        result.new_objects = len(fresh)
        _record(instance, s3, settings, key, state, fresh, result)
    except Exception:
        _release(sqs, queue_url, messages)
        raise
    result.deleted = _delete(sqs, queue_url, handled)
    # Which batches need a run comes from their markers in S3, never from state a tick
    # rewrites: a tick that overran its timeout cannot drop the next tick's batches.
    review = batching.review(instance, s3, settings, batching.scope_id(key), job_name)
    result.run_requests = review.requests
    # the store holds the (large) seen set; the Dagster cursor is a summary for the UI
    summary = {"pending": len(review.pending), "seen": len(state.seen), "received": len(messages)}
    result.cursor = json.dumps(summary, separators=(",", ":"))
    if not result.run_requests:
        result.skip_reason = (
            f"no new images from {queue_url} ({result.received} messages: "
            f"{result.duplicates} duplicates, {result.ignored} not images under "
            f"s3://{settings.raw_bucket}/{settings.raw_prefix}/, {result.test_events} test events, "
            f"{result.malformed} malformed left for the DLQ)"
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
        )
        return batching.sensor_result(tick.run_requests, tick.cursor, tick.skip_reason)

    return raw_images_sqs_sensor
