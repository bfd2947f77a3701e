"""Polling-sensor cursor: decide which objects of an S3 listing are new since the last tick.

S3 cannot list by time, so the sensor lists the whole prefix, over one tick or several (a tick
stops listing at its time budget and the next resumes after the last key). What was already
yielded is remembered in two tiers:

- the window: key -> (ETag, LastModified) for objects yielded with LastModified at or above
  `floor`, which trails the high-water mark by `lookback_seconds` and only rises when a full
  pass of the prefix is complete;
- the archive: a sorted array of 64-bit digests of (key, ETag) for everything that fell below
  the floor (8 bytes an object; stored by the sensor in ARTIFACTS_BUCKET, not in the cursor).

An object is new when its (key, ETag) is in neither. So a same-second object, a key sorting
before seen ones, a slow multipart upload whose LastModified is old, an object that became
visible hours late and an overwrite (new ETag) are all found, and an unchanged object is never
yielded twice. New objects older than the floor are counted as `late` (they are processed, and
the sensor logs their keys).

The high-water mark is the newest LastModified yielded, capped at the S3 server's own clock
plus `clock_tolerance`: one object stamped in the future by a skewed node cannot drag the floor
ahead of genuine uploads. At most `max_new` objects, the oldest by (LastModified, key), are
yielded per tick; the floor never rises past the oldest one left behind.

A cursor from before the archive existed (v1) keeps its floor as `legacy_floor`: objects older
than it count as seen, as they did then.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pixelpipe.storage.listing import Listing, ObjectInfo, list_objects

CURSOR_VERSION = 2
DEFAULT_LOOKBACK_SECONDS = 3600
CLOCK_TOLERANCE_SECONDS = 300.0
CHUNK = 1000
__all__ = ["Archive", "CursorState", "ObjectInfo", "ScanResult", "batches", "list_objects", "scan"]
__all__ += ["Listing", "digest"]


def digest(key: str, etag: str) -> int:
    """The 64-bit digest of (key, ETag) that the archive keeps."""
    raw = hashlib.blake2b(f"{key}\0{etag}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "little")


class Archive:
    """A sorted set of (key, ETag) digests: membership for a chunk at a time, 8 bytes each."""

    def __init__(self, values: npt.NDArray[np.uint64] | None = None) -> None:
        self.values = np.unique(values) if values is not None else np.empty(0, np.uint64)

    def __len__(self) -> int:
        return int(self.values.size)

    def contains(self, digests: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        if not self.values.size or not digests.size:
            return np.zeros(digests.shape, bool)
        at = np.searchsorted(self.values, digests)
        at[at == self.values.size] = 0
        found: npt.NDArray[np.bool_] = self.values[at] == digests
        return found

    def merged(self, digests: Iterable[int]) -> Archive:
        extra = np.fromiter(digests, np.uint64)
        return Archive(np.union1d(self.values, extra)) if extra.size else self

    def to_bytes(self) -> bytes:
        return self.values.astype("<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Archive:
        return cls(np.frombuffer(data, "<u8").astype(np.uint64))


@dataclass
class CursorState:
    """What the sensor remembers between ticks (the archive is stored on its own)."""

    high_water: float | None = None
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    floor: float | None = None
    resume_after: str | None = None
    legacy_floor: float | None = None
    archive: Archive = field(default_factory=Archive, compare=False, repr=False)

    def to_json(self) -> str:
        body = {
            "v": CURSOR_VERSION,
            "hw": self.high_water,
            "floor": self.floor,
            "resume_after": self.resume_after,
            "legacy_floor": self.legacy_floor,
            "seen": {key: [etag, ts] for key, (etag, ts) in self.seen.items()},
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def summary(self) -> dict[str, Any]:
        """A few fields for the Dagster cursor and the tick's log (bytes, whatever N is)."""
        return {
            "v": CURSOR_VERSION,
            "hw": self.high_water,
            "floor": self.floor,
            "resume_after": self.resume_after,
            "window": len(self.seen),
            "archive": len(self.archive),
        }

    @classmethod
    def from_json(cls, text: str | None) -> CursorState:
        """Parse a cursor; None or '' is a fresh cursor; anything malformed is a ValueError."""
        if not text:
            return cls()
        try:
            body = json.loads(text)
            version = body.get("v")
            if version not in (1, CURSOR_VERSION):
                raise ValueError(f"cursor version {version!r}, expected {CURSOR_VERSION}")
            seen = {str(k): (str(v[0]), float(v[1])) for k, v in body["seen"].items()}
            floor = _opt_float(body["floor"])
            legacy = floor if version == 1 else _opt_float(body.get("legacy_floor"))
            resume = body.get("resume_after")
            return cls(_opt_float(body["hw"]), seen, floor, resume, legacy)
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
    late: list[ObjectInfo] = field(default_factory=list)
    archived: int = 0
    capped: bool = False


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


