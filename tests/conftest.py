"""Session fixtures: a real S3 + MLflow stack (started here, or the one the env points at)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pixelpipe import settings as settings_mod  # noqa: E402
from pixelpipe.settings import Settings, load_settings  # noqa: E402


@dataclass
class Stack:
    """Where the test stack listens."""

    s3_endpoint: str
    access_key: str
    secret_key: str
    mlflow_uri: str
    region: str = "us-east-1"

    def client(self, secret_key: str | None = None) -> Any:
        from pixelpipe.resources.s3 import make_client

        return make_client(
            self.s3_endpoint, self.access_key, secret_key or self.secret_key, self.region
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PIXELPIPE_EXTERNAL_STACK=1 uses the stack in the environment; otherwise start one."""
    if os.environ.get("PIXELPIPE_EXTERNAL_STACK") == "1":
        env = load_settings()
        yield Stack(
            s3_endpoint=env.s3_endpoint_url or "",
            access_key=env.aws_access_key_id or "",
            secret_key=env.aws_secret_access_key or "",
            mlflow_uri=env.mlflow_tracking_uri,
            region=env.aws_region,
        )
        return
    from pixelpipe.devstack.stack import DevStack

    dev = DevStack(tmp_path_factory.mktemp("devstack"), Settings())
    info = dev.up()
    try:
        yield Stack(info.s3_endpoint, info.access_key, info.secret_key, info.mlflow_uri)
    finally:
        dev.down()


@pytest.fixture(scope="session")
def settings(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for this test session: the stack, buckets of its own, temp NVMe and DAGSTER_HOME."""
    from pixelpipe.devstack.stack import ensure_buckets

    tag = secrets.token_hex(3)
    root = tmp_path_factory.mktemp("pixelpipe")
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        "S3_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_REGION": stack.region,
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "MLFLOW_TRACKING_URI": stack.mlflow_uri,
        "RAW_BUCKET": f"t{tag}-raw",
        "AUGMENTED_BUCKET": f"t{tag}-augmented",
        "NORMALIZED_BUCKET": f"t{tag}-normalized",
        "MLFLOW_EXPERIMENT": f"tests-{tag}",
        "REGISTERED_MODEL_NAME": f"tests-{tag}-detector",
        "NVME_ROOT": str(root / "nvme"),
        "DAGSTER_HOME": str(root / "dagster"),
        "INGEST_BATCH_SIZE": "16",
        "AUGMENT_COPIES": "2",
        "WORKERS": "2",
    }
    # ARTIFACTS_BUCKET stays the stack's: its MLflow server proxies artifacts into that bucket
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings_mod.get_settings.cache_clear()
    current = load_settings()
    ensure_buckets(
        stack.client(),
        [
            current.raw_bucket,
            current.augmented_bucket,
            current.normalized_bucket,
            current.artifacts_bucket,
        ],
    )
    try:
        yield current
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        settings_mod.get_settings.cache_clear()


@pytest.fixture(scope="session")
def s3(stack: Stack) -> Any:
    """A boto3 client on the stack's S3."""
    return stack.client()


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket of this test's own."""
    name = f"t{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault table (tests/test_faults.py) at the end of the run, as CI shows it."""
    from fault_tools import TABLE

    if not TABLE.exists():
        return
    import csv

    rows = list(csv.DictReader(TABLE.open()))
    if not rows:
        return
    terminalreporter.section("faults caused and what they left behind (reports/faults.csv)")
    columns = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    terminalreporter.write_line(line)
    for row in rows:
        cells = (row[c].ljust(w) for c, w in zip(columns, widths, strict=True))
        terminalreporter.write_line("  ".join(cells))


def pytest_sessionstart(session: Any) -> None:
    """Each run writes its own fault table."""
    from fault_tools import TABLE

    TABLE.unlink(missing_ok=True)
