"""Fault injection for Stage 3: the MLflow server is SIGKILLed while `trained_model` trains.

The Dagster run must fail with a message that names the server and what it was doing, register
nothing, and the retry (once the server is back) must finish and register one version. The
server is a real `mlflow server` of a stack of this module's own, really killed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from fault_tools import kill_process_group, record
from mlflow.tracking import MlflowClient
from training_helpers import publish_scenes

from pixelpipe import settings as settings_mod
from pixelpipe.definitions import build_definitions
from pixelpipe.devstack.stack import DAGSTER_YAML, DevStack
from pixelpipe.pipeline import QUIET, instance_for
from pixelpipe.settings import Settings, load_settings

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def mlstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    dev = DevStack(tmp_path_factory.mktemp("mlflow-fault"), load_settings())
    dev.up()
    try:
        yield dev
    finally:
        dev.down()


@pytest.fixture
def menv(
    mlstack: DevStack, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The session's S3 and buckets, this module's MLflow server, an instance of its own."""
    info = mlstack.info()
    assert info is not None
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    dg.DagsterInstance.from_config(str(home)).get_runs_count()  # create storage once
    monkeypatch.setenv("MLFLOW_TRACKING_URI", info.mlflow_uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", info.s3_endpoint)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # the client's own retries would otherwise wait minutes for a server that is gone
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    settings_mod.get_settings.cache_clear()
    yield load_settings()
    settings_mod.get_settings.cache_clear()


def _kill_after_first_epoch(uri: str, experiment: str, pid: int) -> threading.Event:
    """SIGKILL the MLflow server once a run of `experiment` has logged its first epoch."""
    killed = threading.Event()

    def watch() -> None:
        client = MlflowClient(uri)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                found = client.get_experiment_by_name(experiment)
                runs = client.search_runs([found.experiment_id]) if found else []
            except Exception:  # the server is still starting a request; try again
                runs = []
            if any("train_loss" in r.data.metrics for r in runs):
                kill_process_group(pid)
                killed.set()
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def _train(settings: Settings, variant: str) -> Any:
    job = build_definitions(settings).resolve_job_def("training_job")
    config = {"variant": variant, "model": "tiny", "epochs": 8, "batch_size": 8,
              "num_workers": 0, "device": "cpu", "loader": "torch"}  # fmt: skip
    return job.execute_in_process(
        run_config={**QUIET, "ops": {"trained_model": {"config": config}}},
        instance=instance_for(settings),
        raise_on_error=False,
    )


def test_mlflow_killed_during_training_fails_the_run_clearly_and_the_retry_registers_once(
    mlstack: DevStack, menv: Settings, s3: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    data = publish_scenes(menv, s3, tmp_path / "gen", 16, 64, seed=5, mode="letterbox")
    info = mlstack.info()
    assert info is not None
    killed = _kill_after_first_epoch(info.mlflow_uri, menv.mlflow_experiment, info.mlflow_pid)
    failed = _train(menv, data.variant)
    assert killed.is_set() and not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert f"MLflow at MLFLOW_TRACKING_URI='{info.mlflow_uri}' failed while" in message, message
    assert "Nothing was registered" in message, message

    restarted = mlstack.up()
    assert restarted.mlflow_uri == info.mlflow_uri, "the restarted server keeps its port"
    client = MlflowClient(restarted.mlflow_uri, restarted.mlflow_uri)
    name = menv.registered_model_name
    before = client.search_model_versions(f"name='{name}'")
    retried = _train(menv, data.variant)
    assert retried.success
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == len(before) + 1
    meta = retried.get_asset_materialization_events()[0].materialization.metadata
    new = client.get_model_version_by_alias(name, "candidate")
    assert new.version == meta["model_version"].value
    run = client.get_run(new.run_id)
    assert run.info.status == "FINISHED"
    record("MLflow SIGKILLed during training", 2, {"raw_images": len(data.images),
           "expected_outputs": 1, "outputs": len(versions) - len(before), "lost": 0,
           "duplicated": 0, "mismatched": 0, "false_failures": 0},
           time.monotonic() - started)  # fmt: skip
