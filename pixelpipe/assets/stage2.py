"""Stage 2: every NORMALIZE_SIZES variant of every stage-1 image, from one decode each."""

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.assets.common import build_manifest_checks
from pixelpipe.assets.partitions import raw_batches_partitions
from pixelpipe.imaging.preview import Thumb
from pixelpipe.imaging.stage2 import Stage2Input, run_stage2
from pixelpipe.imaging.variants import Variant
from pixelpipe.io_managers.staging import StagedBatch, StagedOutput
from pixelpipe.resources.settings import SettingsResource

PREVIEW_SOURCES = 2  # stage-1 images shown in the UI, each in every variant


@dg.asset(
    partitions_def=raw_batches_partitions,
    io_manager_key="staging_io_manager",
    group_name="ingest",
    kinds={"dali"},
)
def normalized_images(
    context: dg.AssetExecutionContext, augmented_images: StagedBatch, settings: SettingsResource
) -> StagedOutput:
    """Each stage-1 image in every training size, under <variant_name>/<partition>/<key>."""
    cfg = settings.get()
    batch = augmented_images
    variants = cfg.variants
    inputs = [
        Stage2Input(
            source_uri=f.source_uri,
            local_path=str(f.local_path),
            rel_key=f.source_key,
            boxes=[_box(b) for b in (f.item or {}).get("boxes", [])],
        )
        for f in batch.files
    ]
    raw_key = {f.source_uri: (f.item or {}).get("source_key", f.source_key) for f in batch.files}
    raw_sha = {f.source_uri: (f.item or {}).get("source_sha256", "") for f in batch.files}
    started = time.perf_counter()
    results = run_stage2(
        inputs,
        variants,
        batch.output_dir,
        backend=cfg.image_backend,
        quality=cfg.jpeg_quality,
        workers=cfg.worker_count,
    )
    compute = time.perf_counter() - started
    items: list[mf.Stage2Item] = []
    failures = list(batch.failures)
    uploads: list[tuple[str, str]] = []
    per_variant: dict[str, list[mf.Stage2Item]] = defaultdict(list)
    for r in results:
        if not r.ok:
            failures.append(mf.Failure(source_uri=r.source_uri, reason=r.reason or "?"))
            continue
        key = r.rel_path or f"{r.variant_name}/{r.rel_key}"
        uploads.append((str(batch.output_dir / key), key))
        item = mf.Stage2Item(
            source_uri=r.source_uri,
            source_key=raw_key[r.source_uri],
            source_sha256=raw_sha[r.source_uri],
            variant_name=r.variant_name or "",
            width=r.width,
            height=r.height,
            output_uri=f"s3://{cfg.normalized_bucket}/{key}",
            sha256=r.sha256 or "",
            bytes=r.bytes,
            geometry=r.geometry or {},
            boxes=[mf.BoxRecord(**b) for b in r.boxes],
        )
        items.append(item)
        per_variant[item.variant_name].append(item)
    variant_stats = {
        v.name: mf.VariantStats(
            outputs=len(per_variant[v.name]),
            bytes=sum(i.bytes for i in per_variant[v.name]),
            width=v.width,
            height=v.height,
            mode=v.mode,
        )
        for v in variants
    }
    manifest = mf.Stage2Manifest(
        asset="normalized_images",
        run_id=context.run.run_id,
        partition=batch.partition,
        created_at=mf.now_iso(),
        config={
            "normalize_sizes": [v.spec() for v in variants],
            "backend": cfg.image_backend,
            "jpeg_quality": cfg.jpeg_quality,
            "upstream": batch.upstream_manifest_uri,
        },
        items=items,
        failures=failures,
        variant_stats=variant_stats,
        stats=batch.stats(len(items), len(failures), compute),
    )
    for failure in failures:
        context.log.warning(f"failed {failure.source_uri}: {failure.reason}")
    return StagedOutput(
        bucket=cfg.normalized_bucket,
        output_dir=batch.output_dir,
        uploads=uploads,
        manifest=manifest,
        schema="stage2_manifest",
        preview=_preview(items, batch.output_dir, cfg.normalized_bucket, variants),
        metadata={
            "variants": ", ".join(v.spec() for v in variants),
            "reused_from_nvme": batch.reused_local,
            "downloaded": batch.downloaded,
            "backend": cfg.image_backend,
        },
    )


def _box(raw: dict[str, Any]) -> Any:
    return {k: raw[k] for k in ("label", "x", "y", "w", "h")}


def _preview(
    items: list[mf.Stage2Item], out_dir: Path, bucket: str, variants: list[Variant]
) -> list[tuple[str, list[Thumb]]]:
    """The first PREVIEW_SOURCES stage-1 images, every variant side by side, boxes drawn."""
    order = {v.name: i for i, v in enumerate(variants)}
    rows: dict[str, list[mf.Stage2Item]] = defaultdict(list)
    for item in items:
        if item.source_uri in rows or len(rows) < PREVIEW_SOURCES:
            rows[item.source_uri].append(item)
    return [
        (
            source.split("/", 3)[-1],
            [
                Thumb(
                    out_dir / i.output_uri.removeprefix(f"s3://{bucket}/"),
                    f"{i.variant_name} {i.width}x{i.height}",
                    mf.boxes_of(i),
                )
                for i in sorted(group, key=lambda i: order.get(i.variant_name, len(order)))
            ],
        )
        for source, group in rows.items()
    ]


def _every_input_has_every_variant(doc: dict[str, Any]) -> bool:
    names = set(doc["variant_stats"])
    by_source: dict[str, set[str]] = defaultdict(set)
    for item in doc["items"]:
        by_source[item["source_uri"]].add(item["variant_name"])
    return all(found == names for found in by_source.values())


checks = build_manifest_checks(
    normalized_images,
    lambda s: s.normalized_bucket,
    "stage2_manifest",
    _every_input_has_every_variant,
)
