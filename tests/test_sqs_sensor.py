"""The SQS event sensor batches exactly what the polling sensor would, and never loses an event.

SQS is an AWS-only API with no server that runs here, so the queue is moto's SQS served over
HTTP (`ThreadedMotoServer`); everything else is real: objects are uploaded to the test stack's
S3 (so keys, sizes and ETags in the events are the server's), listings are written there, and
the sensor is evaluated by Dagster against a real (ephemeral) instance. Messages are posted in
the shape S3 sends them (URL-encoded keys, eTag, sequencer, eventTime), raw or SNS-wrapped.

Protected here: the same batches as polling; duplicates and stale events dropped; a poison
message never fails the tick and lands in the dead-letter queue with its reason; an outage of
the artifacts bucket charges a message at most one receive per visibility window (moto moves a
message to the DLQ on the receive after its maxReceiveCount-th, as SQS does); overlapping ticks
lose no batch. Faults after the pre-flight are real: a TCP proxy in front of the real S3 drops or
holds the listing's PUT (tests/fault_tools.py).
"""

from __future__ import annotations

import functools
import io
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, urlsplit

import botocore.exceptions
import dagster as dg
import pytest
from fault_tools import FaultProxy
from PIL import Image

from pixelpipe import manifests as mf
from pixelpipe.io_managers.staging import batch_listing_key
from pixelpipe.resources.s3 import S3Resource, make_client
from pixelpipe.sensors.batching import scope_id
from pixelpipe.sensors.raw_images import (
    BATCH_TAG,
    build_raw_images_sensor,
    raw_batches_partitions,
)
from pixelpipe.sensors.sqs import (
    REASON_ATTRIBUTE,
    IngestUnavailable,
    SqsResource,
    build_sqs_sensor,
    evaluate_sqs_tick,
    state_key,
)
from pixelpipe.settings import Settings


@dg.op
def _noop() -> None:
    """Stands in for the ingest steps: these tests are about what the sensors request."""


@dg.job(name="ingest_job", partitions_def=raw_batches_partitions)
def ingest_job() -> None:
    _noop()


@pytest.fixture(scope="module")
def sqs_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


MAX_RECEIVES = 2  # the test queues' maxReceiveCount: a third receive moves a message to the DLQ


@functools.cache
def _client(endpoint: str | None) -> Any:
    """One SQS client per endpoint for the tests' own calls (a client costs ~0.2 s to make)."""
    return SqsResource(
        endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
    ).client()


def _sqs(queue: SqsResource) -> Any:
    return _client(queue.endpoint_url)


def _make_queue(endpoint: str, *, dead_letter: bool) -> SqsResource:
    where = {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    sqs = _client(endpoint)
    name = f"q-{secrets.token_hex(4)}"
    attributes = {}
    if dead_letter:
        dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        policy = {
            "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
            "maxReceiveCount": MAX_RECEIVES,
        }
        attributes["RedrivePolicy"] = json.dumps(policy)
    made = sqs.create_queue(QueueName=name, Attributes=attributes)
    return SqsResource(**where, queue_url=made["QueueUrl"], wait_seconds=0)


@pytest.fixture
def queue(sqs_endpoint: str) -> SqsResource:
    """A fresh queue of this test's own, with a dead-letter queue; the resource the sensor gets."""
    return _make_queue(sqs_endpoint, dead_letter=True)


@pytest.fixture
def plain_queue(sqs_endpoint: str) -> SqsResource:
    """A fresh queue with no dead-letter queue (no redrive policy)."""
    return _make_queue(sqs_endpoint, dead_letter=False)


@pytest.fixture
def proxy(stack: Any) -> Iterator[FaultProxy]:
    """A TCP proxy in front of the test stack's S3, to fail or hold chosen requests."""
    where = urlsplit(stack.s3_endpoint)
    fault = FaultProxy(where.port or 80)
    fault.upstream = (where.hostname or "127.0.0.1", where.port or 80)
    try:
        yield fault
    finally:
        fault.close()


def _via(proxy: FaultProxy, settings: Settings) -> Any:
    """An S3 client through the proxy that does not retry: a dropped request fails at once."""
    client = make_client(
        proxy.endpoint,
        settings.aws_access_key_id,
        settings.aws_secret_access_key,
        settings.aws_region,
        max_attempts=1,
    )
    # the proxy sends no `100 Continue`: a PUT that expects one would wait 1 s for it
    client.meta.events.register("before-send.s3", _no_expect)
    return client


def _no_expect(request: Any, **_: Any) -> None:
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _listing_put(method: str, path: str) -> bool:
    return method == "PUT" and "/batches/b-" in path


@pytest.fixture
def scoped(settings: Settings) -> Settings:
    """The session settings, watching a prefix of this test's own."""
    return settings.model_copy(update={"raw_prefix": f"incoming/sqs-{secrets.token_hex(3)}"})


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (seed * 40 % 256, 90, 160)).save(out, "JPEG")
    return out.getvalue()


