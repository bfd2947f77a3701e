"""Polling-sensor cursor: decide which objects of an S3 listing are new since the last tick.

S3 cannot list by time, so the sensor lists the whole prefix, over one tick or several (a tick
stops listing at its time budget and the next resumes after the last key). What was already
yielded is remembered as 64-bit digests of (key, ETag), in two tiers:

- the window: digests with their LastModified for objects yielded at or above `floor`, which
  trails the high-water mark by `lookback_seconds` and only rises when a full pass of the
  prefix is complete (16 bytes an object, in the instance's key-value store);
- the archive: a sorted array of the digests of everything that fell below the floor (8 bytes
  an object, stored by the sensor in ARTIFACTS_BUCKET, not in the cursor).

An object is new when its (key, ETag) is in neither. So a same-second object, a key sorting
before seen ones, a slow multipart upload whose LastModified is old, an object that became
visible hours late and an overwrite (new ETag) are all found, and an unchanged object is never
yielded twice. New objects older than the floor are counted as `late` (they are processed, and
the sensor logs their keys).

The high-water mark is the newest LastModified yielded, capped at the S3 server's own clock
plus `clock_tolerance`: one object stamped in the future by a skewed node cannot drag the floor
ahead of genuine uploads. At most `max_new` objects, the oldest by (LastModified, key), are
yielded per tick; the floor never rises past the oldest one left behind.

A cursor from before the archive existed (v1, v2 with keys) keeps its floor as `legacy_floor`:
objects older than it count as seen, as they did then; its keys are carried over as digests.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pixelpipe.storage.listing import Listing, ObjectInfo, list_objects

CURSOR_VERSION = 3
DEFAULT_LOOKBACK_SECONDS = 3600
CLOCK_TOLERANCE_SECONDS = 300.0
CHUNK = 1000
__all__ = ["Archive", "CursorState", "ObjectInfo", "ScanResult", "batches", "list_objects", "scan"]
__all__ += ["Listing", "Window", "digest"]


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

    def merged(self, digests: npt.NDArray[np.uint64] | Iterable[int]) -> Archive:
        extra = np.fromiter(digests, np.uint64) if not isinstance(digests, np.ndarray) else digests
        return Archive(np.union1d(self.values, extra.astype(np.uint64))) if extra.size else self

    def to_bytes(self) -> bytes:
        return self.values.astype("<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Archive:
        return cls(np.frombuffer(data, "<u8").astype(np.uint64))


class Window:
    """Digests of recently yielded objects with their LastModified (16 bytes each)."""

    def __init__(
        self,
        digests: npt.NDArray[np.uint64] | None = None,
        stamps: npt.NDArray[np.float64] | None = None,
    ) -> None:
        self.digests = digests if digests is not None else np.empty(0, np.uint64)
        self.stamps = stamps if stamps is not None else np.empty(0, np.float64)
        self._sorted: Archive | None = None

    def __len__(self) -> int:
        return int(self.digests.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        same = np.array_equal(self.digests, other.digests)
        return bool(same and np.array_equal(self.stamps, other.stamps))

    def contains(self, digests: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        if self._sorted is None:
            self._sorted = Archive(self.digests)  # sorted once per tick, searched per chunk
        return self._sorted.contains(digests)

    def added(self, objects: Iterable[ObjectInfo]) -> Window:
        items = list(objects)
        if not items:
            return self
        new = np.fromiter((digest(o.key, o.etag) for o in items), np.uint64, len(items))
        stamps = np.fromiter((o.timestamp for o in items), np.float64, len(items))
        return Window(np.concatenate([self.digests, new]), np.concatenate([self.stamps, stamps]))

    def split(self, floor: float) -> tuple[Window, npt.NDArray[np.uint64]]:
        """(what stays at or above floor, the digests that fall below it)."""
        keep = self.stamps >= floor
        return Window(self.digests[keep], self.stamps[keep]), self.digests[~keep]

    def to_text(self) -> str:
        records = np.empty(self.digests.size, dtype=[("d", "<u8"), ("t", "<f8")])
        records["d"], records["t"] = self.digests, self.stamps
        return base64.b64encode(records.tobytes()).decode("ascii")

    @classmethod
    def from_text(cls, text: str) -> Window:
        records = np.frombuffer(base64.b64decode(text), dtype=[("d", "<u8"), ("t", "<f8")])
        return cls(records["d"].astype(np.uint64), records["t"].astype(np.float64))


@dataclass
class CursorState:
    """What the sensor remembers between ticks (the archive is stored on its own)."""

    high_water: float | None = None
    window: Window = field(default_factory=Window)
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
            "window": self.window.to_text(),
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    def summary(self) -> dict[str, Any]:
        """A few fields for the Dagster cursor and the tick's log (bytes, whatever N is)."""
        return {
            "v": CURSOR_VERSION,
            "hw": self.high_water,
            "floor": self.floor,
            "resume_after": self.resume_after,
            "window": len(self.window),
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
            if version not in (1, 2, CURSOR_VERSION):
                raise ValueError(f"cursor version {version!r}, expected {CURSOR_VERSION}")
            floor = _opt_float(body["floor"])
            hw = _opt_float(body["hw"])
            if version == CURSOR_VERSION:
                window = Window.from_text(body["window"])
                legacy = _opt_float(body.get("legacy_floor"))
            else:  # keys and ETags of an older cursor, carried over as digests
                seen = [(str(k), str(v[0]), float(v[1])) for k, v in body["seen"].items()]
                window = Window(
                    np.fromiter((digest(k, e) for k, e, _ in seen), np.uint64, len(seen)),
                    np.fromiter((t for _, _, t in seen), np.float64, len(seen)),
                )
                legacy = floor if version == 1 else _opt_float(body.get("legacy_floor"))
            return cls(hw, window, floor, body.get("resume_after"), legacy)
        except (AttributeError, KeyError, TypeError, IndexError, ValueError) as exc:
            if isinstance(exc, ValueError) and "cursor version" in str(exc):
                raise
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


def _unknown(chunk: list[ObjectInfo], state: CursorState) -> Iterator[ObjectInfo]:
    if not chunk:
        return
    digests = np.fromiter((digest(o.key, o.etag) for o in chunk), np.uint64, len(chunk))
    known = state.window.contains(digests) | state.archive.contains(digests)
    for obj, seen in zip(chunk, known, strict=True):
        if not seen:
            yield obj


def _fresh(
    listing: Iterable[ObjectInfo],
    state: CursorState,
    is_candidate: Callable[[str], bool],
    counts: _Counts,
) -> Iterator[ObjectInfo]:
    """Objects not yet yielded, checked a chunk at a time against the window and the archive."""
    chunk: list[ObjectInfo] = []
    for obj in listing:
        counts.listed += 1
        if not is_candidate(obj.key):
            counts.not_candidate += 1
            continue
        if state.legacy_floor is not None and obj.timestamp < state.legacy_floor:
            continue  # seen under an older cursor, which kept no archive
        chunk.append(obj)
        if len(chunk) >= CHUNK:
            for fresh in _unknown(chunk, state):
                counts.new += 1
                yield fresh
            chunk = []
    for fresh in _unknown(chunk, state):
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
    counts = _Counts()
    new = heapq.nsmallest(max_new, _fresh(listing, state, is_candidate, counts), key=_order)
    complete = getattr(listing, "complete", True)
    server_now = getattr(listing, "server_time", None) or server_now
    left = counts.new - len(new)
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
    window, archive, archived = state.window.added(new), state.archive, 0
    if floor is not None:
        window, falling = window.split(floor)
        archived = int(falling.size)
        archive = archive.merged(falling)
    resume = None if complete else getattr(listing, "last_key", None)
    next_state = CursorState(high_water, window, floor, resume, state.legacy_floor, archive)
    return ScanResult(new, next_state, counts.listed, counts.not_candidate, left, late,
                      archived, capped)  # fmt: skip


def batches(new: list[ObjectInfo], batch_size: int) -> list[list[ObjectInfo]]:
    """Split the new objects, in order, into batches of at most `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [new[i : i + batch_size] for i in range(0, len(new), batch_size)]
