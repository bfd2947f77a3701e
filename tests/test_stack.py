"""The embedded stack is real: S3 with auth and pagination, MLflow with S3 artifacts, a registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest
from conftest import Stack

from pixelpipe.settings import Settings


def test_s3_put_get_and_paginated_list(s3, bucket: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"p/{i:05d}.txt" for i in range(1203)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    assert s3.get_object(Bucket=bucket, Key=keys[7])["Body"].read() == keys[7].encode()
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="p/"))
    listed = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    assert len(pages) == 2
    assert listed == keys  # byte order, nothing lost or repeated across pages


def test_wrong_secret_key_is_rejected(stack: Stack, bucket: str) -> None:
    bad = stack.client(secret_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        bad.list_objects_v2(Bucket=bucket)
    assert info.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied"}


def test_conditional_put_refuses_second_write(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="m.json", Body=b"1", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=bucket, Key="m.json", Body=b"2", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="m.json")["Body"].read() == b"1"


def test_mlflow_round_trip_lands_artifacts_in_s3(settings: Settings, s3, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri)
    exp_id = client.create_experiment(f"{settings.mlflow_experiment}-roundtrip")
    run = client.create_run(exp_id)
    client.log_param(run.info.run_id, "lr", "0.01")
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    note = tmp_path / "note.txt"
    note.write_text("hello")
    client.log_artifact(run.info.run_id, str(note), artifact_path="docs")
    client.set_terminated(run.info.run_id, "FINISHED")

    fetched = client.get_run(run.info.run_id)
    assert fetched.data.params == {"lr": "0.01"}
    assert fetched.data.metrics == {"loss": 0.5}
    assert fetched.info.status == "FINISHED"
    listed = s3.list_objects_v2(Bucket=settings.artifacts_bucket, Prefix="mlflow/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/docs/note.txt") for k in keys), keys

    name = f"{settings.registered_model_name}-roundtrip"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/docs", run.info.run_id)
    client.set_registered_model_alias(name, "candidate", version.version)
    assert client.get_model_version_by_alias(name, "candidate").version == version.version


def test_devstack_cli_lifecycle(tmp_path: Path) -> None:
    """up twice is harmless, env exports everything, down stops by PID, data survives."""
    run = [sys.executable, "-m", "pixelpipe", "devstack"]
    home = tmp_path / "stack"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run, *args, "--dir", str(home)], capture_output=True, text=True)

    up = cli("up")
    assert up.returncode == 0, up.stderr
    try:
        assert cli("up").returncode == 0
        env = dict(
            line.removeprefix("export ").split("=", 1) for line in cli("env").stdout.splitlines()
        )
        for name in (
            "S3_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_TRACKING_URI",
            "DAGSTER_HOME",
            "RAW_BUCKET",
            "ARTIFACTS_BUCKET",
        ):
            assert env.get(name), name
        stack = Stack(
            env["S3_ENDPOINT_URL"],
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
            env["MLFLOW_TRACKING_URI"],
        )
        stack.client().put_object(Bucket=env["RAW_BUCKET"], Key="keep.txt", Body=b"kept")
        status = cli("status")
        assert status.returncode == 0 and '"running": true' in status.stdout

        down = cli("down")
        assert down.returncode == 0 and "stopped" in down.stdout
        assert cli("status").returncode == 1
        assert cli("up").returncode == 0
        env = dict(
            line.removeprefix("export ").split("=", 1) for line in cli("env").stdout.splitlines()
        )
        again = Stack(
            env["S3_ENDPOINT_URL"],
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
            env["MLFLOW_TRACKING_URI"],
        )
        body = again.client().get_object(Bucket=env["RAW_BUCKET"], Key="keep.txt")["Body"].read()
        assert body == b"kept"
    finally:
        cli("down")
