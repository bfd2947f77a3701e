"""The polling sensor's cursor never misses a newly visible object and never yields one twice."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelpipe.storage.cursor import (
    Archive,
    CursorState,
    ObjectInfo,
    ScanResult,
    batches,
    list_objects,
    scan,
)

T0 = 1_700_000_000.0


def obj(key: str, ts: float, etag: str = "e1", size: int = 10) -> ObjectInfo:
    return ObjectInfo(key, etag, datetime.fromtimestamp(ts, UTC), size)


def keys(result: ScanResult) -> list[str]:
    return [o.key for o in result.new]


def tick(listing: list[ObjectInfo], state: CursorState, **kw: Any) -> ScanResult:
    """One sensor tick, with the cursor passing through its stored forms (JSON for the window,
    bytes for the archive) as the sensor stores them."""
    result = scan(iter(sorted(listing, key=lambda o: o.key)), state, **kw)
    archive = Archive.from_bytes(result.state.archive.to_bytes())
    result.state = CursorState.from_json(result.state.to_json())
    result.state.archive = archive
    return result


def test_first_tick_yields_everything_oldest_first() -> None:
    listing = [obj("b.jpg", T0 + 5), obj("a.jpg", T0 + 9), obj("c.jpg", T0 + 1)]
    result = tick(listing, CursorState())
    assert keys(result) == ["c.jpg", "b.jpg", "a.jpg"]
    assert (result.listed, result.left_for_next_tick) == (3, 0)


def test_same_second_object_arriving_next_tick_is_new() -> None:
    first = tick([obj("a.jpg", T0)], CursorState())
    second = tick([obj("a.jpg", T0), obj("b.jpg", T0)], first.state)
    assert keys(second) == ["b.jpg"]


def test_late_key_sorting_before_seen_keys_is_new() -> None:
    seen = [obj("m.jpg", T0), obj("n.jpg", T0 + 1)]
    first = tick(seen, CursorState())
    second = tick([obj("a.jpg", T0 + 1), *seen], first.state)
    assert keys(second) == ["a.jpg"]


def test_slow_multipart_with_older_last_modified_is_new_within_window() -> None:
    seen = [obj("x.jpg", T0 + 1000), obj("y.jpg", T0 + 2000)]
    first = tick(seen, CursorState(), lookback_seconds=3600)
    # LastModified is when the upload *started*, older than everything seen so far.
    second = tick([obj("big.tif", T0 + 10), *seen], first.state, lookback_seconds=3600)
    assert keys(second) == ["big.tif"]


def test_upload_visible_after_the_window_is_found_and_counted_late() -> None:
    """Below the floor, the archive of everything yielded decides: never seen means new."""
    first = tick([obj("y.jpg", T0 + 5000)], CursorState(), lookback_seconds=1000)
    second = tick([obj("old.tif", T0 + 3000), obj("y.jpg", T0 + 5000)], first.state)
    assert keys(second) == ["old.tif"] and [o.key for o in second.late] == ["old.tif"]
    assert keys(tick([obj("old.tif", T0 + 3000), obj("y.jpg", T0 + 5000)], second.state)) == []


def test_a_future_dated_object_cannot_hide_later_uploads() -> None:
    """A skewed node stamps an object 3 h ahead; the high-water mark stops at the S3 server's
    own clock (+5 min), so the next two hours of genuine uploads are all found."""
    now = T0 + 10_000
    state = tick([obj("skewed.jpg", now + 3 * 3600)], CursorState(), server_now=now).state
    assert state.high_water == now + 300
    listing = [obj("skewed.jpg", now + 3 * 3600)]
    found: list[str] = []
    for minute in range(0, 120, 10):
        listing.append(obj(f"genuine-{minute:03d}.jpg", now + 60 * minute))
        result = tick(listing, state, server_now=now + 60 * minute, lookback_seconds=600)
        found += keys(result)
        state = result.state
    assert found == [f"genuine-{m:03d}.jpg" for m in range(0, 120, 10)]


def test_a_v1_cursor_keeps_treating_objects_below_its_floor_as_seen() -> None:
    v1 = json.dumps({"v": 1, "hw": T0 + 900, "floor": T0 + 500, "seen": {}})
    state = CursorState.from_json(v1)
    assert state.legacy_floor == T0 + 500
    result = tick([obj("old.jpg", T0 + 100), obj("new.jpg", T0 + 950)], state)
    assert keys(result) == ["new.jpg"]


def test_overwrite_is_new_and_unchanged_object_never_repeats() -> None:
    state = tick([obj("a.jpg", T0), obj("b.jpg", T0)], CursorState()).state
    second = tick([obj("a.jpg", T0 + 60, etag="e2"), obj("b.jpg", T0)], state)
    assert [(o.key, o.etag) for o in second.new] == [("a.jpg", "e2")]
    third = tick([obj("a.jpg", T0 + 60, etag="e2"), obj("b.jpg", T0)], second.state)
    assert keys(third) == []


def test_identical_reupload_with_newer_time_is_not_new_even_after_window_slides() -> None:
    state = tick([obj("a.jpg", T0)], CursorState(), lookback_seconds=100).state
    state = tick([obj("a.jpg", T0 + 90)], state, lookback_seconds=100).state
    listing = [obj("a.jpg", T0 + 90), obj("z.jpg", T0 + 150)]
    later = tick(listing, state, lookback_seconds=100)
    assert keys(later) == ["z.jpg"]
    assert keys(tick(listing, later.state, lookback_seconds=100)) == []


def test_scan_of_2500_keys_yields_each_once() -> None:
    listing = [obj(f"img/{i:05d}.jpg", T0 + i // 7) for i in range(2500)]
    first = tick(listing, CursorState())
    assert len(first.new) == 2500
    assert len({o.key for o in first.new}) == 2500
    assert tick(listing, first.state).new == []


@pytest.mark.parametrize("spread", [0, 1])
def test_max_new_leaves_the_rest_for_later_ticks(spread: int) -> None:
    # spread=0: every object in the same second, the hardest case for a time floor.
    listing = [obj(f"k/{i:05d}", T0 + spread * (i % 50)) for i in range(2500)]
    state = CursorState()
    got: list[str] = []
    lefts: list[int] = []
    for _ in range(4):
        result = tick(listing, state, max_new=1000, lookback_seconds=0)
        got += keys(result)
        lefts.append(result.left_for_next_tick)
        state = result.state
    assert lefts == [1500, 500, 0, 0]
    assert sorted(got) == sorted(o.key for o in listing)
    assert len(got) == len(set(got))


def test_lowering_lookback_between_ticks_keeps_the_backlog() -> None:
    state = tick([obj("new.jpg", T0 + 1000)], CursorState(), lookback_seconds=3600).state
    late = [obj(f"late{i}.tif", T0 + 10 + i) for i in range(5)]
    listing = [obj("new.jpg", T0 + 1000), *late]
    got: list[str] = []
    for _ in range(3):
        result = tick(listing, state, lookback_seconds=100, max_new=2)
        got += keys(result)
        state = result.state
    assert got == [o.key for o in late]


def test_candidate_filter_is_counted_and_respected() -> None:
    listing = [obj("a.jpg", T0), obj("notes.txt", T0), obj("dir/", T0)]
    result = tick(listing, CursorState(), is_candidate=lambda k: k.endswith(".jpg"))
    assert keys(result) == ["a.jpg"]
    assert result.skipped_not_candidate == 2


def test_cursor_round_trips_and_stays_bounded_as_window_slides() -> None:
    state = CursorState()
    sizes = []
    for step in range(40):
        listing = [obj(f"s{step:03d}/{i:03d}.jpg", T0 + 60 * step) for i in range(50)]
        result = scan(iter(listing), state, lookback_seconds=600)
        assert len(result.new) == 50
        text = result.state.to_json()
        assert CursorState.from_json(text) == result.state
        state = result.state
        sizes.append(len(text))
    # 600 s of look-back at one 50-object step a minute: at most 11 steps remembered.
    assert len(state.window) <= 11 * 50
    assert max(sizes[20:]) <= max(sizes[:12]) + 100
    assert CursorState.from_json(None) == CursorState()
    with pytest.raises(ValueError, match="malformed"):
        CursorState.from_json('{"v": 2}')


def test_batches_keep_order_and_size() -> None:
    new = [obj(f"{i}", T0 + i) for i in range(10)]
    assert [[o.key for o in b] for b in batches(new, 4)] == [
        ["0", "1", "2", "3"],
        ["4", "5", "6", "7"],
        ["8", "9"],
    ]


@st.composite
def histories(draw: st.DrawFn) -> list[list[tuple[str, str, float]]]:
    """Ticks of (key, etag, LastModified) puts; each becomes visible up to 500 s after its time."""
    ticks = []
    now = T0
    for t in range(draw(st.integers(1, 8))):
        now += draw(st.sampled_from([0, 1, 30, 400]))
        puts = draw(
            st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 500)), max_size=6)
        )
        ticks.append([(k, f"e{t}-{i}", now - delay) for i, (k, delay) in enumerate(puts)])
    return ticks


@given(history=histories(), max_new=st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_random_histories_never_miss_and_never_repeat(
    history: list[list[tuple[str, str, float]]], max_new: int
) -> None:
    bucket: dict[str, ObjectInfo] = {}
    state = CursorState()
    yielded: list[tuple[str, str]] = []
    for puts in [*history, *[[]] * 30]:
        for key, etag, ts in puts:
            bucket[key] = obj(key, ts, etag)
        result = tick(list(bucket.values()), state, max_new=max_new, lookback_seconds=600)
        assert all(bucket[o.key].etag == o.etag for o in result.new)
        yielded += [(o.key, o.etag) for o in result.new]
        state = result.state
    assert len(yielded) == len(set(yielded))
    assert {(o.key, o.etag) for o in bucket.values()} <= set(yielded)


# --- against a real S3 server (tests/conftest.py: `s3` client, fresh `bucket`) ---


def test_list_objects_streams_2500_keys_over_three_pages(s3: Any, bucket: str) -> None:
    names = [f"raw/{i:05d}.jpg" for i in range(2500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), names))
    s3.put_object(Bucket=bucket, Key="other/z.jpg", Body=b"x")
    calls: list[str] = []

    def count(**_: Any) -> None:
        calls.append("LIST")

    s3.meta.events.register("before-call.s3.ListObjectsV2", count)
    try:
        listed = list(list_objects(s3, bucket, "raw/"))
    finally:
        s3.meta.events.unregister("before-call.s3.ListObjectsV2", count)
    assert [o.key for o in listed] == names
    assert len(calls) == 3
    assert all(len(o.etag) == 32 and '"' not in o.etag for o in listed)
    assert all(o.size == 1 and o.last_modified.tzinfo is not None for o in listed)

    first = scan(list_objects(s3, bucket, "raw/"), CursorState(), max_new=10_000)
    assert len(first.new) == 2500
    s3.put_object(Bucket=bucket, Key="raw/00007.jpg", Body=b"changed")
    s3.put_object(Bucket=bucket, Key="raw/00000-late.jpg", Body=b"x")
    second = scan(list_objects(s3, bucket, "raw/"), first.state)
    assert sorted(keys(second)) == ["raw/00000-late.jpg", "raw/00007.jpg"]
    assert scan(list_objects(s3, bucket, "raw/"), second.state).new == []