def _upload(s3: Any, settings: Settings, name: str, seed: int = 0) -> str:
    key = f"{settings.raw_prefix}/{name}"
    s3.put_object(Bucket=settings.raw_bucket, Key=key, Body=_jpeg(seed))
    return key


def _record(s3: Any, bucket: str, key: str, sequencer: str, **changes: Any) -> dict[str, Any]:
    """An S3 ObjectCreated:Put record for the object as it is now on the server."""
    head = s3.head_object(Bucket=bucket, Key=key)
    stamp = changes.pop("time", head["LastModified"]).astimezone(UTC)
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {
                "key": quote_plus(key, safe="/"),
                "size": head["ContentLength"],
                "eTag": head["ETag"].strip('"'),
                "sequencer": sequencer,
            },
        },
    }
    record.update(changes)
    return record


def _post(queue: SqsResource, *records: dict[str, Any], sns: bool = False) -> None:
    body = json.dumps({"Records": list(records)})
    if sns:
        body = json.dumps({"Type": "Notification", "TopicArn": "arn:t", "Message": body})
    _sqs(queue).send_message(QueueUrl=queue.queue_url, MessageBody=body)


def _post_raw(queue: SqsResource, body: str) -> None:
    _sqs(queue).send_message(QueueUrl=queue.queue_url, MessageBody=body)


