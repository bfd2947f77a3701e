"""NVMe staging IO manager: S3 -> NVME_ROOT/input before a step, NVME_ROOT/output -> S3 after it.

What passes between this IO manager and an asset is small: a `StagedBatch` (local input
paths plus the upstream manifest items) in, a `StagedOutput` (local output files plus the new
manifest) out. Pixels never travel through Dagster. The manifest is written last.
"""

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.storage.keys import UnsafeKeyError, key_to_path
from pixelpipe.storage.transfer import download_many, upload_many

log = logging.getLogger("pixelpipe.staging")
BATCHES_PREFIX = "batches"
PATHS_PER_LOG_LINE = 200


@dataclass
class StagedFile:
    """One input on local disk, with where it came from and its upstream manifest item."""

    source_uri: str
    source_key: str
    local_path: Path
    size: int
    item: dict[str, Any] | None = None
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
    preview: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def run_dirs(nvme_root: Path | str, run_id: str) -> list[Path]:
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
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def batch_listing_key(partition: str) -> str:
    return f"{BATCHES_PREFIX}/{partition}.json"


_CONDITIONAL: dict[tuple[str | None, str], bool] = {}


def conditional_writes(s3: Any, endpoint: str | None, bucket: str, mode: str) -> bool:
    """on/off as configured; auto probes the server once per (endpoint, bucket)."""
    if mode != "auto":
        return mode == "on"
    key = (endpoint, bucket)
    if key not in _CONDITIONAL:
        _CONDITIONAL[key] = mf.probe_conditional_writes(s3, bucket)
    return _CONDITIONAL[key]


def log_paths(context: Any, event: str, paths: list[str], **fields: Any) -> None:
    """Structured log lines naming every local path used (chunked to keep events small)."""
    for start in range(0, max(len(paths), 1), PATHS_PER_LOG_LINE):
        record = {"event": event, **fields, "paths": paths[start : start + PATHS_PER_LOG_LINE]}
        line = json.dumps(record, default=str)
        context.log.info(line)
        log.info(line)


