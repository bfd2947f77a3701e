"""Label Studio exports under ANNOTATIONS_PREFIX -> raw-pixel boxes per raw key, converting only
the exports (or label configs) that changed since the last run.

Each export's conversion is kept at `annotations/raw/exports/<digest of its key>.json` with the
ETags it was made from; an unchanged export reuses it. Image references are resolved against
listings made only when a changed export needs them: the raw prefix named by the export's own
folder first (ANNOTATIONS_PREFIX/<sub>/ -> <sub>/), all of RAW_PREFIX only for references the
scoped listing cannot resolve. Newest export wins per image.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import botocore.exceptions

from pixelpipe import manifests as mf
from pixelpipe.annotations.coco import categories as make_categories
from pixelpipe.annotations.coco import category_order
from pixelpipe.annotations.labelstudio import config_label_names, ls_to_coco
from pixelpipe.annotations.refs import RefError, RefIndex
from pixelpipe.settings import Settings
from pixelpipe.storage.listing import ObjectInfo, list_objects

CONFIG_NAME = "label_config.xml"
CACHE_PREFIX = "annotations/raw/exports"
CACHE_VERSION = 1


class _Resolver:
    """Raw-key listings made on demand, once per run: a scoped prefix, or all of RAW_PREFIX."""

    def __init__(self, s3: Any, settings: Settings) -> None:
        self._s3 = s3
        self._settings = settings
        self._indexes: dict[str, RefIndex] = {}
        self.listed: list[str] = []

    def _index(self, prefix: str) -> RefIndex:
        if prefix not in self._indexes:
            keys = [o.key for o in list_objects(self._s3, self._settings.raw_bucket, prefix + "/")]
            self._indexes[prefix] = RefIndex(keys, self._settings.raw_bucket, prefix)
            self.listed.append(prefix)
        return self._indexes[prefix]

    def resolve(self, ref: str, sub: str | None) -> str:
        if sub:
            try:
                return self._index(sub).resolve(ref)
            except RefError:
                pass
        return self._index(self._settings.raw_prefix).resolve(ref)


def _cache_key(export_key: str) -> str:
    return f"{CACHE_PREFIX}/{hashlib.sha256(export_key.encode()).hexdigest()[:24]}.json"


def _read(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise
    return doc


def _convert_one(
    s3: Any, settings: Settings, obj: ObjectInfo, work: Path, resolver: _Resolver
) -> dict[str, Any]:
    """One export's boxes by raw key, its failures and what it skipped (JSON-ready)."""
    uri = f"s3://{settings.raw_bucket}/{obj.key}"
    local = work / f"export-{hashlib.sha256(obj.key.encode()).hexdigest()[:12]}.json"
    s3.download_file(settings.raw_bucket, obj.key, str(local))
    config_key = str(PurePosixPath(obj.key).parent / CONFIG_NAME)
    config = _read_text(s3, settings.raw_bucket, config_key)
    out: dict[str, Any] = {"boxes": {}, "sizes": {}, "failures": [], "skipped": {}, "unresolved": 0}
    try:
        result = ls_to_coco(local, config)
    except Exception as exc:  # noqa: BLE001 - a broken export fails alone
        out["failures"].append({"source_uri": uri, "reason": f"not convertible: {exc}"})
        out["config_labels"], out["names"], out["artifact"] = [], [], None
        return out
    out["skipped"] = dict(result.skipped)
    for ref in result.unsized_refs:
        out["failures"].append({"source_uri": f"{uri}#{ref}", "reason": "image size unknown"})
    sub = str(PurePosixPath(obj.key).parent.relative_to(settings.annotations_prefix))
    for image in result.coco["images"]:
        ref = image.get("ls_ref", image["file_name"])
        try:
            key = resolver.resolve(ref, None if sub == "." else sub)
        except RefError as exc:
            out["failures"].append({"source_uri": f"{uri}#{ref}", "reason": str(exc)})
            out["unresolved"] += 1
            continue
        out["boxes"][key] = list(result.boxes_by_ref.get(ref, []))
        out["sizes"][key] = [image["width"], image["height"]]
    out["names"] = list(result.category_names)
    out["config_labels"] = config_label_names(config) if config is not None else []
    out["artifact"] = mf.AnnotationArtifact(
        uri=uri,
        annotation_format="label_studio_json",
        role="source",
        images=len(out["boxes"]),
        annotations=sum(len(b) for b in result.boxes_by_ref.values()),
    ).model_dump(mode="json")
    return out