def _counts(queue: SqsResource) -> tuple[int, int]:
    """(visible, in flight) messages left in the queue."""
    attrs = _sqs(queue).get_queue_attributes(
        QueueUrl=queue.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


def _sensor_tick(
    settings: Settings, queue: SqsResource, instance: dg.DagsterInstance
) -> dg.SensorResult:
    sensor = build_sqs_sensor(ingest_job, settings, interval=30)
    context = dg.build_sensor_context(
        instance=instance,
        resources={"s3": S3Resource.from_settings(settings), "sqs": queue},
    )
    return sensor(context)


def _tick(
    settings: Settings,
    queue: SqsResource,
    instance: dg.DagsterInstance,
    s3: Any = None,
    visibility_timeout: int = 300,
) -> Any:
    return evaluate_sqs_tick(
        instance,
        s3 or S3Resource.from_settings(settings).client(),
        _sqs(queue),
        str(queue.queue_url),
        settings,
        ingest_job.name,
        wait_seconds=0,
        visibility_timeout=visibility_timeout,
    )


def _dead_letters(queue: SqsResource) -> dict[str, dict[str, str]]:
    """Body -> message attributes of every message in the queue's dead-letter queue."""
    sqs = _sqs(queue)
    dlq = sqs.get_queue_url(QueueName=str(queue.queue_url).rsplit("/", 1)[1] + "-dlq")["QueueUrl"]
    found: dict[str, dict[str, str]] = {}
    while page := sqs.receive_message(
        QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
    ).get("Messages", []):
        for message in page:
            attrs = message.get("MessageAttributes", {})
            assert message["Body"] not in found, "a message was dead-lettered twice"
            found[message["Body"]] = {k: v["StringValue"] for k, v in attrs.items()}
    return found


def _listing(s3: Any, settings: Settings, partition: str) -> mf.BatchListing:
    uri = f"s3://{settings.artifacts_bucket}/{batch_listing_key(partition)}"
    return mf.BatchListing.model_validate(mf.read_json(s3, uri))


def _shape(request: dg.RunRequest) -> tuple[Any, ...]:
    return (request.run_key, request.partition_key, request.job_name, dict(request.tags))


def test_events_make_the_same_batch_and_run_request_as_polling(
    scoped: Settings, s3: Any, queue: SqsResource
) -> None:
    keys = [
        _upload(s3, scoped, "a.jpg", 1),
        _upload(s3, scoped, "my photo+1 (é).JPG", 2),
        _upload(s3, scoped, "sub/c.png", 3),
    ]
    for seq, key in enumerate(keys, start=1):
        _post(queue, _record(s3, scoped.raw_bucket, key, f"00{seq:02d}"))

    result = _sensor_tick(scoped, queue, dg.DagsterInstance.ephemeral())

    poll = build_raw_images_sensor(ingest_job, scoped, interval=30)
    polled = poll(
        dg.build_sensor_context(
            instance=dg.DagsterInstance.ephemeral(),
            resources={"s3": S3Resource.from_settings(scoped)},
        )
    )
    assert [_shape(r) for r in result.run_requests] == [_shape(r) for r in polled.run_requests]
    (request,) = result.run_requests
    assert request.run_key == request.partition_key == request.tags[BATCH_TAG]
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [[request.run_key]]
    listing = _listing(s3, scoped, request.run_key)
    heads = {k: s3.head_object(Bucket=scoped.raw_bucket, Key=k) for k in keys}
    assert sorted(o.key for o in listing.objects) == sorted(keys)  # keys URL-decoded
    for obj in listing.objects:
        assert obj.etag == heads[obj.key]["ETag"].strip('"')
        assert obj.size == heads[obj.key]["ContentLength"]
    assert (listing.bucket, listing.prefix) == (scoped.raw_bucket, scoped.raw_prefix)
    assert _counts(queue) == (0, 0)


def test_duplicate_events_are_batched_once_within_and_across_ticks(
    scoped: Settings, s3: Any, queue: SqsResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    a = _record(s3, scoped.raw_bucket, _upload(s3, scoped, "a.jpg", 1), "01")
    b = _record(s3, scoped.raw_bucket, _upload(s3, scoped, "b.jpg", 2), "02")
    _post(queue, a)
    _post(queue, a)  # S3 delivers at least once
    _post(queue, b, sns=True)
    _post(queue, b)

    first = _tick(scoped, queue, instance)
    assert len(first.new_partitions) == 1
    assert first.new_objects == 2 and first.duplicates == 2
    assert [len(_listing(s3, scoped, p).objects) for p in first.new_partitions] == [2]
    assert _counts(queue) == (0, 0)

    _post(queue, a, b)  # the same events once more, in a later tick
    second = _tick(scoped, queue, instance)
    assert second.new_partitions == [] and second.duplicates == 2
    # the first batch has no run yet, so it is requested again under the same run key
    assert [r.run_key for r in second.run_requests] == first.new_partitions
    assert _counts(queue) == (0, 0)


def test_out_of_order_events_keep_the_newest_version_in_event_time_order(
    scoped: Settings, s3: Any, queue: SqsResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = _upload(s3, scoped, "over.jpg", 1)
    old = _record(s3, scoped.raw_bucket, key, "0A")
    _upload(s3, scoped, "over.jpg", 2)  # overwritten: new ETag
    new = _record(s3, scoped.raw_bucket, key, "0B")
    assert old["s3"]["object"]["eTag"] != new["s3"]["object"]["eTag"]
    late = _record(
        s3,
        scoped.raw_bucket,
        _upload(s3, scoped, "late.jpg", 3),
        "01",
        time=datetime(2030, 1, 1, tzinfo=UTC),
    )
    early = _record(
        s3,
        scoped.raw_bucket,
        _upload(s3, scoped, "early.jpg", 4),
        "01",
        time=datetime(2020, 1, 1, tzinfo=UTC),
    )
    _post(queue, late)
    _post(queue, new)
    _post(queue, early)
    _post(queue, old)  # arrives after the event of the write that replaced it

    tick = _tick(scoped, queue, instance)
    (partition,) = tick.new_partitions
    objects = _listing(s3, scoped, partition).objects
    assert [o.key.rsplit("/", 1)[-1] for o in objects] == ["early.jpg", "over.jpg", "late.jpg"]
    over = next(o for o in objects if o.key == key)
    assert over.etag == new["s3"]["object"]["eTag"]
    assert partition.startswith("b-20300101T")  # named after the newest event time

    _post(queue, old)  # the stale event again, in a later tick
    again = _tick(scoped, queue, instance)
    assert again.new_partitions == [] and again.duplicates == 1
    assert _counts(queue) == (0, 0)


def test_test_events_and_non_image_keys_are_deleted_and_malformed_bodies_stay_without_a_dlq(
    scoped: Settings, s3: Any, plain_queue: SqsResource
) -> None:
    bucket = scoped.raw_bucket
    note = f"{scoped.raw_prefix}/notes.txt"
    s3.put_object(Bucket=bucket, Key=note, Body=b"not an image")
    export = f"{scoped.annotations_prefix}/sqs-{secrets.token_hex(3)}/export.jpg"
    s3.put_object(Bucket=bucket, Key=export, Body=_jpeg(5))
    outside = f"elsewhere-{secrets.token_hex(3)}/x.jpg"
    s3.put_object(Bucket=bucket, Key=outside, Body=_jpeg(6))
    image = _upload(s3, scoped, "kept.jpg", 7)
    removed = _record(s3, bucket, image, "05", eventName="ObjectRemoved:Delete")
    _post_raw(
        plain_queue,
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}),
    )
    _post(plain_queue, _record(s3, bucket, note, "01"), _record(s3, bucket, export, "02"))
    _post(plain_queue, _record(s3, bucket, outside, "03"), removed)
    _post_raw(plain_queue, "this is not an S3 event")

    result = _sensor_tick(scoped, plain_queue, dg.DagsterInstance.ephemeral())

    assert result.run_requests == []
    assert result.skip_reason is not None
    reason = result.skip_reason.skip_message or ""
    assert "4 not images" in reason and "1 test events" in reason and "1 malformed" in reason
    # handled messages are gone; with no dead-letter queue to move it to, the malformed one is
    # kept (in flight until its visibility timeout), never deleted
    assert _counts(plain_queue) == (0, 1)


def test_poison_messages_go_to_the_dlq_with_their_reason_and_the_rest_is_batched(
    scoped: Settings, s3: Any, queue: SqsResource
) -> None:
    bucket = scoped.raw_bucket
    good = [_upload(s3, scoped, f"good-{i}.jpg", i) for i in range(3)]
    victim = _record(s3, bucket, _upload(s3, scoped, "victim.jpg", 4), "09")
    bare = _record(s3, bucket, good[0], "01")
    for name in ("eTag", "size"):  # some S3-compatible servers send neither
        del bare["s3"]["object"][name]
    _post(queue, bare)
    _post(queue, _record(s3, bucket, good[1], "02"), sns=True)
    wrong_size = json.loads(json.dumps(victim))
    wrong_size["s3"]["object"]["size"] = "twelve"
    key_not_text = json.loads(json.dumps(victim))
    key_not_text["s3"]["object"]["key"] = 42
    poison = {
        json.dumps({"Records": [None]}): "record 0: the record is null",
        json.dumps({"Records": [wrong_size]}): "record 0: size is 'twelve'",
        json.dumps({"Records": [key_not_text]}): "record 0: the key is 42",
        json.dumps({"Records": ["ObjectCreated:Put"]}): "record 0: the record is 'ObjectCreated",
        json.dumps({"Records": {"0": victim}}): "'Records' is {",
        json.dumps({"Records": [dict(victim, eventTime="yesterday")]}): "eventTime is 'yesterday'",
        "<Event>not JSON</Event>": "body is not JSON",
        # a bad record beside a good one: the good one is batched, the message still goes
        json.dumps({"Records": [_record(s3, bucket, good[2], "03"), 7]}): "record 1: the record",
    }
    for body in poison:
        _post_raw(queue, body)

    result = _sensor_tick(scoped, queue, dg.DagsterInstance.ephemeral())

    (request,) = result.run_requests  # the tick succeeded, and batched every good record
    objects = _listing(s3, scoped, request.run_key).objects
    assert sorted(o.key for o in objects) == sorted(good)
    for obj in objects:  # the bare event's ETag and size were asked of S3
        head = s3.head_object(Bucket=bucket, Key=obj.key)
        assert (obj.etag, obj.size) == (head["ETag"].strip('"'), head["ContentLength"])
    assert _counts(queue) == (0, 0)
    dead = _dead_letters(queue)
    assert sorted(dead) == sorted(poison)  # the bodies as sent, each once
    for body, why in poison.items():
        assert why in dead[body][REASON_ATTRIBUTE]
        assert dead[body]["pixelpipe.source-queue"] == queue.queue_url
        assert dead[body]["pixelpipe.receive-count"] == "1"


def test_an_artifacts_outage_fails_ticks_before_any_message_is_received(
    scoped: Settings, s3: Any, queue: SqsResource
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    for seq, name in enumerate(["a.jpg", "b.jpg"], start=1):
        _post(queue, _record(s3, scoped.raw_bucket, _upload(s3, scoped, name, seq), f"0{seq}"))
    # S3 refuses the artifacts bucket (a wrong secret key), for more ticks than maxReceiveCount
    refused = scoped.model_copy(update={"aws_secret_access_key": "not-the-secret"})
    for _ in range(MAX_RECEIVES + 1):
        with pytest.raises(IngestUnavailable, match="SignatureDoesNotMatch|AccessDenied"):
            _sensor_tick(refused, queue, instance)
        assert _counts(queue) == (2, 0)  # never received: no receive counted against them
    key = state_key(str(queue.queue_url))
    assert instance.run_storage.get_cursor_values({key}).get(key) is None

    result = _sensor_tick(scoped, queue, instance)
    (request,) = result.run_requests
    assert len(_listing(s3, scoped, request.run_key).objects) == 2
    assert _counts(queue) == (0, 0) and _dead_letters(queue) == {}
    # the batch is pending until its run succeeds: a marker in S3, not state a tick rewrites
    marker = f"batches/_pending/{scope_id(key)}/{request.run_key}"
    s3.head_object(Bucket=scoped.artifacts_bucket, Key=marker)


def _drop(method: str, path: str) -> None:
    raise ConnectionResetError(f"dropped {method} {path}")


def test_a_failure_after_receiving_charges_one_receive_per_visibility_window(
    scoped: Settings, s3: Any, queue: SqsResource, proxy: FaultProxy
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    for seq, name in enumerate(["a.jpg", "b.jpg"], start=1):
        _post(queue, _record(s3, scoped.raw_bucket, _upload(s3, scoped, name, seq), f"0{seq}"))
    # the bucket answers the pre-flight's listing, then every listing PUT is dropped (the
    # proxy closes the connection without an answer): the outage starts after the receive
    proxy.on(_listing_put, lambda: _drop("PUT", "batches/"))
    window = 3
    broken = _via(proxy, scoped)

    with pytest.raises(botocore.exceptions.BotoCoreError, match="(?i)connection"):
        _tick(scoped, queue, instance, broken, visibility_timeout=window)
    assert _counts(queue) == (0, 2)  # left in flight, not released for the next tick
    during = _tick(scoped, queue, instance, broken, visibility_timeout=window)
    assert during.received == 0 and during.run_requests == []  # no second receive charged

    deadline = time.monotonic() + 5 * window
    while _counts(queue) != (2, 0):  # visible again once their visibility timeout ends
        assert time.monotonic() < deadline, _counts(queue)
        time.sleep(0.2)
    after = _tick(scoped, queue, instance)
    # the second receive of each: the redrive policy left them in the queue
    assert after.received == 2 and len(after.new_partitions) == 1
    assert [r.run_key for r in after.run_requests] == after.new_partitions
    assert _counts(queue) == (0, 0) and _dead_letters(queue) == {}


def test_overlapping_ticks_lose_no_pending_batch(
    scoped: Settings, s3: Any, queue: SqsResource, proxy: FaultProxy
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    a = _record(s3, scoped.raw_bucket, _upload(s3, scoped, "a.jpg", 1), "01")
    b = _record(s3, scoped.raw_bucket, _upload(s3, scoped, "b.jpg", 2), "02")
    _post(queue, a)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(60)

    # tick A overruns: its listing PUT is held until tick B has stored, deleted and reviewed
    proxy.on(_listing_put, hold)
    slow: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: slow.update(tick=_tick(scoped, queue, instance, _via(proxy, scoped)))
    )
    thread.start()
    assert held.wait(60), "tick A never reached its listing PUT"
    _post(queue, b)
    fast = _tick(scoped, queue, instance)
    assert fast.received == 1 and fast.deleted == 1  # A's message is still in flight
    release.set()
    thread.join(60)
    overran = slow["tick"]
    assert overran.received == 1 and overran.deleted == 1

    (pa,), (pb,) = overran.new_partitions, fast.new_partitions
    assert {r.run_key for r in fast.run_requests} == {pb}
    assert {r.run_key for r in overran.run_requests} == {pa, pb}  # written after B deleted its
    later = _tick(scoped, queue, instance)
    assert {r.run_key for r in later.run_requests} == {pa, pb}  # still pending, both
    # neither tick's seen set overwrote the other's: both events again are duplicates
    _post(queue, a, b)
    replay = _tick(scoped, queue, instance)
    assert replay.duplicates == 2 and replay.new_partitions == []
    assert _counts(queue) == (0, 0)
