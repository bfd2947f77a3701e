"""The whole Definitions loads, validates with the Dagster CLI, and has the expected shape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from pixelpipe.definitions import build_definitions
from pixelpipe.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_definitions_load_with_assets_checks_jobs_and_sensors(settings: Settings) -> None:
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"raw_image_batches", "augmented_images", "normalized_images"} <= keys
    job = defs.resolve_job_def("ingest_job")
    assert job.partitions_def is not None
    checks = {key.name for key in graph.asset_check_keys}
    assert {"manifest_valid", "outputs_exist", "counts_add_up"} <= checks
    sensor = defs.get_sensor_def("raw_images_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert {"s3", "mlflow", "staging_io_manager"} <= set(defs.resources)


def test_dagster_cli_validates_workspace(settings: Settings) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home)}
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_bad_setting_stops_definitions_load(settings: Settings) -> None:
    env = {**os.environ, "NORMALIZE_SIZES": "small:22x"}
    proc = subprocess.run(
        [sys.executable, "-c", "import pixelpipe.definitions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "NORMALIZE_SIZES='small:22x'" in proc.stderr
    assert "expected NAME:WIDTHxHEIGHT[:MODE]" in proc.stderr
