"""Annotations: Label Studio exports -> COCO in raw pixels -> COCO + dataset index per variant."""

import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import botocore.exceptions
import dagster as dg

from pixelpipe import manifests as mf
from pixelpipe.annotations.coco import categories as make_categories
from pixelpipe.annotations.coco import category_order, coco_doc
from pixelpipe.annotations.labelstudio import config_label_names, ls_to_coco
from pixelpipe.annotations.project import digest_json, variant_coco
from pixelpipe.annotations.refs import RefError, RefIndex
from pixelpipe.assets.common import RAW_BOXES_KEY
from pixelpipe.assets.stage2 import normalized_images
from pixelpipe.resources.s3 import S3Resource
from pixelpipe.settings import Settings, get_settings
from pixelpipe.storage.cursor import list_objects

RAW_COCO_KEY = "annotations/raw/coco.json"
CONFIG_NAME = "label_config.xml"


def dataset_index_key(variant: str) -> str:
    return f"datasets/{variant}/index.json"


def _put_json(s3: Any, bucket: str, key: str, doc: Any) -> tuple[str, str]:
    body = json.dumps(doc, indent=1, sort_keys=True).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return f"s3://{bucket}/{key}", digest_json(doc)


def _exports(s3: Any, settings: Settings) -> list[Any]:
    """Label Studio JSON exports under ANNOTATIONS_PREFIX, oldest first (newer ones win)."""
    found = [
        o
        for o in list_objects(s3, settings.raw_bucket, settings.annotations_prefix + "/")
        if o.key.endswith(".json")
    ]
    return sorted(found, key=lambda o: (o.last_modified, o.key))


def _config_for(s3: Any, bucket: str, export_key: str) -> str | None:
    key = str(PurePosixPath(export_key).parent / CONFIG_NAME)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except botocore.exceptions.ClientError:
        return None  # built from the labels found in the export


