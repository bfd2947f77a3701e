"""COCO per (variant, partition) and a dataset index per variant, rebuilt only where needed.

A partition's COCO files are remade only when its stage-2 `latest.json` changed (ETag, from one
listing of the manifests, no read per partition) or the raw boxes of its images changed (a
digest over 8-byte digests of its raw keys, kept in `coco/_state.json`, against the current
raw-box lookup). Everything else is reused, so a refresh costs O(new or relabelled partitions),
not O(dataset).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from pixelpipe import manifests as mf
from pixelpipe.annotations.project import digest_json, variant_coco
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.preview import coco_boxes
from pixelpipe.settings import Settings
from pixelpipe.storage.layout import RAW_BOXES_KEY, dataset_index_key
from pixelpipe.storage.listing import list_objects

__all__ = ["RAW_BOXES_KEY", "Built", "build_variant_cocos", "dataset_index_key", "put_json"]
STATE_KEY = "coco/_state.json"
PREVIEW_SOURCES = 2
STATE_VERSION = 1


def put_json(s3: Any, bucket: str, key: str, doc: Any) -> tuple[str, str]:
    """Write a JSON document; return its URI and the digest of its content."""
    body = json.dumps(doc, indent=1, sort_keys=True).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return f"s3://{bucket}/{key}", digest_json(doc)


def _read(s3: Any, bucket: str, key: str, default: Any) -> Any:
    try:
        return mf.read_json(s3, f"s3://{bucket}/{key}")
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return default
        raise


def _key_digest(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def _boxes_digest(keys: list[str], box_digests: dict[str, str]) -> str:
    return digest_json([box_digests.get(k, "-") for k in keys])


def _pointers(s3: Any, bucket: str) -> dict[str, str]:
    """partition -> ETag of its stage-2 latest.json, from one listing of the manifests."""
    prefix = mf.manifest_prefix("normalized_images", "")
    return {
        o.key[len(prefix) :].split("/", 1)[0]: o.etag
        for o in list_objects(s3, bucket, prefix)
        if o.key.endswith("/latest.json")
    }


@dataclass
class Built:
    """What a refresh made: every COCO and index artifact, counts of rebuilt/reused partitions."""

    artifacts: list[mf.AnnotationArtifact] = field(default_factory=list)
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    categories: list[dict[str, Any]] = field(default_factory=list)
    unlabelled: int = 0
    rebuilt: int = 0
    reused: int = 0
    # a rebuilt partition's first images in every variant with their COCO boxes, to preview:
    # (title, [(bucket, key, caption, boxes)])
    preview: list[tuple[str, list[tuple[str, str, str, list[Box]]]]] = field(default_factory=list)


def _build_partition(
    s3: Any, settings: Settings, partition: str, lookup: dict[str, Any], box_digests: dict[str, str]
) -> dict[str, Any]:
    """Remake one partition's COCO files from its latest manifests; its record for the state."""
    uri = mf.latest_manifest_uri(s3, settings.normalized_bucket, "normalized_images", partition)
    stage2 = mf.read_json(s3, uri or "")
    stage1 = mf.read_json(s3, stage2["config"]["upstream"])
    stage1_by_uri = {i["output_uri"]: i for i in stage1["items"]}
    order = {v.name: n for n, v in enumerate(settings.variants)}
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in stage2["items"]:
        by_variant[item["variant_name"]].append(item)
    entries: dict[str, dict[str, Any]] = {}
    unlabelled = 0
    shown = sorted({i["source_uri"] for i in stage2["items"]})[:PREVIEW_SOURCES]
    preview: dict[str, list[tuple[str, str, str, list[Box]]]] = defaultdict(list)
    for variant, items in sorted(by_variant.items(), key=lambda kv: order.get(kv[0], 99)):
        doc, missing = variant_coco(items, stage1_by_uri, lookup["boxes"], lookup["categories"])
        unlabelled += missing
        for item in items:
            if item["source_uri"] in shown:
                bucket, key = mf.split_uri(item["output_uri"])
                caption = f"{variant} {item['width']}x{item['height']}"
                preview[item["source_uri"]].append((bucket, key, caption, coco_boxes(doc, key)))
        key = f"coco/{variant}/{partition}.json"
        coco_uri, sha = put_json(s3, settings.artifacts_bucket, key, doc)
        entries[variant] = {
            "partition": partition,
            "coco_uri": coco_uri,
            "sha256": sha,
            "manifest_uri": uri,
            "images": len(doc["images"]),
            "annotations": len(doc["annotations"]),
        }
    keys = sorted({_key_digest(i["source_key"]) for i in stage2["items"]})
    return {
        "keys": keys,
        "boxes_digest": _boxes_digest(keys, box_digests),
        "entries": entries,
        "unlabelled": unlabelled,
        "preview": [(f"{partition}: {mf.split_uri(s)[1]}", preview[s]) for s in shown],
    }


