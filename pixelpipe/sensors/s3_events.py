"""S3 event notifications: each message parsed and checked on its own, and which events are new."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from pixelpipe.storage.listing import ObjectInfo

STATE_VERSION = 1
SEEN_LIMIT = 10_000
SEQUENCER_WIDTH = 64


class MalformedMessage(ValueError):
    """A message body, or one of its records, that is not an S3 event notification."""


@dataclass(frozen=True)
class S3Event:
    """One ObjectCreated record: the object as the event saw it, plus its ordering fields.

    `etag` is "" and `size` None when the event carries none (some S3-compatible servers):
    the sensor asks S3 for them before the object is batched.
    """

    bucket: str
    key: str
    time: datetime
    etag: str
    size: int | None
    sequencer: str

    @property
    def order(self) -> tuple[datetime, str, str]:
        # the polling sensor's (time, key) order; a sequencer only orders events of one key
        return (self.time, self.key, padded(self.sequencer))

    @property
    def complete(self) -> bool:
        return bool(self.etag) and self.size is not None

    def with_head(self, etag: str, size: int) -> S3Event:
        return replace(self, etag=etag, size=size)

    def info(self) -> ObjectInfo:
        if not self.etag or self.size is None:
            raise ValueError(f"event for {self.key!r} has no ETag or size yet")
        return ObjectInfo(key=self.key, etag=self.etag, last_modified=self.time, size=self.size)


@dataclass
class ParsedMessage:
    """What one message holds: its ObjectCreated events, and why any part of it is unusable."""

    events: list[S3Event] = field(default_factory=list)
    other_records: int = 0  # valid records of other event types (ObjectRemoved, ...)
    test_event: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def poison(self) -> bool:
        return bool(self.problems)


def padded(sequencer: str) -> str:
    # S3: compare sequencers of one key as hex strings left-padded with zeros to equal length
    return sequencer.upper().rjust(SEQUENCER_WIDTH, "0")


def _text(value: object, what: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise MalformedMessage(f"{what} is {_show(value)}, expected a non-empty string")
    return value


def _show(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what} is {_show(value)}, expected an object")
    return value


def _event_time(value: object) -> datetime:
    text = _text(value, "eventTime")
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedMessage(f"eventTime is {_show(value)}, expected an ISO 8601 time") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _size(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedMessage(f"size is {_show(value)}, expected a byte count")
    return value


def parse_body(body: object) -> list[object] | None:
    """The S3 records of a message body; None for s3:TestEvent; MalformedMessage otherwise."""
    if not isinstance(body, str):
        raise MalformedMessage(f"body is {type(body).__name__}, expected JSON text")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"body is not JSON ({str(exc)[:80]})") from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification":
        # delivered through SNS without raw delivery; the S3 event is the Message string
        message = doc.get("Message")
        if not isinstance(message, str):
            raise MalformedMessage("SNS notification without a 'Message' string")
        try:
            doc = json.loads(message)
        except (json.JSONDecodeError, RecursionError):
            raise MalformedMessage("SNS notification whose Message is not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedMessage(f"body is a JSON {type(doc).__name__}, expected an object")
    if doc.get("Event") == "s3:TestEvent":
        return None
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedMessage(f"'Records' is {_show(records)}, expected a non-empty list")
    return records


def parse_record(record: object) -> S3Event | None:
    """An ObjectCreated:* record as an S3Event; None for other valid records; else malformed."""
    record = _object(record, "the record")
    name = _text(record.get("eventName"), "eventName")
    source = _text(record.get("eventSource", "aws:s3"), "eventSource")
    if source != "aws:s3" or not name.startswith("ObjectCreated:"):
        return None
    s3 = _object(record.get("s3"), "'s3'")
    bucket = _text(_object(s3.get("bucket"), "'s3.bucket'").get("name"), "the bucket name")
    obj = _object(s3.get("object"), "'s3.object'")
    key = unquote_plus(_text(obj.get("key"), "the key"))  # URL-encoded, '+' for spaces
    return S3Event(
        bucket=bucket,
        key=key,
        time=_event_time(record.get("eventTime")),
        etag=_text(obj.get("eTag"), "eTag", required=False).strip('"'),
        size=_size(obj.get("size")),
        sequencer=_text(obj.get("sequencer"), "sequencer", required=False),
    )


def parse_message(body: object) -> ParsedMessage:
    """Every usable event of a message, and a reason for each part that is not; never raises."""
    parsed = ParsedMessage()
    try:
        records = parse_body(body)
    except MalformedMessage as exc:
        parsed.problems.append(str(exc))
        return parsed
    if records is None:
        parsed.test_event = True
        return parsed
    for index, record in enumerate(records):
        try:
            event = parse_record(record)
        except MalformedMessage as exc:
            parsed.problems.append(f"record {index}: {exc}")
            continue
        if event is None:
            parsed.other_records += 1
        else:
            parsed.events.append(event)
    return parsed


def newer(event: S3Event, etag: str, sequencer: str) -> bool:
    """Is `event` a newer version than the remembered (etag, sequencer) of its key?"""
    if event.etag == etag:
        return False
    if event.sequencer and sequencer:
        return padded(event.sequencer) > padded(sequencer)
    return True  # no sequencer to compare: a different ETag is a different object


@dataclass
class SeenEvents:
    """The newest (ETag, sequencer) of the last SEEN_LIMIT keys batched (S3 may send twice)."""

    seen: dict[str, tuple[str, str]] = field(default_factory=dict)

    def to_json(self) -> str:
        rows = [[key, etag, seq] for key, (etag, seq) in self.seen.items()]
        return json.dumps({"v": STATE_VERSION, "seen": rows}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> SeenEvents:
        if not text:
            return cls()
        body = json.loads(text)
        if body.get("v") != STATE_VERSION:
            raise ValueError(f"SQS sensor state v{body.get('v')!r}, expected {STATE_VERSION}")
        # a "pending" list of older states is ignored: pending batches are markers in S3 now
        return cls({str(k): (str(e), str(s)) for k, e, s in body["seen"]})

    def remember(self, event: S3Event) -> None:
        self.seen.pop(event.key, None)  # re-insert: the dict's order is the eviction order
        self.seen[event.key] = (event.etag, event.sequencer)
        while len(self.seen) > SEEN_LIMIT:
            del self.seen[next(iter(self.seen))]

    def updated(self, batched: Iterable[S3Event]) -> SeenEvents:
        """These entries (as stored, maybe by another tick meanwhile) plus newer `batched` ones."""
        merged = SeenEvents(dict(self.seen))
        for event in batched:
            known = merged.seen.get(event.key)
            if known is None or newer(event, *known):
                merged.remember(event)
        return merged


def select_new(
    events: Iterable[S3Event], seen: Mapping[str, tuple[str, str]]
) -> tuple[list[S3Event], int]:
    """The newest version of each key not batched before, oldest first; and the duplicates."""
    duplicates = 0
    latest: dict[str, S3Event] = {}
    for event in sorted(events, key=lambda e: e.order):
        known = latest.get(event.key)
        if known is not None:
            duplicates += 1
            if newer(event, known.etag, known.sequencer):
                latest[event.key] = event
            continue
        latest[event.key] = event
    fresh = []
    for event in latest.values():
        remembered = seen.get(event.key)
        if remembered is not None and not newer(event, *remembered):
            duplicates += 1
            continue
        fresh.append(event)
    return sorted(fresh, key=lambda e: e.order), duplicates