def convert_exports(s3: Any, settings: Settings, work: Path) -> dict[str, Any]:
    """Convert every export with label-studio-sdk; resolve refs to raw keys; newest export wins.

    An export at ANNOTATIONS_PREFIX/<sub>/x.json resolves its image references under the raw
    prefix <sub> first (where `pixelpipe upload DIR --prefix <sub>` puts the images), then
    under RAW_PREFIX.
    """
    raw_keys = [o.key for o in list_objects(s3, settings.raw_bucket, settings.raw_prefix + "/")]
    index = RefIndex(raw_keys, settings.raw_bucket, settings.raw_prefix)
    boxes: dict[str, list[dict[str, Any]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    config_names: list[str] = []
    failures: list[mf.Failure] = []
    skipped: dict[str, int] = defaultdict(int)
    artifacts: list[mf.AnnotationArtifact] = []
    for obj in _exports(s3, settings):
        uri = f"s3://{settings.raw_bucket}/{obj.key}"
        local = work / f"export-{len(artifacts)}.json"
        s3.download_file(settings.raw_bucket, obj.key, str(local))
        config = _config_for(s3, settings.raw_bucket, obj.key)
        try:
            result = ls_to_coco(local, config)
        except Exception as exc:  # noqa: BLE001 - a broken export fails alone
            failures.append(mf.Failure(source_uri=uri, reason=f"not convertible: {exc}"))
            continue
        for name, count in result.skipped.items():
            skipped[name] += count
        for ref in result.unsized_refs:
            failures.append(mf.Failure(source_uri=f"{uri}#{ref}", reason="image size unknown"))
        config_names += result.category_names
        images = 0
        sub = str(PurePosixPath(obj.key).parent.relative_to(settings.annotations_prefix))
        scoped = None
        if sub != ".":
            scoped_keys = [k for k in raw_keys if k.startswith(sub + "/")]
            scoped = RefIndex(scoped_keys, settings.raw_bucket, sub) if scoped_keys else None
        for image in result.coco["images"]:
            ref = image.get("ls_ref", image["file_name"])
            try:
                key = _resolve(ref, scoped, index)
            except RefError as exc:
                failures.append(mf.Failure(source_uri=f"{uri}#{ref}", reason=str(exc)))
                continue
            boxes[key] = list(result.boxes_by_ref.get(ref, []))  # type: ignore[arg-type]
            sizes[key] = (image["width"], image["height"])
            images += 1
        artifacts.append(
            mf.AnnotationArtifact(
                uri=uri,
                annotation_format="label_studio_json",
                role="source",
                images=images,
                annotations=sum(
                    len(result.boxes_by_ref.get(i.get("ls_ref", ""), []))
                    for i in result.coco["images"]
                ),
            )
        )
        if config is not None:
            config_names = config_label_names(config) + config_names
    names = category_order(
        list(dict.fromkeys(config_names)), (b["label"] for bs in boxes.values() for b in bs)
    )
    return {
        "boxes": boxes,
        "sizes": sizes,
        "categories": make_categories(names),
        "failures": failures,
        "skipped": dict(skipped),
        "artifacts": artifacts,
    }


def _resolve(ref: str, scoped: RefIndex | None, index: RefIndex) -> str:
    if scoped is not None:
        try:
            return scoped.resolve(ref)
        except RefError:
            pass
    return index.resolve(ref)


def raw_coco(converted: dict[str, Any]) -> dict[str, Any]:
    """COCO in raw pixels, file_name = raw object key, with the stable category ids."""
    from pixelpipe.annotations.coco import coco_annotation, coco_image

    cat_id = {c["name"]: c["id"] for c in converted["categories"]}
    images, anns = [], []
    for image_id, key in enumerate(sorted(converted["boxes"]), 1):
        width, height = converted["sizes"][key]
        images.append(coco_image(image_id, key, width, height))
        for box in converted["boxes"][key]:
            anns.append(coco_annotation(len(anns) + 1, image_id, cat_id[box["label"]], box))
    return coco_doc(images, anns, converted["categories"])


def _write_manifest(
    s3: Any, settings: Settings, asset: str, run_id: str, **fields: Any
) -> tuple[str, mf.AnnotationManifest]:
    manifest = mf.AnnotationManifest(
        asset=asset, run_id=run_id, partition="all", created_at=mf.now_iso(), **fields
    )
    uri, _ = mf.write_manifest(s3, settings.artifacts_bucket, manifest, conditional=False)
    return uri, manifest


@dg.asset(group_name="annotations", kinds={"labelstudio", "coco"})
def raw_annotations(context: dg.AssetExecutionContext, s3: S3Resource) -> dg.MaterializeResult:
    """Label Studio exports under ANNOTATIONS_PREFIX as COCO in raw pixels, and Stage 1's boxes."""
    settings = get_settings()
    client = s3.client()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=_work_root(settings)) as tmp:
        converted = convert_exports(client, settings, Path(tmp))
    coco = raw_coco(converted)
    coco_uri, coco_sha = _put_json(client, settings.artifacts_bucket, RAW_COCO_KEY, coco)
    lookup = {"boxes": converted["boxes"], "categories": converted["categories"]}
    _put_json(client, settings.artifacts_bucket, RAW_BOXES_KEY, lookup)
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
    uri, manifest = _write_manifest(
        client,
        settings,
        "raw_annotations",
        context.run.run_id,
        config={
            "annotations_prefix": settings.annotations_prefix,
            "categories": converted["categories"],
        },
        artifacts=artifacts,
        failures=converted["failures"],
        skipped=converted["skipped"],
        stats=mf.StageStats(
            inputs=len(converted["artifacts"]),
            outputs=len(coco["images"]),
            failures=len(converted["failures"]),
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
            "images": len(coco["images"]),
            "annotations": len(coco["annotations"]),
            "failures": len(converted["failures"]),
            "skipped": dg.MetadataValue.json(converted["skipped"]),
            "categories": ", ".join(c["name"] for c in converted["categories"]),
        }
    )


def _work_root(settings: Settings) -> str:
    root = settings.nvme_root.resolve() / "annotations"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def _stage2_manifests(s3: Any, settings: Settings) -> list[dict[str, Any]]:
    """The latest stage-2 manifest of every partition, oldest partition first."""
    prefix = f"{mf.MANIFEST_ROOT}/normalized_images/"
    pointers = sorted(
        o.key
        for o in list_objects(s3, settings.normalized_bucket, prefix)
        if o.key.endswith("/latest.json")
    )
    docs = []
    for key in pointers:
        pointer = mf.read_json(s3, f"s3://{settings.normalized_bucket}/{key}")
        doc = mf.read_json(s3, pointer["manifest_uri"])
        doc["_uri"] = pointer["manifest_uri"]
        docs.append(doc)
    return docs


def build_variant_cocos(s3: Any, settings: Settings) -> dict[str, Any]:
    """Per (variant, partition) COCO + a dataset index per variant, from raw boxes and records."""
    try:
        lookup = mf.read_json(s3, f"s3://{settings.artifacts_bucket}/{RAW_BOXES_KEY}")
    except botocore.exceptions.ClientError:
        lookup = {"boxes": {}, "categories": []}
    cats = lookup["categories"]
    per_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    artifacts: list[mf.AnnotationArtifact] = []
    unlabelled = 0
    for stage2 in _stage2_manifests(s3, settings):
        stage1 = mf.read_json(s3, stage2["config"]["upstream"])
        stage1_by_uri = {i["output_uri"]: i for i in stage1["items"]}
        by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item in stage2["items"]:
            by_variant[item["variant_name"]].append(item)
        for variant, items in sorted(by_variant.items()):
            doc, missing = variant_coco(items, stage1_by_uri, lookup["boxes"], cats)
            unlabelled += missing
            key = f"coco/{variant}/{stage2['partition']}.json"
            uri, sha = _put_json(s3, settings.artifacts_bucket, key, doc)
            entry = {
                "partition": stage2["partition"],
                "coco_uri": uri,
                "sha256": sha,
                "manifest_uri": stage2["_uri"],
                "images": len(doc["images"]),
                "annotations": len(doc["annotations"]),
            }
            per_variant[variant].append(entry)
            artifacts.append(
                mf.AnnotationArtifact(
                    uri=uri,
                    annotation_format="coco",
                    role="converted",
                    variant=variant,
                    partition=stage2["partition"],
                    images=entry["images"],
                    annotations=entry["annotations"],
                    sha256=sha,
                )
            )
    sizes = {v.name: v for v in settings.variants}
    indexes = {}
    for variant, entries in sorted(per_variant.items()):
        spec = sizes.get(variant)
        index = {
            "schema_version": 1,
            "variant": variant,
            "width": spec.width if spec else None,
            "height": spec.height if spec else None,
            "mode": spec.mode if spec else None,
            "bucket": settings.normalized_bucket,
            "categories": cats,
            "partitions": entries,
            "images": sum(e["images"] for e in entries),
            "annotations": sum(e["annotations"] for e in entries),
            "digest": digest_json([e["sha256"] for e in entries] + [cats]),
            "created_at": mf.now_iso(),
        }
        uri, sha = _put_json(s3, settings.artifacts_bucket, dataset_index_key(variant), index)
        indexes[variant] = {"uri": uri, "images": index["images"], "digest": index["digest"]}
        artifacts.append(
            mf.AnnotationArtifact(
                uri=uri,
                annotation_format="coco",
                role="dataset_index",
                variant=variant,
                images=index["images"],
                annotations=index["annotations"],
                sha256=sha,
            )
        )
    return {
        "artifacts": artifacts,
        "indexes": indexes,
        "unlabelled": unlabelled,
        "categories": cats,
    }


@dg.asset(
    group_name="annotations",
    deps=[raw_annotations, normalized_images],
    kinds={"coco"},
    automation_condition=dg.AutomationCondition.eager(),
)
def coco_annotations(context: dg.AssetExecutionContext, s3: S3Resource) -> dg.MaterializeResult:
    """COCO per variant and partition, boxes projected from raw pixels; one dataset index each."""
    settings = get_settings()
    client = s3.client()
    started = time.perf_counter()
    built = build_variant_cocos(client, settings)
    uri, _ = _write_manifest(
        client,
        settings,
        "coco_annotations",
        context.run.run_id,
        config={
            "categories": built["categories"],
            "variants": [v.spec() for v in settings.variants],
        },
        artifacts=built["artifacts"],
        stats=mf.StageStats(
            outputs=len(built["artifacts"]),
            skipped=built["unlabelled"],
            seconds_compute=time.perf_counter() - started,
        ),
    )
    return dg.MaterializeResult(
        metadata={
            "manifest_uri": uri,
            "dataset_indexes": dg.MetadataValue.json(built["indexes"]),
            "coco_files": sum(1 for a in built["artifacts"] if a.role == "converted"),
            "unlabelled_images": built["unlabelled"],
        }
    )
