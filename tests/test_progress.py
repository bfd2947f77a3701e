"""Progress on the long CLI steps: datagen reports every image it writes without changing a byte
of its output, and `pixelpipe datagen` / `pixelpipe upload` finish with their bars full."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixelpipe.cli import app
from pixelpipe.datagen import generate
from pixelpipe.settings import Settings

SMALL = [(96, 64), (64, 96)]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_datagen_reports_each_image_and_writes_the_same_bytes(tmp_path: Path, workers: int) -> None:
    seen: list[int] = []
    generate(tmp_path / "quiet", 5, seed=4, sizes=SMALL)
    generate(tmp_path / "loud", 5, seed=4, sizes=SMALL, workers=workers, progress=seen.append)
    assert seen == [1] * 5
    assert _tree(tmp_path / "quiet") == _tree(tmp_path / "loud")


def test_datagen_cli_finishes_its_bar(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["datagen", "--out", str(tmp_path), "--count", "3"])
    assert result.exit_code == 0, result.output
    assert "rendering 3 images" in result.output and "100%" in result.output
    assert "wrote 3 images" in result.output


@pytest.mark.stack
def test_upload_cli_counts_objects_and_bytes(settings: Settings, s3, tmp_path: Path) -> None:
    summary = generate(tmp_path / "data", 3, seed=2, sizes=SMALL)
    # images only: an export here would join every other test's raw_annotations
    (tmp_path / "up" / "images").mkdir(parents=True)
    for path in summary.image_paths:
        (tmp_path / "up" / "images" / path.name).write_bytes(path.read_bytes())
    prefix = f"incoming/progress-{secrets.token_hex(3)}"
    result = CliRunner().invoke(app, ["upload", str(tmp_path / "up"), "--prefix", prefix])
    assert result.exit_code == 0, result.output
    assert "3/3 objects" in result.output and "uploaded 3 objects" in result.output
    listed = s3.list_objects_v2(Bucket=settings.raw_bucket, Prefix=prefix + "/")
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]) == sorted(
        p.name for p in summary.image_paths
    )
