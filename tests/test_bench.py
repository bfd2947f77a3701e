"""The benchmark commands run end to end on tiny inputs and store their CSV, plot and MLflow run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from pixelpipe.bench.prepare import prepare
from pixelpipe.bench.training_plots import PLOTS
from pixelpipe.settings import Settings
from pixelpipe.training.dataset import Sample, cap_samples, split_samples


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


def _published(settings: Settings, s3, stdout: str, names: set[str]) -> str:
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
    return run_id


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


def _sample(i: int) -> Sample:
    return Sample(key=f"v/b-0/synth_{i:05d}.jpg", path="", raw_key=f"raw/{i}.jpg", labels=(0,))


def test_dataset_caps_are_nested_subsets() -> None:
    samples = [_sample(i) for i in range(400)]
    sizes = [10, 40, 160, 400]
    chosen = [{s.key for s in cap_samples(samples, n)} for n in sizes]
    assert [len(c) for c in chosen] == sizes
    assert all(small <= big for small, big in zip(chosen, chosen[1:], strict=False))
    # the split hashes each image alone, so the smaller training set is inside the larger one
    trains = [{s.key for s in split_samples(cap_samples(samples, n), 0.2)[0]} for n in sizes]
    assert all(small <= big for small, big in zip(trains, trains[1:], strict=False))


def test_bench_training_sweep_tiny(settings: Settings, s3, tmp_path: Path) -> None:
    out = tmp_path / "training"
    args = ("--instances", "1,2", "--epochs", "1", "--repeats", "1", "--loader", "torch")
    args += ("--num-workers", "0")  # spawned workers would double the start-up of each run
    proc = _cli("training", "--images", "16,32", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    rows = _rows(out / "training.csv")
    assert [(r["images"], r["instances"]) for r in rows] == [
        ("16", "1"), ("16", "2"), ("32", "1"), ("32", "2")
    ]  # fmt: skip
    for row in rows:
        assert row["scaling"] == "strong" and row["loader"] == "torch", row
        for key in ("epoch_s_median", "images_per_s_median", "loader_images_per_s_median"):
            assert float(row[key]) > 0, (key, row)
        assert 0 <= float(row["data_wait_fraction_median"]) <= 1
        assert float(row["scaling_efficiency"]) > 0
    trained = {r["images"]: int(r["train_images"]) for r in rows if r["instances"] == "1"}
    assert 0 < trained["16"] < trained["32"] <= 32
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["images"] == 32 and dataset["variant"].startswith("pt1-")
    growth = _rows(out / "growth.csv")
    assert {g["instances"] for g in growth} == {"1", "2"}
    assert all(float(g["epoch_growth_per_doubling"]) > 0 for g in growth)
    assert "per doubling of the dataset" in proc.stdout
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000, name
    names = {"training.csv", "growth.csv", "dataset.json", *PLOTS}
    run_id = _published(settings, s3, proc.stdout, names)
    metrics = MlflowClient(settings.mlflow_tracking_uri).get_run(run_id).data.metrics
    for row in rows:
        assert f"strong.{row['images']}img.{row['instances']}inst.torch.epoch_s_median" in metrics

    # the same parameters again: the prepared set is reused, the pipeline does not run
    again = prepare(settings, 32, echo=lambda _: None)
    assert again.reused and again.variant == dataset["variant"]
