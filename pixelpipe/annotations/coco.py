"""COCO documents for pixelpipe: the stable category id rule, building, reading and checking.

Category id rule (stable across runs): category ids are 1..N in the order the labels are
listed in the Label Studio label config (the order annotators see them; datagen writes its
fixed class list in that order). Labels that occur in annotations but not in the config go
after the config labels, sorted by name. Id 0 is never used, so detectors that reserve 0 for
background can take the ids as they are. `categories(names)` applies the rule to an ordered
name list; callers pass the config order (see `labelstudio.config_label_names`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pixelpipe.imaging.boxes import Box

BOX_TOLERANCE_PX = 1.0
DEFAULT_INFO = {"description": "pixelpipe", "version": "1.0", "contributor": "pixelpipe"}


def category_order(config_names: Sequence[str], seen_names: Iterable[str] = ()) -> list[str]:
    """Names in category-id order: config order first, then unseen-in-config names sorted."""
    ordered = list(dict.fromkeys(config_names))
    extra = sorted(set(seen_names) - set(ordered))
    return ordered + extra


def categories(names: Sequence[str]) -> list[dict[str, Any]]:
    """COCO categories with ids 1..N in the order given (duplicates keep their first place)."""
    unique = list(dict.fromkeys(names))
    if not unique:
        raise ValueError("categories: no label names given")
    for name in unique:
        if not isinstance(name, str) or not name:
            raise ValueError(f"categories: label name must be a non-empty string, got {name!r}")
    return [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(unique, 1)]


def coco_image(
    image_id: int, file_name: str, width: int, height: int, **extra: Any
) -> dict[str, Any]:
    """One COCO image entry; extra keys (e.g. ls_ref) are kept beside the standard ones."""
    return {"id": image_id, "file_name": file_name, "width": width, "height": height, **extra}


def coco_annotation(
    ann_id: int, image_id: int, category_id: int, box: Box, **extra: Any
) -> dict[str, Any]:
    """One COCO bbox annotation from a pixel Box (floats kept, no rounding)."""
    bbox = [float(box["x"]), float(box["y"]), float(box["w"]), float(box["h"])]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        "segmentation": [],
        **extra,
    }


def coco_doc(
    images: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO document from its three lists; no timestamps, so equal input gives equal JSON."""
    return {
        "info": dict(info or DEFAULT_INFO),
        "licenses": [],
        "images": list(images),
        "annotations": list(annotations),
        "categories": list(categories),
    }


def coco_from_boxes(
    boxes_by_file: Mapping[str, Sequence[Box]],
    sizes: Mapping[str, tuple[int, int]],
    names: Sequence[str],
) -> dict[str, Any]:
    """COCO from pixel boxes per file name; sizes maps file name to (width, height)."""
    cats = categories(
        category_order(names, (b["label"] for bs in boxes_by_file.values() for b in bs))
    )
    cat_id = {c["name"]: c["id"] for c in cats}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for image_id, (file_name, boxes) in enumerate(boxes_by_file.items(), 1):
        width, height = sizes[file_name]
        images.append(coco_image(image_id, file_name, width, height))
        for box in boxes:
            anns.append(coco_annotation(len(anns) + 1, image_id, cat_id[box["label"]], box))
    return coco_doc(images, anns, cats)


def boxes_from_coco(coco: Mapping[str, Any]) -> dict[str, list[Box]]:
    """Pixel boxes per image file_name (images without boxes map to an empty list)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    file_of = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list[Box]] = {im["file_name"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = (float(v) for v in ann["bbox"])
        out[file_of[ann["image_id"]]].append(
            Box(label=names[ann["category_id"]], x=x, y=y, w=w, h=h)
        )
    return out


def validate_coco(doc: Any) -> None:
    """Cheap structural checks; raises ValueError naming the first problem found."""
    if not isinstance(doc, Mapping):
        raise ValueError("COCO document must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"COCO document needs a list under {key!r}")
    cat_ids = _check_categories(doc["categories"])
    sizes = _check_images(doc["images"])
    _check_annotations(doc["annotations"], sizes, cat_ids)


def _unique_int_ids(items: Sequence[Any], what: str) -> list[int]:
    ids: list[int] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"{what}[{i}] is not an object")
        value = item.get("id")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{what}[{i}] has no integer id")
        ids.append(value)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} ids are not unique")
    return ids


def _check_categories(cats: Sequence[Any]) -> set[int]:
    ids = _unique_int_ids(cats, "categories")
    names = [c.get("name") for c in cats]
    if any(not isinstance(n, str) or not n for n in names):
        raise ValueError("every category needs a non-empty name")
    if len(set(names)) != len(names):
        raise ValueError("category names are not unique")
    return set(ids)


def _check_images(images: Sequence[Any]) -> dict[int, tuple[int, int]]:
    ids = _unique_int_ids(images, "images")
    sizes: dict[int, tuple[int, int]] = {}
    for image_id, im in zip(ids, images, strict=True):
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ValueError(f"image {image_id} has no file_name")
        w, h = im.get("width"), im.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise ValueError(f"image {image_id} needs positive integer width and height")
        sizes[image_id] = (w, h)
    return sizes


def _check_annotations(
    anns: Sequence[Any], sizes: Mapping[int, tuple[int, int]], cat_ids: set[int]
) -> None:
    _unique_int_ids(anns, "annotations")
    for ann in anns:
        ann_id = ann["id"]
        if ann.get("image_id") not in sizes:
            raise ValueError(f"annotation {ann_id} points at unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in cat_ids:
            raise ValueError(f"annotation {ann_id} has unknown category {ann.get('category_id')}")
        _check_bbox(ann_id, ann.get("bbox"), sizes[ann["image_id"]])


def _check_bbox(ann_id: int, bbox: Any, size: tuple[int, int]) -> None:
    ok = isinstance(bbox, list | tuple) and len(bbox) == 4
    if not ok or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox):
        raise ValueError(f"annotation {ann_id} bbox must be 4 finite numbers [x, y, w, h]")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise ValueError(f"annotation {ann_id} bbox has non-positive width or height")
    width, height = size
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise ValueError(
            f"annotation {ann_id} bbox {list(bbox)} lies outside its {width}x{height} image"
        )