def _unknown(chunk: list[ObjectInfo], archive: Archive) -> Iterator[ObjectInfo]:
    if not chunk:
        return
    digests = np.fromiter((digest(o.key, o.etag) for o in chunk), np.uint64, len(chunk))
    for obj, known in zip(chunk, archive.contains(digests), strict=True):
        if not known:
            yield obj


def _fresh(
    listing: Iterable[ObjectInfo],
    state: CursorState,
    seen: dict[str, tuple[str, float]],
    is_candidate: Callable[[str], bool],
    counts: _Counts,
) -> Iterator[ObjectInfo]:
    """Objects not yet yielded; refreshes `seen` for unchanged objects re-stamped by S3."""
    chunk: list[ObjectInfo] = []
    for obj in listing:
        counts.listed += 1
        if not is_candidate(obj.key):
            counts.not_candidate += 1
            continue
        ts = obj.timestamp
        known = seen.get(obj.key)
        if known is not None and known[0] == obj.etag:
            if ts > known[1]:
                seen[obj.key] = (obj.etag, ts)
            continue
        if state.legacy_floor is not None and ts < state.legacy_floor:
            continue  # seen under the v1 cursor, which kept no archive
        chunk.append(obj)
        if len(chunk) >= CHUNK:
            for fresh in _unknown(chunk, state.archive):
                counts.new += 1
                yield fresh
            chunk = []
    for fresh in _unknown(chunk, state.archive):
        counts.new += 1
        yield fresh


def scan(
    listing: Iterable[ObjectInfo],
    state: CursorState,
    *,
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
    max_new: int = 10_000,
    is_candidate: Callable[[str], bool] = not_a_directory_marker,
    server_now: float | None = None,
    clock_tolerance: float = CLOCK_TOLERANCE_SECONDS,
) -> ScanResult:
    """Pick the new objects of one listing (streamed once) and return the next cursor.

    A `Listing` that ran out of time (complete=False) leaves `resume_after` for the next tick;
    the floor only moves once a pass over the whole prefix is complete.
    """
    if max_new < 1:
        raise ValueError(f"max_new must be at least 1, got {max_new}")
    if lookback_seconds < 0:
        raise ValueError(f"lookback_seconds must be >= 0, got {lookback_seconds}")
    seen = dict(state.seen)
    counts = _Counts()
    new = heapq.nsmallest(max_new, _fresh(listing, state, seen, is_candidate, counts), key=_order)
    complete = getattr(listing, "complete", True)
    server_now = getattr(listing, "server_time", None) or server_now
    left = counts.new - len(new)
    for obj in new:
        seen[obj.key] = (obj.etag, obj.timestamp)
    stamps = [ts for ts in [state.high_water, *(o.timestamp for o in new)] if ts is not None]
    high_water = max(stamps) if stamps else None
    capped = False
    if high_water is not None and server_now is not None:
        limit = server_now + clock_tolerance
        capped = high_water > limit
        high_water = min(high_water, limit)
    floor = state.floor
    if complete and high_water is not None:
        # Everything left behind sorts after the last object taken, so its time bounds them all.
        target = high_water - lookback_seconds
        if left:
            target = min(target, new[-1].timestamp)
        floor = target if floor is None else max(floor, target)
    late = [o for o in new if state.floor is not None and o.timestamp < state.floor]
    archive = state.archive
    archived = 0
    if floor is not None:
        gone = [(k, v[0]) for k, v in seen.items() if v[1] < floor]
        archive = archive.merged(digest(k, e) for k, e in gone)
        archived = len(gone)
        seen = {key: value for key, value in seen.items() if value[1] >= floor}
    resume = None if complete else getattr(listing, "last_key", None)
    next_state = CursorState(high_water, seen, floor, resume, state.legacy_floor, archive)
    return ScanResult(new, next_state, counts.listed, counts.not_candidate, left, late,
                      archived, capped)  # fmt: skip


def batches(new: list[ObjectInfo], batch_size: int) -> list[list[ObjectInfo]]:
    """Split the new objects, in order, into batches of at most `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [new[i : i + batch_size] for i in range(0, len(new), batch_size)]
