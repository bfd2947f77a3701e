"""What the staging IO manager hands an asset and takes back, and its run directories."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelpipe import manifests as mf
from pixelpipe.imaging.preview import Thumb, preview_markdown
from pixelpipe.storage.transfer import Failed

FAILURES_SHOWN = 3


class StageError(RuntimeError):
    """Staging failed for a reason that is not the images' fault; the step fails and is retried."""


@dataclass
class StagedFile:
    """One input on local disk, with where it came from and its upstream manifest item."""

    source_uri: str
    source_key: str
    local_path: Path
    size: int
    item: dict[str, Any] | None = None
    sha256: str = ""
    reused_local: bool = False


@dataclass
class StagedBatch:
    """A batch staged for one asset: local inputs, failures so far, stage-in cost."""

    asset: str
    partition: str
    run_id: str
    input_dir: Path
    output_dir: Path
    files: list[StagedFile]
    failures: list[mf.Failure] = field(default_factory=list)
    upstream_manifest_uri: str | None = None
    listing: mf.BatchListing | None = None
    stage_in_seconds: float = 0.0
    stage_in_bytes: int = 0
    downloaded: int = 0
    reused_local: int = 0

    def stats(self, outputs: int, failures: int, compute_seconds: float) -> mf.StageStats:
        """The manifest stats of a stage that made `outputs` from this batch."""
        return mf.StageStats(
            inputs=len(self.files) + len(self.failures),
            outputs=outputs,
            failures=failures,
            bytes_in=self.stage_in_bytes,
            seconds_stage_in=self.stage_in_seconds,
            seconds_compute=compute_seconds,
            images_per_second=len(self.files) / compute_seconds if compute_seconds else 0.0,
        )


@dataclass
class StagedOutput:
    """What an asset made: files to upload into `bucket` and the manifest to write after them."""

    bucket: str
    output_dir: Path
    uploads: list[tuple[str, str]]
    manifest: mf.Stage1Manifest | mf.Stage2Manifest
    schema: str
    # a few outputs to show in the Dagster UI: (title, thumbnails side by side) per row
    preview: list[tuple[str, list[Thumb]]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def preview_markdown(self) -> str:
        """The preview rows as thumbnails (data URIs, a few KB each) the Dagster UI shows."""
        return preview_markdown(self.preview) if self.preview else "_no items_"


def describe_failures(op: str, bucket: str, failures: list[Failed]) -> str:
    """'GET s3://b/k: reason' for the first few, and how many more, for a step's error."""
    shown = "; ".join(f"{op} s3://{bucket}/{f.key}: {f.reason}" for f in failures[:FAILURES_SHOWN])
    more = len(failures) - FAILURES_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")


def run_dirs(nvme_root: Path | str, run_id: str) -> list[Path]:
    """The staging directories of one run."""
    root = Path(nvme_root)
    return [root / "input" / run_id, root / "output" / run_id]


def cleanup_run(nvme_root: Path | str, run_id: str) -> list[Path]:
    """Remove a run's staging directories; return those that existed."""
    removed = []
    for path in run_dirs(nvme_root, run_id):
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def sha256_file(path: Path) -> str:
    """The sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