def _index(
    settings: Settings, variant: str, entries: list[dict[str, Any]], cats: Any
) -> mf.DatasetIndex:
    spec = {v.name: v for v in settings.variants}.get(variant)
    return mf.DatasetIndex(
        variant=variant,
        width=spec.width if spec else None,
        height=spec.height if spec else None,
        mode=spec.mode if spec else None,
        bucket=settings.normalized_bucket,
        categories=cats,
        partitions=[mf.DatasetPartition(**e) for e in entries],
        images=sum(e["images"] for e in entries),
        annotations=sum(e["annotations"] for e in entries),
        digest=digest_json([e["sha256"] for e in entries] + [cats]),
        created_at=mf.now_iso(),
    )


def build_variant_cocos(s3: Any, settings: Settings) -> Built:
    """Per (variant, partition) COCO + a dataset index per variant, from raw boxes and records."""
    bucket = settings.artifacts_bucket
    lookup = _read(s3, bucket, RAW_BOXES_KEY, {"boxes": {}, "categories": []})
    cats = lookup["categories"]
    box_digests = {_key_digest(k): digest_json(v) for k, v in lookup["boxes"].items()}
    config = {"v": STATE_VERSION, "categories": digest_json(cats),
              "variants": [v.spec() for v in settings.variants]}  # fmt: skip
    state = _read(s3, bucket, STATE_KEY, {})
    old = state.get("partitions", {}) if state.get("config") == config else {}
    built = Built(categories=cats)
    records: dict[str, dict[str, Any]] = {}
    for partition, etag in sorted(_pointers(s3, settings.normalized_bucket).items()):
        record = old.get(partition)
        if (
            record is not None
            and record["pointer_etag"] == etag
            and record["boxes_digest"] == _boxes_digest(record["keys"], box_digests)
        ):
            built.reused += 1
        else:
            record = _build_partition(s3, settings, partition, lookup, box_digests)
            built.preview = record.pop("preview")
            record["pointer_etag"] = etag
            built.rebuilt += 1
        records[partition] = record
        built.unlabelled += record["unlabelled"]
    per_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records.values():
        for variant, entry in record["entries"].items():
            per_variant[variant].append(entry)
            built.artifacts.append(
                mf.AnnotationArtifact(
                    uri=entry["coco_uri"],
                    annotation_format="coco",
                    role="converted",
                    variant=variant,
                    partition=entry["partition"],
                    images=entry["images"],
                    annotations=entry["annotations"],
                    sha256=entry["sha256"],
                )
            )
    configured = {v.name for v in settings.variants}
    for variant, entries in sorted(per_variant.items()):
        if variant not in configured:
            continue  # no size known now: its last index, written while configured, stays
        index = _index(settings, variant, entries, cats)
        doc = index.model_dump(mode="json")
        uri, sha = put_json(s3, bucket, dataset_index_key(variant), doc)
        built.indexes[variant] = {"uri": uri, "images": index.images, "digest": index.digest}
        built.artifacts.append(
            mf.AnnotationArtifact(
                uri=uri,
                annotation_format="coco",
                role="dataset_index",
                variant=variant,
                images=index.images,
                annotations=index.annotations,
                sha256=sha,
            )
        )
    put_json(s3, bucket, STATE_KEY, {"config": config, "partitions": records})
    return built
