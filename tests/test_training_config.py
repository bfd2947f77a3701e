"""The training launcher refuses bad runs before anything starts, naming field, value and
expectation: unknown variant (listing the known ones), empty dataset, epochs/batch size < 1,
more processes than cores or GPUs, unreachable MLflow; and a sound config passes."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pixelpipe.settings import Settings
from pixelpipe.training.config import (
    LaunchError,
    TrainConfig,
    cuda_device_count,
    local_cpu_count,
    validate_launch,
)

pytestmark = pytest.mark.stack


def put_index(settings: Settings, s3: Any, variant: str, images: int) -> str:
    """A dataset index (no images behind it: validation reads only the index)."""
    bucket = settings.artifacts_bucket
    partitions = (
        [{"partition": "b-1", "coco_uri": f"s3://{bucket}/coco/{variant}/b-1.json", "images": 1}]
        if images
        else []
    )
    index = {
        "schema_version": 1,
        "variant": variant,
        "width": 64,
        "height": 64,
        "mode": "fit",
        "bucket": settings.normalized_bucket,
        "categories": [{"id": 1, "name": "circle"}],
        "partitions": partitions,
        "images": images,
        "annotations": images,
        "digest": secrets.token_hex(32),
    }
    key = f"datasets/{variant}/index.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(index).encode())
    return f"s3://{bucket}/{key}"


@pytest.fixture(scope="module")
def variants(settings: Settings, s3: Any) -> dict[str, str]:
    tag = secrets.token_hex(3)
    full, empty = f"cfg{tag}-full", f"cfg{tag}-empty"
    put_index(settings, s3, full, images=3)
    put_index(settings, s3, empty, images=0)
    return {"full": full, "empty": empty}


def rejection(config: TrainConfig, settings: Settings) -> str:
    with pytest.raises(LaunchError) as caught:
        validate_launch(config, settings)
    return str(caught.value)


def test_sound_config_passes(settings: Settings, variants: dict[str, str]) -> None:
    """A sound config starts; the same config one field off is refused for that field alone."""
    sound = TrainConfig(variant=variants["full"], device="cpu")
    assert validate_launch(sound, settings) is None
    message = rejection(sound.model_copy(update={"epochs": 0}), settings)
    assert message.splitlines()[1:] == ["  epochs=0: expected at least 1"]


def test_unknown_variant_lists_known_ones(settings: Settings, variants: dict[str, str]) -> None:
    message = rejection(TrainConfig(variant="no-such-variant", device="cpu"), settings)
    assert "variant='no-such-variant'" in message
    assert "known variants:" in message
    assert variants["full"] in message and variants["empty"] in message


def test_empty_dataset(settings: Settings, variants: dict[str, str]) -> None:
    message = rejection(TrainConfig(variant=variants["empty"], device="cpu"), settings)
    assert "dataset=" in message and "empty (0 images)" in message


def test_missing_explicit_dataset(settings: Settings, tmp_path: Path) -> None:
    missing = str(tmp_path / "index.json")
    message = rejection(TrainConfig(dataset=missing, device="cpu"), settings)
    assert f"dataset={missing!r}" in message and "cannot read" in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("epochs", 0, "epochs=0: expected at least 1"),
     ("batch_size", -4, "batch_size=-4: expected at least 1")],
)  # fmt: skip
def test_epochs_and_batch_size(
    settings: Settings, variants: dict[str, str], field: str, value: int, expected: str
) -> None:
    config = TrainConfig(variant=variants["full"], device="cpu", **{field: value})
    assert expected in rejection(config, settings)


def test_more_processes_than_cores(settings: Settings, variants: dict[str, str]) -> None:
    cores = local_cpu_count()
    config = TrainConfig(variant=variants["full"], device="cpu", nproc_per_node=cores + 1)
    message = rejection(config, settings)
    assert f"nproc_per_node={cores + 1}: expected at most {cores}" in message
    assert "CPU cores" in message


def test_more_processes_than_gpus(settings: Settings, variants: dict[str, str]) -> None:
    gpus = cuda_device_count()
    config = TrainConfig(variant=variants["full"], device="cuda", nproc_per_node=gpus + 1)
    message = rejection(config, settings)
    if gpus == 0:
        assert "device='cuda': no CUDA GPU is visible" in message
    else:
        assert f"nproc_per_node={gpus + 1}: expected at most {gpus}" in message


def test_unreachable_mlflow(settings: Settings, variants: dict[str, str]) -> None:
    offline = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    config = TrainConfig(variant=variants["full"], device="cpu")
    message = rejection(config, offline)
    assert "MLFLOW_TRACKING_URI='http://127.0.0.1:9': expected a reachable MLflow server" in message
    # without tracking there is nothing to reach
    validate_launch(config.model_copy(update={"track": False}), offline)


def test_every_problem_is_reported_at_once(settings: Settings) -> None:
    config = TrainConfig(variant="no-such-variant", device="cpu", epochs=0, batch_size=0)
    problems = rejection(config, settings).splitlines()[1:]
    assert len(problems) == 3


def test_config_fields_are_typed() -> None:
    with pytest.raises(ValidationError, match="model"):
        TrainConfig(model="resnet9000")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(epoch=3)  # type: ignore[call-arg]


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    config = TrainConfig(variant="small", model="tiny", nproc_per_node=2, max_images=50)
    assert TrainConfig.read(config.write(tmp_path / "c.json")) == config
