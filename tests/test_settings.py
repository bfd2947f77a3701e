"""Settings: every bad value stops start-up with the variable, the value and what was expected."""

from __future__ import annotations

import pytest

from pixelpipe.imaging.variants import Variant, parse_sizes
from pixelpipe.settings import SettingsError, load_settings


def _error(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("NORMALIZE_SIZES", "small:22x", "expected NAME:WIDTHxHEIGHT[:MODE]"),
        ("NORMALIZE_SIZES", "a:10x10:zoom", "expected one of fit, letterbox, stretch"),
        ("NORMALIZE_SIZES", "a:0x10", "between 1 and"),
        ("NORMALIZE_SIZES", "a:10x10,a:20x20", "appears twice"),
        ("NORMALIZE_SIZES", " , ", "at least one variant"),
        ("INGEST_BATCH_SIZE", "lots", "valid integer"),
        ("INGEST_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("INGEST_MODE", "push", "'poll' or 'sqs'"),
        ("IMAGE_BACKEND", "gpu", "'auto', 'cpu' or 'dali'"),
        ("JPEG_QUALITY", "101", "less than or equal to 100"),
        ("AUGMENT_COPIES", "-1", "greater than or equal to 1"),
        ("NVME_KEEP", "maybe", "valid boolean"),
        ("RAW_BUCKET", "Bad_Bucket", "an S3 bucket name"),
        ("RAW_PREFIX", "../escape", "without '..'"),
        ("S3_ENDPOINT_URL", "localhost:9000", "expected a URL"),
        ("AUGMENT_SPEC", "{not json", "expected inline JSON"),
        ("AUGMENT_SPEC", "/no/such/spec.yaml", "existing JSON/YAML file"),
    ],
)
def test_bad_value_names_variable_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    message = _error(monkeypatch, name, value)
    assert f"{name}={value!r}" in message
    assert expected in message


def test_several_bad_values_are_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JPEG_QUALITY", "0")
    monkeypatch.setenv("INGEST_MODE", "push")
    message = str(pytest.raises(SettingsError, load_settings).value)
    assert "JPEG_QUALITY='0'" in message and "INGEST_MODE='push'" in message


def test_defaults_and_parsed_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "NORMALIZE_SIZES", "small:224x224, medium:384x256:letterbox,big:640x480:stretch"
    )
    monkeypatch.setenv("RAW_PREFIX", "incoming/")
    settings = load_settings()
    assert settings.variants == [
        Variant("small", 224, 224, "fit"),
        Variant("medium", 384, 256, "letterbox"),
        Variant("big", 640, 480, "stretch"),
    ]
    assert settings.raw_prefix == "incoming"
    assert settings.worker_count >= 1


def test_parse_sizes_round_trips_spec() -> None:
    variants = parse_sizes("a:1x2:stretch,b:3x4")
    assert [v.spec() for v in variants] == ["a:1x2:stretch", "b:3x4:fit"]


def test_sqs_mode_needs_a_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_MODE", "sqs")
    message = str(pytest.raises(SettingsError, load_settings).value)
    assert "INGEST_MODE='sqs' needs SQS_QUEUE_URL" in message
    monkeypatch.setenv("SQS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/raw-events")
    assert load_settings().sqs_queue_url.endswith("raw-events")
