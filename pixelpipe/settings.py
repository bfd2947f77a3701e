"""Every environment variable pixelpipe reads, parsed and validated once."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pixelpipe.imaging.variants import SIZES_FORMAT, Variant, parse_sizes

BUCKET_HINT = "an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-'"


class SettingsError(ValueError):
    """A configuration value is wrong; the message names variable, value and expectation."""


def _check_bucket(value: str) -> str:
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError(f"expected {BUCKET_HINT}")
    return value


def _check_prefix(value: str) -> str:
    if value.startswith("/") or "\\" in value or any(p == ".." for p in value.split("/")):
        raise ValueError("expected a relative S3 prefix without '..', '\\' or a leading '/'")
    return value.strip("/")


class Settings(BaseSettings):
    """pixelpipe configuration; field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # S3
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint; empty for AWS S3")
    aws_access_key_id: str | None = Field(None, description="S3 access key")
    aws_secret_access_key: str | None = Field(None, description="S3 secret key")
    aws_region: str = Field("us-east-1", description="S3 region")
    s3_max_attempts: int = Field(5, ge=1, le=20, description="S3 retry attempts per request")
    s3_max_concurrency: int = Field(32, ge=1, le=256, description="parallel S3 transfers")
    raw_bucket: str = Field("pixelpipe-raw", description="where users drop raw images")
    augmented_bucket: str = Field("pixelpipe-augmented", description="stage 1 output")
    normalized_bucket: str = Field("pixelpipe-normalized", description="stage 2 output")
    artifacts_bucket: str = Field("pixelpipe-artifacts", description="batches, reports, MLflow")
    raw_prefix: str = Field("incoming", description="prefix the sensor watches")
    annotations_prefix: str = Field("annotations", description="Label Studio exports")
    # ingest
    ingest_batch_size: int = Field(64, ge=1, le=100_000, description="keys per batch partition")
    ingest_mode: Literal["poll", "sqs"] = Field("poll", description="poll | sqs")
    sqs_queue_url: str | None = Field(
        None, description="queue of the raw bucket's S3 event notifications (INGEST_MODE=sqs)"
    )
    sqs_endpoint_url: str | None = Field(None, description="SQS endpoint; empty for AWS")
    sensor_interval_seconds: int = Field(30, ge=1, le=86400, description="sensor tick interval")
    sensor_tick_budget_seconds: float = Field(
        40.0, gt=0, le=3600, description="listing time per tick (below Dagster's 60 s timeout)"
    )
    s3_conditional_writes: Literal["auto", "on", "off"] = Field(
        "auto", description="If-None-Match manifest writes: auto probes the server"
    )
    ingest_lookback_seconds: int = Field(
        3600, ge=0, le=7 * 86400, description="how late an object may become visible"
    )
    run_retries: int = Field(
        3, ge=0, le=20, description="retries of a failed batch run before it is reported failed"
    )
    # staging
    nvme_root: Path = Field(Path(".pixelpipe/nvme"), description="local staging root")
    nvme_keep: bool = Field(False, description="keep staged files after the run")
    # stage 1
    augment_spec: str | None = Field(None, description="JSON/YAML file or inline JSON")
    augment_copies: int = Field(2, ge=1, le=64, description="augmented outputs per input")
    # stage 2
    normalize_sizes: str = Field(
        "small:224x224,medium:384x384:letterbox,large:640x640",
        description=SIZES_FORMAT,
    )
    image_backend: Literal["auto", "cpu", "dali"] = Field("auto", description="auto | cpu | dali")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of outputs")
    workers: int = Field(0, ge=0, le=256, description="process pool size; 0 = one per core")
    # MLflow
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow server")
    mlflow_experiment: str = Field("pixelpipe", min_length=1, description="experiment name")
    registered_model_name: str = Field("pixelpipe-detector", min_length=1)
    # serving
    serve_max_batch: int = Field(16, ge=1, le=4096, description="micro-batch size limit")
    serve_max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="micro-batch wait, ms")
    serve_max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="request size limit")
    serve_max_pixels: int = Field(50_000_000, ge=1, description="decoded pixels per image limit")
    serve_torch_threads: int = Field(0, ge=0, le=256, description="0 = a quarter of the cores")
    serve_model_cache: Path | None = Field(None, description="model download cache")
    # Dagster
    dagster_home: Path | None = Field(None, description="Dagster instance directory")

    @field_validator("raw_bucket", "augmented_bucket", "normalized_bucket", "artifacts_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return _check_bucket(value)

    @field_validator("raw_prefix", "annotations_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _check_prefix(value)

    @field_validator("s3_endpoint_url", "mlflow_tracking_uri", "sqs_endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")) and "://" not in value:
            raise ValueError("expected a URL such as http://127.0.0.1:8333")
        return value.rstrip("/")

    @field_validator("normalize_sizes")
    @classmethod
    def _sizes(cls, value: str) -> str:
        parse_sizes(value)
        return value

    @field_validator("augment_spec")
    @classmethod
    def _spec(cls, value: str | None) -> str | None:
        if not value:
            return None
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected inline JSON or a file path ({exc.msg})") from exc
        elif not Path(text).is_file():
            raise ValueError("expected inline JSON or the path of an existing JSON/YAML file")
        return text

    @model_validator(mode="after")
    def _sqs_needs_queue(self) -> Settings:
        if self.ingest_mode == "sqs" and not self.sqs_queue_url:
            raise ValueError("INGEST_MODE='sqs' needs SQS_QUEUE_URL (the S3 event queue's URL)")
        return self

    @property
    def variants(self) -> list[Variant]:
        return parse_sizes(self.normalize_sizes)

    @property
    def worker_count(self) -> int:
        import os

        return self.workers or max(1, len(os.sched_getaffinity(0)))


def format_error(exc: ValidationError) -> str:
    """One line per bad variable: NAME='value': expected ..."""
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule across variables names them in its message
            lines.append(msg)
            continue
        value: Any = err.get("input")
        lines.append(f"{str(err['loc'][0]).upper()}={value!r}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus overrides); raise SettingsError naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(format_error(exc)) from None


@functools.cache
def get_settings() -> Settings:
    """Settings for this process, read once."""
    return load_settings()
