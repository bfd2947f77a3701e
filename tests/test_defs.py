"""The whole Definitions loads, validates with the Dagster CLI, and has the expected shape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from pixelpipe.definitions import build_definitions
from pixelpipe.resources.settings import SettingsResource
from pixelpipe.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_definitions_load_with_assets_checks_jobs_and_sensors(settings: Settings) -> None:
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    partitions = {
        key.to_user_string(): getattr(graph.get(key).partitions_def, "name", None)
        for key in graph.get_all_asset_keys()
    }
    batch = "raw_image_batches"  # the dynamic partitions the sensor adds, one per batch
    assert partitions == {
        "raw_image_batches": batch,
        "augmented_images": batch,
        "normalized_images": batch,
        "raw_annotations": None,
        "coco_annotations": None,
        "trained_model": None,
        "batch_predictions": batch,
    }
    ingest = defs.resolve_job_def("ingest_job")
    assert isinstance(ingest.partitions_def, dg.DynamicPartitionsDefinition)
    assert ingest.partitions_def.name == batch
    assert {j.name for j in defs.jobs or []} == {"ingest_job", "annotations_job", "training_job"}
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert checks == {
        (asset, check)
        for asset in ("augmented_images", "normalized_images")
        for check in ("manifest_valid", "outputs_exist", "counts_add_up")
    }
    sensor = defs.get_sensor_def("raw_images_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "ingest_job"
    assert defs.get_sensor_def("annotations_sensor").job_name == "annotations_job"
    assert set(defs.resources or {}) == {"settings", "s3", "mlflow", "sqs", "staging_io_manager"}


def test_assets_get_the_settings_the_definitions_were_built_with(settings: Settings) -> None:
    custom = settings.model_copy(update={"jpeg_quality": 77, "raw_prefix": "elsewhere"})
    resource = build_definitions(custom).resources["settings"]
    assert isinstance(resource, SettingsResource)
    assert resource.get() == custom
    assert resource.get() is resource.get()  # parsed once


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
