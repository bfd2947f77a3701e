"""Project raw-pixel boxes into variant pixels through recorded Stage 1 and Stage 2 geometry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pixelpipe.annotations.coco import coco_annotation, coco_doc, coco_image
from pixelpipe.imaging import augment, geometry
from pixelpipe.imaging.boxes import Box


def project_to_variant(
    raw_boxes: Sequence[Box], transform: Mapping[str, Any], geom: Mapping[str, Any]
) -> list[Box]:
    """Raw image pixels -> stage-1 copy (its transform record) -> variant (its geometry)."""
    moved = augment.project_boxes(list(raw_boxes), dict(transform))
    return geometry.project_boxes(moved, geometry.Geometry.from_dict(geom))


def variant_coco(
    stage2_items: Sequence[Mapping[str, Any]],
    stage1_by_uri: Mapping[str, Mapping[str, Any]],
    raw_boxes: Mapping[str, Sequence[Box]],
    categories: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Any], int]:
    """COCO for one variant's items; file_name is the object key. Returns (doc, unlabelled)."""
    cat_id = {c["name"]: c["id"] for c in categories}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    unlabelled = 0
    for item in sorted(stage2_items, key=lambda i: i["output_uri"]):
        raw_key = item["source_key"]
        if raw_key not in raw_boxes:
            unlabelled += 1  # never labelled: neither a positive nor a negative example
            continue
        stage1 = stage1_by_uri[item["source_uri"]]
        boxes = project_to_variant(raw_boxes[raw_key], stage1["transform"], item["geometry"])
        key = item["output_uri"].split("/", 3)[3]
        image_id = len(images) + 1
        # raw_sha256: the training split hashes content, so a re-upload keeps its side
        raw_sha = item.get("source_sha256") or stage1.get("source_sha256") or ""
        images.append(
            coco_image(
                image_id, key, item["width"], item["height"], raw_key=raw_key, raw_sha256=raw_sha
            )
        )
        for box in boxes:
            if box["label"] in cat_id:
                anns.append(coco_annotation(len(anns) + 1, image_id, cat_id[box["label"]], box))
    return coco_doc(images, anns, list(categories)), unlabelled


def digest_json(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
