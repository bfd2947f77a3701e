"""`pixelpipe bench sensor`: the polling sensor's cost against a bare listing of the same prefix.

Per object count N (objects made once, concurrently, under `bench-sensor/n<N>/` in RAW_BUCKET
and reused by later runs): how long a drop of N objects takes to become batches (ticks back to
back, from an empty cursor), then the idle tick (nothing new, nothing pending) against a bare
ListObjectsV2 pagination with the same client (and with a stock boto3 client), dagster-aws'
`get_objects` of the same prefix, the bytes of the
cursor Dagster stores and of the window in the key-value store, the archive's size, and the
peak RSS of a process that runs one idle tick. Each timing is the median of `repeats`.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pixelpipe.bench.publish import write_csv
from pixelpipe.settings import Settings

PREFIX = "bench-sensor"
MARKER = "_complete"


def _prefix(count: int) -> str:
    return f"{PREFIX}/n{count}"


def ensure_objects(s3: Any, settings: Settings, count: int) -> float:
    """Create N tiny image-named objects once; seconds spent (0 when they were already there)."""
    import botocore.exceptions

    from pixelpipe.storage.transfer import upload_many

    marker = f"{_prefix(count)}/{MARKER}"
    try:
        s3.head_object(Bucket=settings.raw_bucket, Key=marker)
        return 0.0
    except botocore.exceptions.ClientError:
        pass
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "x.jpg"
        body.write_bytes(b"\xff\xd8 not decoded by the sensor")
        items = [(body, f"{_prefix(count)}/{i // 1000:04d}/{i:08d}.jpg") for i in range(count)]
        report = upload_many(lambda: s3, settings.raw_bucket, items, settings.s3_max_concurrency)
    if report.failures:
        raise RuntimeError(f"creating bench objects failed: {report.failures[:3]}")
    s3.put_object(Bucket=settings.raw_bucket, Key=marker, Body=b"")
    return time.perf_counter() - started


def _bare_list(s3: Any, bucket: str, prefix: str) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(len(p.get("Contents", [])) for p in pages)


def _stock_client(settings: Settings) -> Any:
    """A plain boto3 client (dateutil timestamps), as most sensors list with."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
        config=Config(s3={"addressing_style": "path"}),
    )


def _timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _clear_pending(s3: Any, settings: Settings, scope: str) -> int:
    """Remove the bench's pending markers: the runs that would have settled them are not run."""
    from pixelpipe.storage.listing import list_objects

    pending = list_objects(s3, settings.artifacts_bucket, f"batches/_pending/{scope}/")
    keys = [o.key for o in pending]
    for start in range(0, len(keys), 1000):
        chunk = [{"Key": k} for k in keys[start : start + 1000]]
        s3.delete_objects(Bucket=settings.artifacts_bucket, Delete={"Objects": chunk})
    return len(keys)


def _idle_tick_rss(settings_json: str, home: str, prefix: str) -> tuple[float, int]:
    """Child-process entry: one idle tick on the stored cursor; (seconds, peak RSS KiB)."""
    import dagster as dg

    from pixelpipe.sensors.raw_images import evaluate_tick
    from pixelpipe.storage.client import client_from_settings

    settings = Settings.model_validate_json(settings_json)
    instance = dg.DagsterInstance.from_config(home)
    s3 = client_from_settings(settings)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    evaluate_tick(instance, s3, settings, prefix, "ingest_job")
    seconds = time.perf_counter() - started
    return seconds, max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure(s3: Any, settings: Settings, count: int, repeats: int, work: Path) -> dict[str, Any]:
    """One row: the drop, the idle tick and its baselines, sizes and peak RSS for N objects."""
    import dagster as dg
    from dagster_aws.s3.sensor import get_objects

    from pixelpipe.sensors import batching
    from pixelpipe.sensors.raw_images import cursor_key, evaluate_tick

    created = ensure_objects(s3, settings, count)
    prefix = _prefix(count)
    home = work / f"dagster-{count}-{time.time_ns()}"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.from_config(str(home))
    scope = batching.scope_id(cursor_key(settings.raw_bucket, prefix))
    ticks, batched, started = 0, 0, time.perf_counter()
    while True:
        tick = evaluate_tick(instance, s3, settings, prefix, "ingest_job")
        ticks += 1
        batched += tick.new_objects
        if tick.new_objects == 0 and tick.complete:
            break
    drop_seconds = time.perf_counter() - started
    _clear_pending(s3, settings, scope)
    evaluate_tick(instance, s3, settings, prefix, "ingest_job")  # settle the window
    idle = []
    for _ in range(repeats):
        began = time.perf_counter()
        tick = evaluate_tick(instance, s3, settings, prefix, "ingest_job")
        idle.append(time.perf_counter() - began)
        assert tick.new_objects == 0 and not tick.run_requests, "an idle tick found work"
    listed = prefix + "/"
    bare = _timed(lambda: _bare_list(s3, settings.raw_bucket, listed), repeats)
    stock = _stock_client(settings)
    bare_stock = _timed(lambda: _bare_list(stock, settings.raw_bucket, listed), repeats)
    # dagster-aws as its sensors use it: a plain boto3 client
    dagster_aws = _timed(lambda: get_objects(settings.raw_bucket, listed, client=stock), repeats)
    key = cursor_key(settings.raw_bucket, prefix)
    window = instance.run_storage.get_cursor_values({key}).get(key) or ""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        child_s, rss_kib = pool.apply(
            _idle_tick_rss, (settings.model_dump_json(), str(home), prefix)
        )
    summary = json.loads(tick.cursor)
    idle_s = statistics.median(idle)
    return {
        "objects": count,
        "objects_batched": batched,
        "create_s": round(created, 2),
        "drop_to_batches_s": round(drop_seconds, 2),
        "drop_ticks": ticks,
        "idle_tick_s": round(idle_s, 3),
        "bare_list_s": round(bare, 3),
        "idle_over_bare": round(idle_s / bare, 3) if bare else 0.0,
        "bare_list_stock_boto3_s": round(bare_stock, 3),
        "dagster_aws_get_objects_s": round(dagster_aws, 3),
        "cursor_bytes": len(tick.cursor.encode()),
        "window_bytes": len(window.encode()),
        "window_objects": summary["window"],
        "archive_objects": summary["archive"],
        "idle_tick_child_s": round(child_s, 3),
        "peak_rss_mb": round(rss_kib / 1024, 1),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Idle tick vs bare listing vs get_objects (seconds) and cursor bytes, against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["objects"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("idle_tick_s", "idle tick (ours)"), ("bare_list_s", "bare ListObjectsV2"),
                       ("dagster_aws_get_objects_s", "dagster-aws get_objects")):  # fmt: skip
        left.plot(counts, [r[key] for r in rows], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="objects under the prefix", ylabel="seconds")
    left.legend()
    right.plot(counts, [r["cursor_bytes"] for r in rows], marker="o", label="Dagster cursor")
    right.plot(counts, [r["window_bytes"] for r in rows], marker="s", label="KV window")
    right.set(xscale="log", yscale="log", xlabel="objects under the prefix", ylabel="bytes")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(
    s3: Any, settings: Settings, counts: list[int], repeats: int, out: Path
) -> list[dict[str, Any]]:
    """Every row, written to out/sensor.csv and out/sensor.png."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [measure(s3, settings, n, repeats, out / "work") for n in counts]
    write_csv(out / "sensor.csv", rows)
    plot(rows, out / "sensor.png")
    return rows
