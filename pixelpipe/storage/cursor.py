"""Polling-sensor cursor: decide which objects of an S3 listing are new since the last tick.

S3 cannot list by time, so every tick is one full, streaming ListObjectsV2 of the prefix:
ceil(N / 1000) LIST requests for N objects, O(window + max_new) memory, never O(N).
The cursor decides what is new:

- `high_water` is the newest LastModified among the objects yielded so far (S3's clock,
  never the sensor's, so clock skew cannot lose objects).
- `seen` maps key -> (etag, LastModified) for every object yielded with LastModified at or
  above `floor`; `floor` trails `high_water` by `lookback_seconds` and only ever rises.
- An object is new when its LastModified is at or above `floor` and its key is not in
  `seen` with the same ETag. So an object written in the same second as the last one seen,
  one whose key sorts before keys already seen, one overwritten (new ETag) and a multipart
  upload whose LastModified (the upload's *start*) is older than objects already seen all
  count as new, and an unchanged object is never yielded twice.
- Objects older than `floor` count as seen. An upload that takes longer than the look-back
  window to become visible can therefore be missed: raise `lookback_seconds` for such
  uploads, or use the SQS (event) mode.
- At most `max_new` objects, the oldest by (LastModified, key), are yielded per tick; the rest
  come on later ticks. `floor` never rises past the oldest object left behind.

The cursor's size is bounded by the objects that land within one look-back window.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CURSOR_VERSION = 1
DEFAULT_LOOKBACK_SECONDS = 3600


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: key, ETag without quotes, tz-aware LastModified, size in bytes."""

    key: str
    etag: str
    last_modified: datetime
    size: int

    def __post_init__(self) -> None:
        if self.last_modified.tzinfo is None:
            raise ValueError(f"last_modified of {self.key!r} must be timezone-aware")

    @property
    def timestamp(self) -> float:
        return self.last_modified.timestamp()


@dataclass
class CursorState:
    """What the sensor remembers between ticks; `to_json` is its Dagster cursor string."""

    high_water: float | None = None
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    floor: float | None = None

    def to_json(self) -> str:
        body = {
            "v": CURSOR_VERSION,
            "hw": self.high_water,
            "floor": self.floor,
            "seen": {key: [etag, ts] for key, (etag, ts) in self.seen.items()},
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> CursorState:
        """Parse a cursor; None or '' is a fresh cursor; anything malformed is a ValueError."""
        if not text:
            return cls()
        try:
            body = json.loads(text)
            if body.get("v") != CURSOR_VERSION:
                raise ValueError(f"cursor version {body.get('v')!r}, expected {CURSOR_VERSION}")
            seen = {str(k): (str(v[0]), float(v[1])) for k, v in body["seen"].items()}
            return cls(_opt_float(body["hw"]), seen, _opt_float(body["floor"]))
        except (AttributeError, KeyError, TypeError, IndexError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed sensor cursor: {exc}") from None


@dataclass
class ScanResult:
    """One tick's decision: the new objects, the next cursor and counts for the tick's log."""

    new: list[ObjectInfo]
    state: CursorState
    listed: int
    skipped_not_candidate: int
    left_for_next_tick: int


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def not_a_directory_marker(key: str) -> bool:
    """The default candidate filter: every key except 'folder/' placeholders."""
    return not key.endswith("/")


def _order(obj: ObjectInfo) -> tuple[float, str]:
    return (obj.timestamp, obj.key)


@dataclass
class _Counts:
    listed: int = 0
    not_candidate: int = 0
    new: int = 0


def _fresh(
    listing: Iterable[ObjectInfo],
    state: CursorState,
    seen: dict[str, tuple[str, float]],
    is_candidate: Callable[[str], bool],
    counts: _Counts,
) -> Iterator[ObjectInfo]:
    """Objects not yet yielded; refreshes `seen` for unchanged objects re-stamped by S3."""
    for obj in listing:
        counts.listed += 1
        if not is_candidate(obj.key):
            counts.not_candidate += 1
            continue
        ts = obj.timestamp
        if state.floor is not None and ts < state.floor:
            continue
        known = seen.get(obj.key)
        if known is not None and known[0] == obj.etag:
            if ts > known[1]:
                seen[obj.key] = (obj.etag, ts)
            continue
        counts.new += 1
        yield obj


def _next_floor(
    floor: float | None, high_water: float | None, lookback: float, oldest_left: float | None
) -> float | None:
    if high_water is None:
        return floor
    target = high_water - lookback
    if oldest_left is not None:
        target = min(target, oldest_left)
    return target if floor is None else max(floor, target)


def scan(
    listing: Iterable[ObjectInfo],
    state: CursorState,
    *,
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
    max_new: int = 10_000,
    is_candidate: Callable[[str], bool] = not_a_directory_marker,
) -> ScanResult:
    """Pick the new objects of one full listing (streamed once) and return the next cursor."""
    if max_new < 1:
        raise ValueError(f"max_new must be at least 1, got {max_new}")
    if lookback_seconds < 0:
        raise ValueError(f"lookback_seconds must be >= 0, got {lookback_seconds}")
    seen = dict(state.seen)
    counts = _Counts()
    fresh = _fresh(listing, state, seen, is_candidate, counts)
    new = heapq.nsmallest(max_new, fresh, key=_order)
    left = counts.new - len(new)
    for obj in new:
        seen[obj.key] = (obj.etag, obj.timestamp)
    stamps = [ts for ts in [state.high_water, *(o.timestamp for o in new)] if ts is not None]
    high_water = max(stamps) if stamps else None
    # Everything left behind sorts after the last object taken, so its time bounds them all.
    oldest_left = new[-1].timestamp if left else None
    floor = _next_floor(state.floor, high_water, lookback_seconds, oldest_left)
    if floor is not None:
        seen = {key: value for key, value in seen.items() if value[1] >= floor}
    return ScanResult(
        new=new,
        state=CursorState(high_water, seen, floor),
        listed=counts.listed,
        skipped_not_candidate=counts.not_candidate,
        left_for_next_tick=left,
    )


def batches(new: list[ObjectInfo], batch_size: int) -> list[list[ObjectInfo]]:
    """Split the new objects, in order, into batches of at most `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [new[i : i + batch_size] for i in range(0, len(new), batch_size)]


def list_objects(
    s3_client: Any, bucket: str, prefix: str = "", *, page_size: int = 1000
) -> Iterator[ObjectInfo]:
    """Stream every object under `prefix` (ListObjectsV2, `page_size` keys per request)."""
    paginator = s3_client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
    )
    for page in pages:
        for item in page.get("Contents", []):
            yield ObjectInfo(
                key=item["Key"],
                etag=item.get("ETag", "").strip('"'),
                last_modified=item["LastModified"],
                size=int(item.get("Size", 0)),
            )
