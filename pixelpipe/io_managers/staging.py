"""NVMe staging IO manager: S3 -> NVME_ROOT/input before a step, NVME_ROOT/output -> S3 after it.

What passes between this IO manager and an asset is small: a `StagedBatch` (local input
paths plus the upstream manifest items) in, a `StagedOutput` (local output files plus the new
manifest) out. Pixels never travel through Dagster. The manifest is written last.

Only an object's own fault becomes a per-item failure: an unsafe key, an object deleted or
overwritten since it was listed, a stage-1 output whose bytes no longer match its manifest.
Anything else (transport errors after retries, auth, a full or unwritable disk) raises
`StageError`, which fails the step before any manifest is written, so the batch is retried.
"""

import json
import logging
import time
from pathlib import Path
from typing import Any

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.io_managers.batches import (
    StagedBatch,
    StagedFile,
    StagedOutput,
    StageError,
    cleanup_run,
    describe_failures,
    run_dirs,
    sha256_file,
)
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.storage.conditional import conditional_writes
from pixelpipe.storage.keys import UnsafeKeyError, check_key, key_to_path, staged_path
from pixelpipe.storage.layout import batch_listing_key
from pixelpipe.storage.transfer import Failed, TransferReport, Want, download_many, upload_many

log = logging.getLogger("pixelpipe.staging")
PATHS_PER_LOG_LINE = 200

__all__ = [
    "NvmeStagingIOManager",
    "StageError",
    "StagedBatch",
    "StagedFile",
    "StagedOutput",
    "cleanup_run",
    "run_dirs",
    "run_manifest_uri",
]


def log_paths(context: Any, event: str, paths: list[str], **fields: Any) -> None:
    """Structured log lines naming every local path used (chunked to keep events small)."""
    for start in range(0, max(len(paths), 1), PATHS_PER_LOG_LINE):
        record = {"event": event, **fields, "paths": paths[start : start + PATHS_PER_LOG_LINE]}
        line = json.dumps(record, default=str)
        context.log.info(line)
        log.info(line)


def _run_started(instance: dg.DagsterInstance, run_id: str) -> float:
    """When the run was created: the order in which latest.json lets runs win."""
    record = instance.get_run_record_by_id(run_id)
    return record.create_timestamp.timestamp() if record else time.time()


