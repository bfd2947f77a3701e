"""Sensor-driven automatic runs: dagster-daemon picks up new objects and completes the batch run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from pipeline_helpers import unique_prefix, upload_sample

from pixelpipe.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 240


def test_daemon_runs_the_sensor_and_completes_a_batch(settings: Settings, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Create the instance's storage before the daemon and its code server start together:
    # two processes migrating a fresh sqlite store at once can leave it with two heads.
    instance = dg.DagsterInstance.from_config(str(home))
    instance.get_runs_count()
    prefix = unique_prefix(settings, "daemon")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RAW_PREFIX": prefix,
        "SENSOR_INTERVAL_SECONDS": "2",
        "NVME_ROOT": str(tmp_path / "nvme"),
    }
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        upload_sample(settings, tmp_path, prefix, count=2)
        deadline = time.monotonic() + DEADLINE_SECONDS
        status = None
        while time.monotonic() < deadline and daemon.poll() is None:
            records = instance.get_run_records(dg.RunsFilter(job_name="ingest_job"), limit=5)
            if records:
                status = records[0].dagster_run.status
                if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
                    break
            time.sleep(2)
        log = (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
        assert status == dg.DagsterRunStatus.SUCCESS, f"run status {status}; daemon log:\n{log}"
        run = records[0].dagster_run
        assert run.tags.get("dagster/sensor_name") == "raw_images_sensor"
        assert run.tags.get("pixelpipe/batch") == run.tags.get("dagster/partition")
        for asset in ("augmented_images", "normalized_images"):
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None and event.run_id == run.run_id
            assert event.asset_materialization.partition == run.tags["dagster/partition"]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
