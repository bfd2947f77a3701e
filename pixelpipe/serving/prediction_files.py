"""A predictions document as files other tools read: COCO results and Label Studio imports.

COCO: `coco_images(doc)` is a COCO document with the scored images (ids 1..N, `file_name` the
record's path, size in source pixels) and the categories, no annotations; `coco_results(doc)`
is the standard results list `[{image_id, category_id, bbox, score}]` against those ids, with
every detection over the score floor (what mAP needs). Category ids follow annotations/coco.py:
1..N in the model's label order, which is the training COCO's category-id order.

Label Studio: `ls_import(doc, image_url)` gives a detector's boxes as RectangleLabels
pre-annotations, only those over their class's threshold, and a classifier's labels as
Choices (serving.predictions.ls_choices_import).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pixelpipe.annotations.coco import categories, coco_doc, coco_image
from pixelpipe.serving.detections import best_per_box
from pixelpipe.serving.predictions import ls_choices_import, threshold_of

Doc = Mapping[str, Any]


def _scored(doc: Doc) -> list[Mapping[str, Any]]:
    """The records that have a result (failed images have none)."""
    return [r for r in doc["predictions"] if not r.get("error") and r.get("scores") is not None]


def _sized(doc: Doc) -> list[Mapping[str, Any]]:
    records = _scored(doc)
    for record in records:
        if not (record.get("width") and record.get("height")) or record.get("detections") is None:
            raise ValueError(
                f"record {record['path']!r} has no detections with an image size: COCO results "
                f"and box pre-annotations need a detector's predictions (task {doc.get('task')!r})"
            )
    return records


def coco_images(doc: Doc) -> dict[str, Any]:
    """The COCO document that coco_results' image and category ids resolve against."""
    images = [
        coco_image(i, r["path"], int(r["width"]), int(r["height"]))
        for i, r in enumerate(_sized(doc), 1)
    ]
    return coco_doc(images, [], categories(doc["labels"]))


def coco_results(doc: Doc) -> list[dict[str, Any]]:
    """Every detection as a COCO result, ids as in coco_images(doc)."""
    cat_id = {c["name"]: c["id"] for c in categories(doc["labels"])}
    out = []
    for image_id, record in enumerate(_sized(doc), 1):
        for d in record["detections"]:
            bbox = [float(v) for v in d["box"]]
            out.append(
                {
                    "image_id": image_id,
                    "category_id": cat_id[d["label"]],
                    "bbox": bbox,
                    "score": float(d["score"]),
                }
            )
    return out


def rectangle_result(
    box: Sequence[float],
    label: str,
    width: int,
    height: int,
    score: float,
    result_id: str,
    from_name: str = "label",
    to_name: str = "image",
) -> dict[str, Any]:
    """One Label Studio rectanglelabels result from a pixel box [x, y, w, h] on a WxH image."""
    x, y, w, h = (float(v) for v in box)
    return {
        "id": result_id,
        "from_name": from_name,
        "to_name": to_name,
        "type": "rectanglelabels",
        "value": {
            "x": x * 100 / width,
            "y": y * 100 / height,
            "width": w * 100 / width,
            "height": h * 100 / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "score": score,
    }


def ls_rectangles_import(
    doc: Doc,
    image_url: Callable[[str], str],
    from_name: str = "label",
    to_name: str = "image",
    data_key: str = "image",
) -> list[dict[str, Any]]:
    """Label Studio tasks whose prediction holds the detector's boxes over their thresholds.

    Each box carries its best label only. The control names match `rectangle_config()` and
    datagen's label config (`<RectangleLabels name="label" toName="image">`). The
    prediction's score is the mean score of the boxes it holds, or 1 - the best box score when
    none passes (how sure the model is that nothing is there); `model_version` is
    "<model_name>/<model_version>". Failed images are left out.
    """
    version = f"{doc['model_name']}/{doc['model_version']}"
    tasks = []
    for i, record in enumerate(_sized(doc)):
        width, height = int(record["width"]), int(record["height"])
        boxes = best_per_box(record["detections"])
        kept = [d for d in boxes if d["score"] > threshold_of(doc, d["label"])]
        result = [
            rectangle_result(
                d["box"],
                d["label"],
                width,
                height,
                float(d["score"]),
                f"p{i}r{k}",
                from_name,
                to_name,
            )  # fmt: skip
            for k, d in enumerate(kept)
        ]
        if kept:
            score = sum(float(d["score"]) for d in kept) / len(kept)
        else:
            score = 1.0 - max((float(d["score"]) for d in record["detections"]), default=0.0)
        prediction = {"model_version": version, "score": score, "result": result}
        tasks.append({"data": {data_key: image_url(record["path"])}, "predictions": [prediction]})
    return tasks


def ls_import(doc: Doc, image_url: Callable[[str], str]) -> list[dict[str, Any]]:
    """The Label Studio import for a predictions document: boxes for a detector, else Choices."""
    if doc.get("task") == "detection":
        return ls_rectangles_import(doc, image_url)
    version = f"{doc['model_name']}/{doc['model_version']}"
    return ls_choices_import(list(doc["predictions"]), image_url, version)


def over_threshold_count(doc: Doc) -> int:
    """How many detections go to Label Studio (over their class's threshold)."""
    return sum(
        1
        for r in _scored(doc)
        for d in r.get("detections") or []
        if d["score"] > threshold_of(doc, d["label"])
    )