def run_manifest_uri(instance: dg.DagsterInstance, run_id: str, asset: str) -> str | None:
    """The manifest `asset` wrote in run `run_id` (its materialization's metadata), if any."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.asset_materialization
        if mat is not None and mat.asset_key.path[-1] == asset and "manifest_uri" in mat.metadata:
            return str(mat.metadata["manifest_uri"].value)
    return None


class NvmeStagingIOManager(dg.ConfigurableIOManager):
    """Stages a partition's objects onto local NVMe for a step and uploads what it made."""

    s3: S3Resource
    nvme_root: str
    raw_bucket: str
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
        conditional = conditional_writes(
            client, self.s3.endpoint_url, obj.bucket, self.conditional_writes
        )
        started = time.perf_counter()
        paths = [local for local, _ in obj.uploads]
        log_paths(context, "stage_out", paths, bucket=obj.bucket, dir=str(obj.output_dir))
        # Output keys name their bytes, so If-None-Match never refuses different content.
        report = upload_many(
            lambda: client, obj.bucket, obj.uploads, self.concurrency, if_none_match=conditional
        )
        if report.failures:
            raise StageError(
                f"stage-out failed: {describe_failures('PUT', obj.bucket, report.failures)}"
            )
        stats = obj.manifest.stats
        stats.seconds_stage_out = time.perf_counter() - started
        stats.bytes_out = report.bytes
        run_started = _run_started(context.step_context.instance, obj.manifest.run_id)
        uri, written = mf.write_manifest(
            client, obj.bucket, obj.manifest, conditional=conditional, run_started=run_started
        )
        context.add_output_metadata(
            {
                "manifest_uri": dg.MetadataValue.text(uri),
                "manifest_newly_written": written,
                "conditional_write": conditional,
                "items": len(obj.manifest.items),
                "failures": len(obj.manifest.failures),
                "uploaded": report.count - report.existed,
                "already_present": report.existed,
                "bytes_out": stats.bytes_out,
                "bytes_in": stats.bytes_in,
                "seconds_stage_in": round(stats.seconds_stage_in, 3),
                "seconds_compute": round(stats.seconds_compute, 3),
                "seconds_stage_out": round(stats.seconds_stage_out, 3),
                "images_per_second": round(stats.images_per_second, 2),
                "nvme_output_dir": dg.MetadataValue.path(str(obj.output_dir)),
                "preview": dg.MetadataValue.md(obj.preview_markdown()),
                "preview_thumbnails": sum(len(thumbs) for _, thumbs in obj.preview),
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
        try:
            batch.input_dir.mkdir(parents=True, exist_ok=True)
            batch.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StageError(f"stage-in failed: cannot create {root}: {exc}") from None
        client = self.s3.client()
        started = time.perf_counter()
        if upstream == "raw_image_batches":
            self._stage_raw(client, batch)
        else:
            self._stage_manifest(client, batch, upstream, context.step_context.instance)
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
        if listing.bucket != self.raw_bucket:
            raise StageError(
                f"batch listing {uri} names bucket {listing.bucket!r}; batches may only come "
                f"from RAW_BUCKET={self.raw_bucket!r}"
            )
        batch.listing = listing
        wanted: list[Want] = []
        for obj in listing.objects:
            source_uri = f"s3://{listing.bucket}/{obj.key}"
            try:
                local = staged_path(batch.input_dir, obj.key)
            except UnsafeKeyError as exc:
                batch.failures.append(mf.Failure(source_uri=source_uri, reason=str(exc)))
                continue
            wanted.append(Want(obj.key, local, obj.etag or None, obj.size))
            batch.files.append(StagedFile(source_uri, obj.key, local, obj.size))
        report = self._download(client, listing.bucket, wanted)
        sha_by_key = {r.key: r.sha256 or "" for r in report.results}
        self._drop_failed(batch, report.failures)
        for staged in batch.files:
            staged.sha256 = sha_by_key.get(staged.source_key, "")

    def _stage_manifest(
        self, client: Any, batch: StagedBatch, upstream: str, instance: dg.DagsterInstance
    ) -> None:
        bucket = {"normalized_images": self.normalized_bucket}.get(upstream, self.augmented_bucket)
        # the manifest this run's upstream step wrote, so a concurrent run cannot swap it
        uri = run_manifest_uri(instance, batch.run_id, upstream)
        uri = uri or mf.latest_manifest_uri(client, bucket, upstream, batch.partition)
        if uri is None:
            raise FileNotFoundError(
                f"no {upstream} manifest for partition {batch.partition!r} in s3://{bucket}; "
                f"materialize {upstream} for it first"
            )
        batch.upstream_manifest_uri = uri
        manifest = mf.read_json(client, uri)
        upstream_out = Path(self.nvme_root) / "output" / batch.run_id / upstream
        wanted: list[Want] = []
        for item in manifest["items"]:
            item_bucket, key = mf.split_uri(item["output_uri"])
            if item_bucket != bucket:
                raise StageError(f"manifest {uri} lists an item outside s3://{bucket}: {key}")
            try:
                check_key(key)
                local = key_to_path(upstream_out, key)
            except UnsafeKeyError as exc:
                batch.failures.append(mf.Failure(source_uri=item["output_uri"], reason=str(exc)))
                continue
            staged = StagedFile(item["output_uri"], key, local, item["bytes"], item, item["sha256"])
            # same run, file still on NVMe and unchanged: read it instead of downloading it
            if local.is_file() and sha256_file(local) == item["sha256"]:
                staged.reused_local = True
                batch.reused_local += 1
            else:
                staged.local_path = staged_path(batch.input_dir, key)
                wanted.append(Want(key, staged.local_path, None, item["bytes"]))
            batch.files.append(staged)
        report = self._download(client, bucket, wanted)
        self._drop_failed(batch, report.failures)
        got = {r.key: r.sha256 for r in report.results}
        for staged in list(batch.files):
            if staged.source_key in got and got[staged.source_key] != staged.sha256:
                batch.files.remove(staged)
                reason = (
                    f"changed since it was written: sha256 {got[staged.source_key]}, "
                    f"the manifest says {staged.sha256}"
                )
                batch.failures.append(mf.Failure(source_uri=staged.source_uri, reason=reason))

    def _download(self, client: Any, bucket: str, wanted: list[Want]) -> TransferReport:
        report = download_many(lambda: client, bucket, wanted, self.concurrency, checksum=True)
        fatal = [f for f in report.failures if not f.item_fault]
        if fatal:
            raise StageError(f"stage-in failed: {describe_failures('GET', bucket, fatal)}")
        return report

    def _drop_failed(self, batch: StagedBatch, failures: list[Failed]) -> None:
        """Failed objects leave the batch as failure entries; what arrived is counted."""
        failed = {f.key: f.reason for f in failures}
        kept = []
        for staged in batch.files:
            if staged.source_key in failed and not staged.reused_local:
                batch.failures.append(
                    mf.Failure(source_uri=staged.source_uri, reason=failed[staged.source_key])
                )
            else:
                kept.append(staged)
        batch.files = kept
        batch.downloaded = sum(1 for f in kept if not f.reused_local)
        batch.stage_in_bytes = sum(f.size for f in kept if not f.reused_local)
