"""Stage 1: raw image batches (sensor partitions) and their augmented copies."""

import time
from pathlib import Path

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.assets.common import build_manifest_checks, load_raw_boxes, output_stem
from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.imaging import augment as aug
from pixelpipe.imaging.preview import Thumb
from pixelpipe.imaging.stage1 import Stage1Task, run_tasks
from pixelpipe.io_managers.staging import StagedBatch, StagedOutput
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.resources.settings import SettingsResource
from pixelpipe.storage.keys import UnsafeKeyError
from pixelpipe.storage.layout import batch_listing_key

PREVIEW_SOURCES = 2  # raw images shown in the UI, each with all its copies


@dg.asset(
    partitions_def=raw_batches_partitions,
    io_manager_key="staging_io_manager",
    group_name="ingest",
    kinds={"s3"},
)
def raw_image_batches(
    context: dg.AssetExecutionContext, s3: S3Resource, settings: SettingsResource
) -> mf.BatchListing:
    """One batch of new raw images found by the sensor, pinned by key and ETag."""
    cfg = settings.get()
    uri = f"s3://{cfg.artifacts_bucket}/{batch_listing_key(context.partition_key)}"
    listing = mf.BatchListing.model_validate(mf.read_json(s3.client(), uri))
    context.add_output_metadata(
        {
            "listing_uri": uri,
            "objects": len(listing.objects),
            "bytes": sum(o.size for o in listing.objects),
            "source": f"s3://{listing.bucket}/{listing.prefix}",
        }
    )
    return listing


@dg.asset(
    partitions_def=raw_batches_partitions,
    io_manager_key="staging_io_manager",
    group_name="ingest",
    kinds={"albumentations"},
)
def augmented_images(
    context: dg.AssetExecutionContext,
    raw_image_batches: StagedBatch,
    s3: S3Resource,
    settings: SettingsResource,
) -> StagedOutput:
    """AUGMENT_COPIES augmented JPEGs per raw image, with the transform that made each."""
    cfg = settings.get()
    batch = raw_image_batches
    spec = aug.load_spec(cfg.augment_spec)
    digest = aug.spec_digest(spec)
    prefix = batch.listing.prefix if batch.listing else ""
    raw_boxes = load_raw_boxes(s3.client(), cfg.artifacts_bucket)
    failures = list(batch.failures)
    tasks = []
    # Output names are planned (and bounded) before any work: a key that cannot have one
    # fails alone here instead of failing the whole upload later.
    for f in batch.files:
        try:
            stem = output_stem(batch.partition, f.source_key, prefix)
        except UnsafeKeyError as exc:
            failures.append(mf.Failure(source_uri=f.source_uri, reason=str(exc)))
            continue
        tasks.append(
            Stage1Task(
                source_key=f.source_key,
                local_path=str(f.local_path),
                out_dir=str(batch.output_dir),
                out_stem=stem,
                copies=cfg.augment_copies,
                spec=spec,
                spec_digest=digest,
                boxes=raw_boxes.get(f.source_key, []),
                quality=cfg.jpeg_quality,
            )
        )
    started = time.perf_counter()
    results = run_tasks(tasks, cfg.worker_count)
    compute = time.perf_counter() - started
    by_key = {f.source_key: f for f in batch.files}
    items: list[mf.Stage1Item] = []
    uploads: list[tuple[str, str]] = []
    for result in results:
        source = by_key[result.source_key]
        if not result.ok:
            failures.append(mf.Failure(source_uri=source.source_uri, reason=result.reason or "?"))
            continue
        for it in result.items:
            key = it["rel_path"]
            uploads.append((str(batch.output_dir / key), key))
            items.append(
                mf.Stage1Item(
                    source_uri=source.source_uri,
                    source_key=source.source_key,
                    source_sha256=source.sha256,
                    output_uri=f"s3://{cfg.augmented_bucket}/{key}",
                    sha256=it["sha256"],
                    width=it["width"],
                    height=it["height"],
                    bytes=it["bytes"],
                    copy_index=it["copy_index"],
                    seed=it["seed"],
                    transform=it["record"],
                    boxes=[mf.BoxRecord(**b) for b in it["boxes"]],
                )
            )
    inputs = len(batch.files) + len(batch.failures)
    manifest = mf.Stage1Manifest(
        asset="augmented_images",
        run_id=context.run.run_id,
        partition=batch.partition,
        created_at=mf.now_iso(),
        config={
            "augment_spec": spec,
            "spec_digest": digest,
            "copies": cfg.augment_copies,
            "jpeg_quality": cfg.jpeg_quality,
            "listing": batch.upstream_manifest_uri
            or f"s3://{cfg.artifacts_bucket}/{batch_listing_key(batch.partition)}",
        },
        items=items,
        failures=failures,
        stats=batch.stats(len(items), len(failures), compute),
    )
    for failure in failures:
        context.log.warning(f"failed {failure.source_uri}: {failure.reason}")
    return StagedOutput(
        bucket=cfg.augmented_bucket,
        output_dir=batch.output_dir,
        uploads=uploads,
        manifest=manifest,
        schema="stage1_manifest",
        preview=_preview(items, batch.output_dir, cfg.augmented_bucket),
        metadata={
            "inputs": inputs,
            "workers": cfg.worker_count,
            "spec_digest": digest,
            "raw_boxes_known": sum(1 for t in tasks if t.boxes),
        },
    )


def _preview(
    items: list[mf.Stage1Item], out_dir: Path, bucket: str
) -> list[tuple[str, list[Thumb]]]:
    """The first PREVIEW_SOURCES raw images with their augmented copies side by side, boxed."""
    rows: dict[str, list[Thumb]] = {}
    for item in items:
        if item.source_key not in rows and len(rows) == PREVIEW_SOURCES:
            continue
        key = item.output_uri.removeprefix(f"s3://{bucket}/")
        caption = f"copy {item.copy_index} {item.width}x{item.height}"
        thumb = Thumb(out_dir / key, caption, mf.boxes_of(item))
        rows.setdefault(item.source_key, []).append(thumb)
    return list(rows.items())


checks = build_manifest_checks(augmented_images, lambda s: s.augmented_bucket, "stage1_manifest")