class NvmeStagingIOManager(dg.ConfigurableIOManager):
    """Stages a partition's objects onto local NVMe for a step and uploads what it made."""

    s3: S3Resource
    nvme_root: str
    artifacts_bucket: str
    augmented_bucket: str
    normalized_bucket: str
    conditional_writes: str = "auto"
    concurrency: int = 32

    # --- output side -----------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None or isinstance(obj, mf.BatchListing):
            return  # the sensor already stored the listing; nothing to upload
        if not isinstance(obj, StagedOutput):
            raise TypeError(f"expected StagedOutput from {context.asset_key}, got {type(obj)}")
        client = self.s3.client()
        started = time.perf_counter()
        paths = [local for local, _ in obj.uploads]
        log_paths(context, "stage_out", paths, bucket=obj.bucket, dir=str(obj.output_dir))
        report = upload_many(
            lambda: client, obj.bucket, [(p, k) for p, k in obj.uploads], self.concurrency
        )
        if report.failures:
            raise RuntimeError(
                f"upload failed for {len(report.failures)} objects: {report.failures[:3]}"
            )
        stats = obj.manifest.stats
        stats.seconds_stage_out = time.perf_counter() - started
        stats.bytes_out = report.bytes
        conditional = conditional_writes(
            client, self.s3.endpoint_url, obj.bucket, self.conditional_writes
        )
        uri, written = mf.write_manifest(client, obj.bucket, obj.manifest, conditional=conditional)
        context.add_output_metadata(
            {
                "manifest_uri": dg.MetadataValue.text(uri),
                "manifest_newly_written": written,
                "conditional_write": conditional,
                "items": len(obj.manifest.items),
                "failures": len(obj.manifest.failures),
                "bytes_out": stats.bytes_out,
                "bytes_in": stats.bytes_in,
                "seconds_stage_in": round(stats.seconds_stage_in, 3),
                "seconds_compute": round(stats.seconds_compute, 3),
                "seconds_stage_out": round(stats.seconds_stage_out, 3),
                "images_per_second": round(stats.images_per_second, 2),
                "nvme_output_dir": dg.MetadataValue.path(str(obj.output_dir)),
                "preview": dg.MetadataValue.md(_markdown_table(obj.preview)),
                **obj.metadata,
            }
        )

    # --- input side ------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> StagedBatch:
        upstream = context.asset_key.path[-1]
        partition = context.asset_partition_key
        consumer = context.op_def.name if context.has_asset_key else "op"
        run_id = context.step_context.run_id
        root = Path(self.nvme_root)
        batch = StagedBatch(
            asset=consumer,
            partition=partition,
            run_id=run_id,
            input_dir=root / "input" / run_id / consumer,
            output_dir=root / "output" / run_id / consumer,
            files=[],
        )
        batch.input_dir.mkdir(parents=True, exist_ok=True)
        batch.output_dir.mkdir(parents=True, exist_ok=True)
        client = self.s3.client()
        started = time.perf_counter()
        if upstream == "raw_image_batches":
            self._stage_raw(client, batch)
        else:
            self._stage_manifest(client, batch, upstream)
        batch.stage_in_seconds = time.perf_counter() - started
        log_paths(
            context,
            "stage_in",
            [str(f.local_path) for f in batch.files],
            partition=partition,
            dir=str(batch.input_dir),
            downloaded=batch.downloaded,
            reused_local=batch.reused_local,
        )
        return batch

    def _stage_raw(self, client: Any, batch: StagedBatch) -> None:
        uri = f"s3://{self.artifacts_bucket}/{batch_listing_key(batch.partition)}"
        listing = mf.BatchListing.model_validate(mf.read_json(client, uri))
        batch.listing = listing
        wanted: list[tuple[str, str]] = []
        for obj in listing.objects:
            source_uri = f"s3://{listing.bucket}/{obj.key}"
            try:
                local = key_to_path(batch.input_dir, obj.key)
            except UnsafeKeyError as exc:
                batch.failures.append(mf.Failure(source_uri=source_uri, reason=str(exc)))
                continue
            wanted.append((obj.key, str(local)))
            batch.files.append(StagedFile(source_uri, obj.key, local, obj.size))
        self._download(client, listing.bucket, wanted, batch)

    def _stage_manifest(self, client: Any, batch: StagedBatch, upstream: str) -> None:
        bucket = {"normalized_images": self.normalized_bucket}.get(upstream, self.augmented_bucket)
        uri = mf.latest_manifest_uri(client, bucket, upstream, batch.partition)
        if uri is None:
            raise FileNotFoundError(
                f"no {upstream} manifest for partition {batch.partition!r} in s3://{bucket}; "
                f"materialize {upstream} for it first"
            )
        batch.upstream_manifest_uri = uri
        manifest = mf.read_json(client, uri)
        upstream_out = Path(self.nvme_root) / "output" / batch.run_id / upstream
        wanted: list[tuple[str, str]] = []
        for item in manifest["items"]:
            item_bucket, key = mf.split_uri(item["output_uri"])
            try:
                local = key_to_path(upstream_out, key)
            except UnsafeKeyError as exc:
                batch.failures.append(mf.Failure(source_uri=item["output_uri"], reason=str(exc)))
                continue
            staged = StagedFile(item["output_uri"], key, local, item["bytes"], item)
            # same run, file still on NVMe and unchanged: read it instead of downloading it
            if local.is_file() and sha256_file(local) == item["sha256"]:
                staged.reused_local = True
                batch.reused_local += 1
            else:
                staged.local_path = key_to_path(batch.input_dir, key)
                wanted.append((key, str(staged.local_path)))
            batch.files.append(staged)
            if item_bucket != bucket:
                raise ValueError(f"manifest item outside s3://{bucket}: {item['output_uri']}")
        self._download(client, bucket, wanted, batch)

    def _download(
        self, client: Any, bucket: str, wanted: list[tuple[str, str]], batch: StagedBatch
    ) -> None:
        if not wanted:
            return
        report = download_many(lambda: client, bucket, wanted, self.concurrency)
        failed = dict(report.failures)
        kept = []
        for staged in batch.files:
            if staged.source_key in failed and not staged.reused_local:
                batch.failures.append(
                    mf.Failure(
                        source_uri=staged.source_uri,
                        reason=f"download failed: {failed[staged.source_key]}",
                    )
                )
            else:
                kept.append(staged)
        batch.files = kept
        batch.downloaded = report.count - len(report.failures)
        batch.stage_in_bytes = report.bytes


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no items_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
