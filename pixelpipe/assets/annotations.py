"""Annotations: Label Studio exports -> COCO in raw pixels -> COCO + dataset index per variant."""

import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.annotations.datasets import Built, build_variant_cocos, put_json
from pixelpipe.annotations.exports import convert_exports, raw_coco
from pixelpipe.assets.stage2 import normalized_images
from pixelpipe.imaging.preview import Thumb, preview_markdown
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.resources.settings import SettingsResource
from pixelpipe.settings import Settings
from pixelpipe.storage.layout import RAW_BOXES_KEY, RAW_COCO_KEY


def _write_manifest(
    s3: Any, settings: Settings, asset: str, run_id: str, **fields: Any
) -> tuple[str, mf.AnnotationManifest]:
    manifest = mf.AnnotationManifest(
        asset=asset, run_id=run_id, partition="all", created_at=mf.now_iso(), **fields
    )
    uri, _ = mf.write_manifest(s3, settings.artifacts_bucket, manifest, conditional=False)
    return uri, manifest


def _work_root(settings: Settings) -> str:
    root = settings.nvme_root.resolve() / "annotations"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def _boxed_preview(s3: Any, built: Built, work: Path) -> str:
    """The last rebuilt partition's first images in every variant, with their COCO boxes."""
    rows: list[tuple[str, list[Thumb]]] = []
    for title, shown in built.preview:
        thumbs: list[Thumb] = []
        for bucket, key, caption, boxes in shown:
            local = work / f"{len(rows)}-{len(thumbs)}.jpg"
            s3.download_file(bucket, key, str(local))
            thumbs.append(Thumb(local, caption, boxes))
        rows.append((title, thumbs))
    return preview_markdown(rows) if rows else "_no partition changed_"


@dg.asset(group_name="annotations", kinds={"labelstudio", "coco"})
def raw_annotations(
    context: dg.AssetExecutionContext, s3: S3Resource, settings: SettingsResource
) -> dg.MaterializeResult:
    """Label Studio exports under ANNOTATIONS_PREFIX as COCO in raw pixels, and Stage 1's boxes."""
    cfg = settings.get()
    client = s3.client()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=_work_root(cfg)) as tmp:
        converted = convert_exports(client, cfg, Path(tmp))
    coco = raw_coco(converted)
    coco_uri, coco_sha = put_json(client, cfg.artifacts_bucket, RAW_COCO_KEY, coco)
    lookup = {"boxes": converted["boxes"], "categories": converted["categories"]}
    put_json(client, cfg.artifacts_bucket, RAW_BOXES_KEY, lookup)
    artifacts = [
        *converted["artifacts"],
        mf.AnnotationArtifact(
            uri=coco_uri,
            annotation_format="coco",
            role="converted",
            images=len(coco["images"]),
            annotations=len(coco["annotations"]),
            sha256=coco_sha,
        ),
    ]
    uri, _ = _write_manifest(
        client,
        cfg,
        "raw_annotations",
        context.run.run_id,
        config={
            "annotations_prefix": cfg.annotations_prefix,
            "categories": converted["categories"],
        },
        artifacts=artifacts,
        failures=converted["failures"],
        skipped=converted["skipped"],
        stats=mf.StageStats(
            inputs=len(converted["artifacts"]),
            outputs=len(coco["images"]),
            failures=len(converted["failures"]),
            skipped=converted["reused"],
            seconds_compute=time.perf_counter() - started,
        ),
    )
    for failure in converted["failures"]:
        context.log.warning(f"{failure.source_uri}: {failure.reason}")
    return dg.MaterializeResult(
        metadata={
            "manifest_uri": uri,
            "coco_uri": coco_uri,
            "exports": len(converted["artifacts"]),
            "exports_converted": converted["converted"],
            "exports_reused": converted["reused"],
            "raw_prefixes_listed": ", ".join(converted["listed_prefixes"]) or "none",
            "images": len(coco["images"]),
            "annotations": len(coco["annotations"]),
            "failures": len(converted["failures"]),
            "skipped": dg.MetadataValue.json(converted["skipped"]),
            "categories": ", ".join(c["name"] for c in converted["categories"]),
        }
    )


@dg.asset(
    group_name="annotations",
    deps=[raw_annotations, normalized_images],
    kinds={"coco"},
    automation_condition=dg.AutomationCondition.eager(),
)
def coco_annotations(
    context: dg.AssetExecutionContext, s3: S3Resource, settings: SettingsResource
) -> dg.MaterializeResult:
    """COCO per variant and partition, boxes projected from raw pixels; one dataset index each."""
    cfg = settings.get()
    client = s3.client()
    started = time.perf_counter()
    built = build_variant_cocos(client, cfg)
    with tempfile.TemporaryDirectory(dir=_work_root(cfg)) as tmp:
        preview = _boxed_preview(client, built, Path(tmp))
    uri, _ = _write_manifest(
        client,
        cfg,
        "coco_annotations",
        context.run.run_id,
        config={
            "categories": built.categories,
            "variants": [v.spec() for v in cfg.variants],
        },
        artifacts=built.artifacts,
        stats=mf.StageStats(
            outputs=len(built.artifacts),
            skipped=built.unlabelled,
            seconds_compute=time.perf_counter() - started,
        ),
    )
    return dg.MaterializeResult(
        metadata={
            "manifest_uri": uri,
            "dataset_indexes": dg.MetadataValue.json(built.indexes),
            "coco_files": sum(1 for a in built.artifacts if a.role == "converted"),
            "partitions_rebuilt": built.rebuilt,
            "preview": dg.MetadataValue.md(preview),
            "partitions_reused": built.reused,
            "unlabelled_images": built.unlabelled,
        }
    )
