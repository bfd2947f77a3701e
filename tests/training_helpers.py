"""Datasets for the training tests: datagen scenes as stage 2 publishes them (variant JPEGs, one
COCO per partition, a dataset index), on the test stack's S3."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pixelpipe.annotations.coco import categories, coco_annotation, coco_doc, coco_image
from pixelpipe.annotations.labelstudio import ls_to_coco
from pixelpipe.datagen import CLASSES, SIZES, generate
from pixelpipe.imaging.boxes import Box, affine_boxes
from pixelpipe.imaging.decode import encode_jpeg
from pixelpipe.imaging.geometry import project_boxes
from pixelpipe.imaging.resize_cpu import process_file
from pixelpipe.imaging.variants import Variant
from pixelpipe.settings import Settings


# --- a dataset index like the one stage 2 publishes ------------------------------------------
@dataclass(frozen=True)
class VariantImage:
    """One normalized image: its JPEG bytes, the raw image it came from and its boxes."""

    name: str
    raw_key: str
    jpeg: bytes
    width: int
    height: int
    boxes: list[Box]
    raw_sha256: str = ""


def render_variant_images(
    out_dir: Path,
    raw_images: int,
    size: int,
    copies: int = 1,
    seed: int = 0,
    mode: str = "fit",
    sizes: Sequence[tuple[int, int]] = SIZES,
) -> list[VariantImage]:
    """datagen -> Label Studio export -> COCO -> size x size variant JPEGs; copy k>0 is turned."""
    summary = generate(out_dir, raw_images, seed, workers=2, sizes=sizes)
    coco = ls_to_coco(summary.export_path, summary.label_config_path).coco
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes: dict[int, list[Box]] = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes.setdefault(ann["image_id"], []).append(
            Box(label=names[ann["category_id"]], x=x, y=y, w=w, h=h)
        )
    variant = Variant("train", size, size, mode)  # type: ignore[arg-type]
    out: list[VariantImage] = []
    for im in coco["images"]:
        path = out_dir / "images" / Path(im["file_name"]).name
        rendered = process_file(str(path), [variant], 90).outputs[0]
        placed = project_boxes(boxes.get(im["id"], []), rendered.geometry)
        stem, sha = path.stem, hashlib.sha256(path.read_bytes()).hexdigest()
        out.append(VariantImage(f"{stem}__c0.jpg", f"incoming/{path.name}", rendered.jpeg,
                                size, size, placed, sha))  # fmt: skip
        for k in range(1, copies):
            out.append(_dihedral_copy(rendered.jpeg, placed, size, k, f"{stem}__c{k}.jpg",
                                      f"incoming/{path.name}", sha))  # fmt: skip
    return out


def _dihedral_copy(
    jpeg: bytes, boxes: list[Box], size: int, k: int, name: str, raw_key: str, sha: str
) -> VariantImage:
    """Copy k of a square image: rotated k*90 degrees counter-clockwise, mirrored when k >= 4.

    Stands in for stage 1's augmented copies (the shapes' labels survive any of these).
    """
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    turn = [[0.0, 1.0, 0.0], [-1.0, 0.0, float(size)], [0.0, 0.0, 1.0]]
    for _ in range(k % 4):
        rgb = np.rot90(rgb)
        boxes = affine_boxes(boxes, turn, size, size)
    if k >= 4:
        rgb = rgb[:, ::-1]
        boxes = affine_boxes(boxes, [[-1.0, 0.0, float(size)], [0.0, 1.0, 0.0]], size, size)
    jpeg = encode_jpeg(np.ascontiguousarray(rgb))
    return VariantImage(name, raw_key, jpeg, size, size, boxes, sha)


def publish_dataset(
    settings: Settings,
    s3: Any,
    variant: str,
    images: Sequence[VariantImage],
    partitions: int = 2,
    mode: str = "fit",
) -> str:
    """Upload images, one COCO file per partition and the index; return the index URI."""
    cats = categories(CLASSES)
    cat_id = {c["name"]: c["id"] for c in cats}
    bucket, artifacts = settings.normalized_bucket, settings.artifacts_bucket
    entries: list[dict[str, Any]] = []
    for p in range(partitions):
        part = f"b-20261125T0000{p:02d}-{secrets.token_hex(5)}"
        doc_images, doc_anns = [], []
        for image_id, im in enumerate(images[p::partitions], 1):
            key = f"{variant}/{part}/{im.name}"
            s3.put_object(Bucket=bucket, Key=key, Body=im.jpeg, ContentType="image/jpeg")
            doc_images.append(coco_image(image_id, key, im.width, im.height, raw_key=im.raw_key,
                                         raw_sha256=im.raw_sha256))  # fmt: skip
            for box in im.boxes:
                ann = coco_annotation(len(doc_anns) + 1, image_id, cat_id[box["label"]], box)
                doc_anns.append(ann)
        coco_key = f"coco/{variant}/{part}.json"
        body = json.dumps(coco_doc(doc_images, doc_anns, cats)).encode()
        s3.put_object(Bucket=artifacts, Key=coco_key, Body=body)
        entries.append({
            "partition": part,
            "coco_uri": f"s3://{artifacts}/{coco_key}",
            "manifest_uri": f"s3://{bucket}/_manifests/normalized_images/{part}/manifest-x.json",
            "images": len(doc_images),
            "annotations": len(doc_anns),
        })  # fmt: skip
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    index = {
        "schema_version": 1,
        "variant": variant,
        "width": images[0].width,
        "height": images[0].height,
        "mode": mode,
        "bucket": bucket,
        "categories": [{"id": c["id"], "name": c["name"]} for c in cats],
        "partitions": entries,
        "images": sum(e["images"] for e in entries),
        "annotations": sum(e["annotations"] for e in entries),
        "digest": digest,
        "created_at": "2026-11-25T00:18:37+00:00",
    }
    index_key = f"datasets/{variant}/index.json"
    s3.put_object(Bucket=artifacts, Key=index_key, Body=json.dumps(index).encode())
    return f"s3://{artifacts}/{index_key}"


@dataclass(frozen=True)
class Published:
    """A published dataset: its variant name, index URI and images."""

    variant: str
    uri: str
    images: list[VariantImage]


def publish_scenes(settings: Settings, s3: Any, out_dir: Path, raw_images: int, size: int,
                   copies: int = 1, seed: int = 0, mode: str = "fit") -> Published:  # fmt: skip
    """Render datagen scenes into a fresh variant and publish them with their index."""
    variant = f"t{secrets.token_hex(3)}-{mode}"
    images = render_variant_images(out_dir, raw_images, size, copies, seed, mode)
    return Published(variant, publish_dataset(settings, s3, variant, images, mode=mode), images)
