"""Store test reports (logs, junit, screenshots) in the artifacts bucket and MLflow; verify both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pixelpipe.settings import Settings

REPORT_EXPERIMENT = "pixelpipe-test-reports"


def upload_reports(
    directory: Path, settings: Settings, experiment: str = REPORT_EXPERIMENT
) -> dict[str, Any]:
    """Upload every file under `directory`; raise if any did not land in S3 or MLflow."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pixelpipe.storage.client import client_from_settings

    files = sorted(p for p in directory.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no report files under {directory}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    prefix = f"test-reports/{stamp}"
    s3 = client_from_settings(settings)
    keys = []
    for path in files:
        key = f"{prefix}/{path.relative_to(directory).as_posix()}"
        s3.upload_file(str(path), settings.artifacts_bucket, key)
        keys.append(key)
    listed = s3.list_objects_v2(Bucket=settings.artifacts_bucket, Prefix=prefix + "/")
    landed = {obj["Key"] for obj in listed.get("Contents", [])}
    if missing := sorted(set(keys) - landed):
        raise RuntimeError(f"reports missing from s3://{settings.artifacts_bucket}: {missing}")

    client = MlflowClient(settings.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=f"tests-{stamp}", tags={"kind": "test-report"})
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client.log_artifacts(run.info.run_id, str(directory), artifact_path="reports")
    client.set_terminated(run.info.run_id, "FINISHED")
    logged = _artifact_files(client, run.info.run_id, "reports")
    # every file, screenshots/ and other folders included
    expected = {f"reports/{p.relative_to(directory).as_posix()}" for p in files}
    if missing_ml := sorted(expected - logged):
        raise RuntimeError(f"reports missing from MLflow run {run.info.run_id}: {missing_ml}")
    return {
        "s3_uri": f"s3://{settings.artifacts_bucket}/{prefix}/",
        "objects": len(keys),
        "mlflow_run_id": run.info.run_id,
        "mlflow_artifacts": sorted(logged),
    }


def _artifact_files(client: Any, run_id: str, path: str) -> set[str]:
    """Paths of every file logged under `path`, folders walked."""
    found: set[str] = set()
    for entry in client.list_artifacts(run_id, path):
        found |= _artifact_files(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found
