"""Store benchmark results: files under ARTIFACTS_BUCKET/perf/<bench>/<stamp>/ and an MLflow run."""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixelpipe.settings import Settings

PERF_EXPERIMENT = "pixelpipe-perf"


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi, "spread": (hi - lo) / med if med else 0.0}


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def publish(
    settings: Settings, bench: str, out_dir: Path, metrics: dict[str, float] | None = None
) -> dict[str, str]:
    """Upload every file in out_dir to S3 perf/ and log them (and metrics) to an MLflow run."""
    from mlflow.tracking import MlflowClient

    from pixelpipe.storage.client import client_from_settings

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    prefix = f"perf/{bench}/{stamp}"
    s3 = client_from_settings(settings)
    files = sorted(p for p in out_dir.iterdir() if p.is_file())
    for path in files:
        s3.upload_file(str(path), settings.artifacts_bucket, f"{prefix}/{path.name}")
    client = MlflowClient(settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(PERF_EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(PERF_EXPERIMENT)
    run = client.create_run(exp_id, run_name=f"{bench}-{stamp}", tags={"bench": bench})
    for name, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, name, float(value))
    for path in files:
        client.log_artifact(run.info.run_id, str(path), artifact_path="perf")
    client.set_terminated(run.info.run_id, "FINISHED")
    return {
        "s3_prefix": f"s3://{settings.artifacts_bucket}/{prefix}/",
        "mlflow_run_id": run.info.run_id,
    }