def _read_text(s3: Any, bucket: str, key: str) -> str | None:
    try:
        return str(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
    except botocore.exceptions.ClientError:
        return None  # built from the labels found in the export


def convert_exports(s3: Any, settings: Settings, work: Path) -> dict[str, Any]:
    """Every export's boxes (newest wins per image), categories, failures, artifacts, counts."""
    listed = list(list_objects(s3, settings.raw_bucket, settings.annotations_prefix + "/"))
    etags = {o.key: o.etag for o in listed}
    exports = sorted(
        (o for o in listed if o.key.endswith(".json")), key=lambda o: (o.last_modified, o.key)
    )
    resolver = _Resolver(s3, settings)
    boxes: dict[str, list[dict[str, Any]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    config_labels: list[str] = []
    label_names: list[str] = []
    failures: list[mf.Failure] = []
    skipped: dict[str, int] = defaultdict(int)
    artifacts: list[mf.AnnotationArtifact] = []
    converted = 0
    for obj in exports:
        config_etag = etags.get(str(PurePosixPath(obj.key).parent / CONFIG_NAME), "")
        made_from = {"v": CACHE_VERSION, "etag": obj.etag, "config_etag": config_etag,
                     "raw": f"{settings.raw_bucket}/{settings.raw_prefix}"}  # fmt: skip
        cache_key = _cache_key(obj.key)
        cached = _read(s3, settings.artifacts_bucket, cache_key)
        # an export whose images were not all there yet is resolved again: they may be now
        if cached and cached.get("made_from") == made_from and not cached["result"]["unresolved"]:
            result = cached["result"]
        else:
            result = _convert_one(s3, settings, obj, work, resolver)
            body = json.dumps({"made_from": made_from, "result": result}).encode()
            s3.put_object(Bucket=settings.artifacts_bucket, Key=cache_key, Body=body)
            converted += 1
        for key, found in result["boxes"].items():
            boxes[key] = found
            sizes[key] = tuple(result["sizes"][key])
        failures += [mf.Failure(**f) for f in result["failures"]]
        for name, count in result["skipped"].items():
            skipped[name] += count
        # the label configs come first (the newest export's first), then labels found only
        # in annotations, in the order the exports introduced them
        label_names += result["names"]
        config_labels = result["config_labels"] + config_labels
        if result["artifact"] is not None:
            artifacts.append(mf.AnnotationArtifact(**result["artifact"]))
    names = category_order(
        list(dict.fromkeys(config_labels + label_names)),
        (b["label"] for bs in boxes.values() for b in bs),
    )
    return {
        "boxes": boxes,
        "sizes": sizes,
        "categories": make_categories(names),
        "failures": failures,
        "skipped": dict(skipped),
        "artifacts": artifacts,
        "converted": converted,
        "reused": len(exports) - converted,
        "listed_prefixes": resolver.listed,
    }


def raw_coco(converted: dict[str, Any]) -> dict[str, Any]:
    """COCO in raw pixels, file_name = raw object key, with the stable category ids."""
    from pixelpipe.annotations.coco import coco_annotation, coco_doc, coco_image

    cat_id = {c["name"]: c["id"] for c in converted["categories"]}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id, key in enumerate(sorted(converted["boxes"]), 1):
        width, height = converted["sizes"][key]
        images.append(coco_image(image_id, key, width, height))
        for box in converted["boxes"][key]:
            anns.append(coco_annotation(len(anns) + 1, image_id, cat_id[box["label"]], box))
    return coco_doc(images, anns, converted["categories"])
