"""COCO boxes to Label Studio import tasks (boxes as predictions, scores kept) via the SDK."""

from __future__ import annotations

import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pixelpipe.annotations.coco import validate_coco
from pixelpipe.annotations.labelstudio import (
    choices_element,
    quiet_sdk,
    rectangle_config,
    xml_text,
)


def coco_to_ls(
    coco: Mapping[str, Any],
    image_url: Callable[[str], str],
    from_name: str = "label",
    to_name: str = "image",
    model_version: str = "pixelpipe",
    choices_name: str = "class",
) -> tuple[list[dict[str, Any]], str]:
    """Label Studio import tasks with the COCO boxes as predictions, and their label config.

    Each task has `data.image = image_url(file_name)` and one prediction carrying
    `model_version` and `score` (the mean of the boxes' `score` fields, 1.0 when the boxes
    carry none, i.e. they are ground truth); per-box scores go on the regions. The config
    holds the RectangleLabels control and an image-level multiple-choice Choices control
    named `choices_name` with one Choice per category, for the classifier to fill.
    """
    validate_coco(coco)
    slim = {
        "images": [
            {k: im[k] for k in ("id", "file_name", "width", "height")} for im in coco["images"]
        ],
        "categories": [{"id": c["id"], "name": c["name"]} for c in coco["categories"]],
        # Only boxes travel: segmentation or keypoints would make the SDK add other controls.
        "annotations": [
            {k: a[k] for k in ("id", "image_id", "category_id", "bbox")}
            for a in coco["annotations"]
        ],
    }
    sdk_tasks, sdk_config = _run_sdk_import(slim, to_name, from_name)
    images = sorted(coco["images"], key=lambda im: im["id"])
    anns_by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    tasks = [
        _fix_task(task, im, anns_by_image.get(im["id"], []), image_url, from_name, model_version)
        for task, im in zip(sdk_tasks, images, strict=True)
    ]
    return tasks, _fix_config(sdk_config, coco, from_name, to_name, choices_name)


def _run_sdk_import(
    slim: Mapping[str, Any], to_name: str, from_name: str
) -> tuple[list[dict[str, Any]], str]:
    if not slim["images"]:
        return [], rectangle_config([c["name"] for c in slim["categories"]], from_name, to_name)
    from label_studio_sdk.converter.imports.coco import convert_coco_to_ls

    with tempfile.TemporaryDirectory(prefix="pixelpipe-coco2ls-") as tmp:
        src, out = Path(tmp) / "coco.json", Path(tmp) / "tasks.json"
        src.write_text(json.dumps(slim), encoding="utf-8")
        with quiet_sdk():
            convert_coco_to_ls(
                str(src), str(out), to_name=to_name, from_name=from_name, out_type="predictions"
            )
        config = (Path(tmp) / "tasks.label_config.xml").read_text(encoding="utf-8")
        return json.loads(out.read_text(encoding="utf-8")), config


def _fix_task(
    task: Mapping[str, Any],
    image: Mapping[str, Any],
    anns: Sequence[Mapping[str, Any]],
    image_url: Callable[[str], str],
    from_name: str,
    model_version: str,
) -> dict[str, Any]:
    prediction = task["predictions"][0]
    results = []
    for k, (region, ann) in enumerate(zip(prediction["result"], anns, strict=True)):
        # The SDK names the control "<from_name>_rectangles"; our config uses from_name itself.
        # Its region ids are random uuids; ids derived from the COCO ids keep output reproducible.
        fixed = {**region, "from_name": from_name, "id": f"i{image['id']}r{k}"}
        if "score" in ann:
            fixed["score"] = float(ann["score"])
        results.append(fixed)
    scores = [float(a["score"]) for a in anns if "score" in a]
    return {
        "data": {**task["data"], "image": image_url(image["file_name"])},
        # LS rejects `ground_truth` on predictions; the SDK writes it anyway.
        "predictions": [
            {
                "model_version": model_version,
                "score": sum(scores) / len(scores) if scores else 1.0,
                "result": results,
            }
        ],
    }


def _fix_config(
    sdk_config: str, coco: Mapping[str, Any], from_name: str, to_name: str, choices_name: str
) -> str:
    root = ET.fromstring(sdk_config)
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    rects = list(root.iter("RectangleLabels"))
    if not rects:
        # Without any annotation the SDK writes no control at all.
        root = ET.fromstring(rectangle_config(names, from_name, to_name))
    for rect in rects:
        # The SDK writes from_name + "_rectangles" and hard-codes toName="image".
        rect.set("name", from_name)
        rect.set("toName", to_name)
    root.append(choices_element(names, choices_name, to_name))
    return xml_text(root)
