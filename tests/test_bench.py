"""The benchmark commands run end to end on tiny inputs and store their CSV, plot and MLflow run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from pixelpipe.settings import Settings


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pixelpipe", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _published(settings: Settings, s3, stdout: str, names: set[str]) -> None:
    line = next(x for x in stdout.splitlines() if x.startswith("results: "))
    prefix = line.split()[1].removeprefix(f"s3://{settings.artifacts_bucket}/")
    run_id = line.split()[-1]
    keys = {
        o["Key"].rsplit("/", 1)[-1]
        for o in s3.list_objects_v2(Bucket=settings.artifacts_bucket, Prefix=prefix).get(
            "Contents", []
        )
    }
    assert names <= keys, keys
    logged = {
        a.path.rsplit("/", 1)[-1]
        for a in MlflowClient(settings.mlflow_tracking_uri).list_artifacts(run_id, "perf")
    }
    assert names <= logged, logged


def test_bench_stage1_tiny(settings: Settings, s3, tmp_path: Path) -> None:
    out = tmp_path / "stage1"
    proc = _cli(
        "stage1",
        "--images",
        "4",
        "--objects",
        "20",
        "--object-kb",
        "5",
        "--repeats",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per-worker ratio" in proc.stdout and "engine=s5cmd" in proc.stdout
    (summary,) = _rows(out / "stage1_summary.csv")
    assert float(summary["ours_images_s_median"]) > 0 and float(summary["per_worker_ratio"]) > 0
    engines = {r["engine"] for r in _rows(out / "transfer.csv")}
    assert engines == {"ours", "boto3_sequential", "s5cmd"}
    _published(settings, s3, proc.stdout, {"stage1.csv", "transfer.csv"})


def test_bench_stage2_tiny(settings: Settings, s3, tmp_path: Path) -> None:
    out = tmp_path / "stage2"
    proc = _cli("stage2", "--images", "4", "--variants", "1,3", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out / "stage2.csv")
    assert [r["variant_count"] for r in rows] == ["1", "3"]
    for row in rows:
        assert float(row["images_per_s_median"]) > 0 and float(row["upload_mb_s"]) > 0
        assert float(row["speedup_vs_naive"]) > 0
    assert (out / "stage2.png").stat().st_size > 1000
    _published(settings, s3, proc.stdout, {"stage2.csv", "stage2.png"})
