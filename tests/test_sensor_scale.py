"""The polling sensor at scale, on the real S3 server and a real Dagster instance: the cursor
Dagster stores stays small whatever the prefix holds, a tick cut by its time budget resumes
without a miss or a repeat, objects that become visible late are found and counted, and
overlapping ticks never lose a batch."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import pytest

from pixelpipe import manifests as mf
from pixelpipe.pipeline import INGEST_JOB
from pixelpipe.sensors.raw_images import cursor_key, evaluate_tick
from pixelpipe.settings import Settings

MAX_CURSOR_BYTES = 64 * 1024


def _put(s3: Any, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))


@pytest.fixture
def scoped(settings: Settings, s3: Any, bucket: str) -> Settings:
    """Settings whose raw bucket is fresh; batches of 500 objects."""
    return settings.model_copy(update={"raw_bucket": bucket, "ingest_batch_size": 500})


def _batched(s3: Any, settings: Settings, partitions: list[str]) -> list[str]:
    keys: list[str] = []
    for partition in partitions:
        listing = mf.read_json(s3, f"s3://{settings.artifacts_bucket}/batches/{partition}.json")
        keys += [o["key"] for o in listing["objects"]]
    return keys


def test_cursor_stays_small_with_thousands_of_objects_in_the_window(
    scoped: Settings, s3: Any
) -> None:
    keys = [f"big/{i:05d}-{'x' * 60}.jpg" for i in range(3000)]
    _put(s3, scoped.raw_bucket, keys)
    instance = dg.DagsterInstance.ephemeral()
    tick = evaluate_tick(instance, s3, scoped, "big", INGEST_JOB)
    assert tick.new_objects == 3000 and len(tick.run_requests) == 6
    assert len(tick.cursor.encode()) < 1024  # what Dagster stores in every tick row
    stored = instance.run_storage.get_cursor_values({cursor_key(scoped.raw_bucket, "big")})
    # the look-back window itself lives in the key-value store: 16 bytes an object (base64)
    assert 3000 * 16 < len(next(iter(stored.values()))) < 3000 * 32
    summary = json.loads(tick.cursor)
    assert summary["window"] == 3000 and summary["pending"] == 6


def test_a_tick_out_of_time_resumes_after_its_last_key_without_a_miss_or_a_repeat(
    scoped: Settings, s3: Any
) -> None:
    keys = [f"slow/{i:05d}.jpg" for i in range(2500)]
    _put(s3, scoped.raw_bucket, keys)
    budget = scoped.model_copy(update={"sensor_tick_budget_seconds": 0.001})
    instance = dg.DagsterInstance.ephemeral()
    seen: list[str] = []
    ticks = []
    for _ in range(4):
        tick = evaluate_tick(instance, s3, budget, "slow", INGEST_JOB)
        ticks.append(tick)
        seen += _batched(s3, scoped, tick.new_partitions)
    # one page (1,000 keys) per tick: runs start from the first tick, the pass ends on the third
    assert [t.listed for t in ticks] == [1000, 1000, 500, 1000]
    assert [t.complete for t in ticks] == [False, False, True, False]
    assert len(ticks[0].run_requests) == 2
    assert sorted(seen) == keys


def test_objects_visible_after_the_look_back_window_are_found_and_counted(
    scoped: Settings, s3: Any
) -> None:
    """An object whose LastModified is already below the floor when it first shows up (a slow
    multipart upload on S3, an object from a node whose clock lags). SeaweedFS stamps its own
    time, so the test raises the stored floor past the new object's LastModified instead,
    exactly the state such an object meets."""
    _put(s3, scoped.raw_bucket, [f"late/a{i}.jpg" for i in range(5)])
    instance = dg.DagsterInstance.ephemeral()
    evaluate_tick(instance, s3, scoped, "late", INGEST_JOB)
    _put(s3, scoped.raw_bucket, ["late/zz-late.jpg"])
    state_key = cursor_key(scoped.raw_bucket, "late")
    stored = json.loads(instance.run_storage.get_cursor_values({state_key})[state_key])
    scan = json.loads(stored["scan"])
    head = s3.head_object(Bucket=scoped.raw_bucket, Key="late/zz-late.jpg")
    scan["floor"] = scan["hw"] = head["LastModified"].timestamp() + 60
    instance.run_storage.set_cursor_values({state_key: json.dumps({"scan": json.dumps(scan)})})
    lines: list[str] = []
    tick = evaluate_tick(instance, s3, scoped, "late", INGEST_JOB, echo=lines.append)
    assert _batched(s3, scoped, tick.new_partitions) == ["late/zz-late.jpg"]
    assert tick.late == 1 and json.loads(tick.cursor)["late"] == 1
    assert any("older than the look-back floor" in line and "zz-late" in line for line in lines)
    # everything below the floor is in the archive now: nothing comes twice
    assert evaluate_tick(instance, s3, scoped, "late", INGEST_JOB).new_objects == 0


def test_overlapping_ticks_never_lose_a_batch(scoped: Settings, s3: Any) -> None:
    """Two ticks at once (the daemon's and `pixelpipe poll`): each batch they store stays
    pending until a run of it succeeded, whichever tick wrote its state last."""
    _put(s3, scoped.raw_bucket, [f"both/{i:04d}.jpg" for i in range(1200)])
    instance = dg.DagsterInstance.ephemeral()
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def one_tick() -> None:
        barrier.wait()
        results.append(evaluate_tick(instance, s3, scoped, "both", INGEST_JOB))

    threads = [threading.Thread(target=one_tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = {p for r in results for p in r.new_partitions}
    after = evaluate_tick(instance, s3, scoped, "both", INGEST_JOB)
    assert {r.partition_key for r in after.run_requests} == stored
    assert sorted(set(_batched(s3, scoped, sorted(stored)))) == [
        f"both/{i:04d}.jpg" for i in range(1200)
    ]


def test_batches_pending_in_a_state_from_before_the_markers_still_get_their_runs(
    scoped: Settings, s3: Any
) -> None:
    """Upgrading: a cursor that kept pending batches in a list hands them to the markers."""
    instance = dg.DagsterInstance.ephemeral()
    key = cursor_key(scoped.raw_bucket, "upgrade")
    old = {"scan": json.dumps({"v": 1, "hw": None, "floor": None, "seen": {}}),
           "pending": ["b-20260101T000000-0123456789"], "failed": []}  # fmt: skip
    instance.run_storage.set_cursor_values({key: json.dumps(old)})
    tick = evaluate_tick(instance, s3, scoped, "upgrade", INGEST_JOB)
    assert [r.partition_key for r in tick.run_requests] == ["b-20260101T000000-0123456789"]
    assert "pending" not in json.loads(instance.run_storage.get_cursor_values({key})[key])
