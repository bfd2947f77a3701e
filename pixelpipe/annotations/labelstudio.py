"""Label Studio exports to COCO through the SDK converter, and the label configs both sides use."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelpipe.annotations.coco import (
    categories,
    category_order,
    coco_annotation,
    coco_doc,
    coco_image,
    validate_coco,
)
from pixelpipe.annotations.refs import RefError, ref_path
from pixelpipe.imaging.boxes import Box, clip_boxes, rotated_envelope

RECT_TYPE = "rectanglelabels"
TOKEN_PREFIX = "pixelpipe-task-"
_TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"(\d+)$")

Tasks = Sequence[Mapping[str, Any]]
ExportSource = str | Path | Tasks


@dataclass
class ConversionResult:
    """What ls_to_coco produced: the COCO doc, pixel boxes per LS ref and what it left out."""

    coco: dict[str, Any]
    boxes_by_ref: dict[str, list[Box]]
    skipped: dict[str, int]
    label_config: str
    unsized_refs: list[str] = field(default_factory=list)

    @property
    def category_names(self) -> list[str]:
        """Category names in id order (id 1 first)."""
        return [c["name"] for c in sorted(self.coco["categories"], key=lambda c: c["id"])]


@dataclass(frozen=True)
class _ConfigInfo:
    rect_controls: tuple[str, ...]
    label_names: tuple[str, ...]
    data_key: str


# ---------------------------------------------------------------- label configs


def rectangle_config(
    labels: Sequence[str],
    from_name: str = "label",
    to_name: str = "image",
    data_key: str = "image",
    choices_name: str | None = None,
) -> str:
    """A label config: one Image, one RectangleLabels control and optionally image-level Choices."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=to_name, value=f"${data_key}")
    rect = ET.SubElement(view, "RectangleLabels", name=from_name, toName=to_name)
    for label in dict.fromkeys(labels):
        ET.SubElement(rect, "Label", value=label)
    if choices_name:
        view.append(choices_element(labels, choices_name, to_name))
    return xml_text(view)


def choices_element(labels: Sequence[str], name: str, to_name: str) -> ET.Element:
    """An image-level multiple-choice Choices control with one Choice per label."""
    choices = ET.Element("Choices", name=name, toName=to_name, choice="multiple", showInline="true")
    for label in dict.fromkeys(labels):
        ET.SubElement(choices, "Choice", value=label)
    return choices


def xml_text(root: ET.Element) -> str:
    """An element as indented XML text ending in a newline."""
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _parse_config(config: str) -> _ConfigInfo:
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ValueError(f"label config is not valid XML: {exc}") from exc
    images = {e.get("name"): e.get("value", "") for e in root.iter() if e.tag.lower() == "image"}
    rects = [e for e in root.iter() if e.tag.lower() == "rectanglelabels"]
    if not rects:
        raise ValueError("label config has no RectangleLabels control")
    names = [lab.get("value", "") for r in rects for lab in r if lab.tag.lower() == "label"]
    image_value = images.get(rects[0].get("toName"), next(iter(images.values()), "$image"))
    return _ConfigInfo(
        rect_controls=tuple(r.get("name", "") for r in rects),
        label_names=tuple(dict.fromkeys(n for n in names if n)),
        data_key=image_value.lstrip("$") or "image",
    )


def config_label_names(config: str) -> list[str]:
    """RectangleLabels label names in config order (the category id order, see coco.py)."""
    return list(_parse_config(config).label_names)


def label_config_from_export(tasks: Tasks) -> str:
    """A label config for an export: its rectangle labels (sorted) under the names it uses."""
    from_names: Counter[str] = Counter()
    to_names: Counter[str] = Counter()
    labels: set[str] = set()
    for task in tasks:
        for result in _results(task):
            if result.get("type") == RECT_TYPE:
                from_names[result.get("from_name", "label")] += 1
                to_names[result.get("to_name", "image")] += 1
                labels.update(result.get("value", {}).get(RECT_TYPE, []))
    if not labels:
        raise ValueError("export has no rectanglelabels results to build a label config from")
    view = ET.Element("View")
    to_name = to_names.most_common(1)[0][0]
    ET.SubElement(view, "Image", name=to_name, value=f"${_data_key_of(tasks)}")
    for from_name in sorted(from_names):
        rect = ET.SubElement(view, "RectangleLabels", name=from_name, toName=to_name)
        for label in sorted(labels):
            ET.SubElement(rect, "Label", value=label)
    return xml_text(view)


def _data_key_of(tasks: Tasks) -> str:
    for task in tasks:
        data = task.get("data", {})
        if "image" in data:
            return "image"
        for key, value in data.items():
            if isinstance(value, str):
                return str(key)
    return "image"


def _results(task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for ann in task.get("annotations", []) for r in ann.get("result", [])]


def _unrotate_value(value: Mapping[str, Any], width: float, height: float) -> dict[str, Any] | None:
    """LS percent value with rotation replaced by its clipped pixel-space envelope."""
    px = (value["x"] * width / 100, value["y"] * height / 100)
    size = (value["width"] * width / 100, value["height"] * height / 100)
    ex, ey, ew, eh = rotated_envelope(*px, *size, float(value.get("rotation") or 0))
    clipped = clip_boxes([Box(label="", x=ex, y=ey, w=ew, h=eh)], int(width), int(height), 0.0)
    if not clipped:
        return None
    b = clipped[0]
    return {
        **value,
        "x": b["x"] * 100 / width,
        "y": b["y"] * 100 / height,
        "width": b["w"] * 100 / width,
        "height": b["h"] * 100 / height,
        "rotation": 0,
    }


# ---------------------------------------------------------------- LS -> COCO


def load_export(source: ExportSource) -> list[dict[str, Any]]:
    """Tasks of a Label Studio JSON export from a path or an in-memory list."""
    if isinstance(source, str | Path):
        data = json.loads(Path(source).read_text(encoding="utf-8"))
        return [data] if isinstance(data, dict) else list(data)
    return [dict(t) for t in source]


def _pick_annotation(task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The annotation that counts: ground truth if any, else the latest; never a cancelled one."""
    live = [
        a for a in task.get("annotations", []) if not (a.get("was_cancelled") or a.get("skipped"))
    ]
    if not live:
        return None
    ranked = sorted(
        enumerate(live),
        key=lambda p: (bool(p[1].get("ground_truth")), str(p[1].get("created_at") or ""), p[0]),
    )
    picked: Mapping[str, Any] = ranked[-1][1]
    return picked


def _task_size(annotation: Mapping[str, Any] | None) -> tuple[int, int] | None:
    for result in (annotation or {}).get("result", []):
        w, h = result.get("original_width"), result.get("original_height")
        if w and h:
            return int(w), int(h)
    return None


def _filter_result(
    result: Mapping[str, Any], info: _ConfigInfo, skipped: Counter[str]
) -> dict[str, Any] | None:
    kind = result.get("type") or "unknown"
    if kind != RECT_TYPE:
        skipped[kind] += 1
        return None
    value = result.get("value") or {}
    width, height = result.get("original_width"), result.get("original_height")
    problem = None
    if result.get("from_name") not in info.rect_controls:
        problem = "unknown_control"
    elif not value.get(RECT_TYPE):
        problem = "no_label"
    elif not (width and height):
        problem = "no_size"
    elif not all(k in value for k in ("x", "y", "width", "height")):
        problem = "no_geometry"
    elif float(value.get("rotation") or 0) % 360 != 0:
        # The SDK rotates in percent units, which skews boxes on non-square images, so the
        # envelope is taken here in pixels and handed to the SDK unrotated.
        value = _unrotate_value(value, float(width), float(height))
        problem = None if value else "outside_image"
    if problem:
        skipped[f"{RECT_TYPE}:{problem}"] += 1
        return None
    return {**result, "value": {**value, "rotation": 0}}


def _filtered_task(
    index: int, task: Mapping[str, Any], info: _ConfigInfo, skipped: Counter[str]
) -> dict[str, Any]:
    annotation = _pick_annotation(task)
    kept = []
    if annotation is not None:
        for result in annotation.get("result", []):
            item = _filter_result(result, info, skipped)
            if item is not None:
                kept.append(item)
    # A token instead of the real ref keeps the SDK off the network and lets us map its
    # images back to tasks whatever it does with paths.
    out: dict[str, Any] = {
        "id": task.get("id", index),
        "data": {info.data_key: f"{TOKEN_PREFIX}{index}"},
    }
    out["annotations"] = [] if annotation is None else [{**annotation, "result": kept}]
    return out


def _run_sdk_export(filtered: list[dict[str, Any]], config: str) -> dict[str, Any]:
    # Imported here: the SDK takes over a second to import and datagen workers never need it.
    from label_studio_sdk.converter import Converter

    with tempfile.TemporaryDirectory(prefix="pixelpipe-ls2coco-") as tmp:
        src = Path(tmp) / "export.json"
        src.write_text(json.dumps(filtered), encoding="utf-8")
        converter = Converter(config=config, project_dir=tmp, download_resources=False)
        with quiet_sdk():
            converter.convert(str(src), str(Path(tmp) / "out"), "COCO", is_dir=False)
        doc: dict[str, Any] = json.loads((Path(tmp) / "out" / "result.json").read_text("utf-8"))
        return doc


@contextlib.contextmanager
def quiet_sdk() -> Any:
    """The SDK logs a line per unannotated task and prints import hints to stdout."""
    logger = logging.getLogger("root")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _default_file_name(ref: str) -> str:
    try:
        return ref_path(ref)
    except RefError:
        return ref


def ls_to_coco(
    export: ExportSource,
    label_config: str | Path | None = None,
    file_name: Callable[[str], str] | None = None,
) -> ConversionResult:
    """Convert a Label Studio export's rectangles to COCO with pixelpipe's category ids.

    Only RectangleLabels results are converted; every other result type (polygonlabels,
    keypointlabels, choices, ...) is counted in `skipped` by type, as are rectangles that
    cannot convert (`rectanglelabels:<why>`). Per task one annotation counts: a ground-truth
    one, else the latest by created_at; cancelled annotations never. A rotated rectangle
    becomes the axis-aligned envelope of its four corners, computed in pixels: Label Studio
    stores x/y as the top-left corner before rotation and rotates clockwise about that
    corner. The envelope is clipped to the image. Multi-label rectangles take the first label.

    The SDK converter does the percent -> pixel conversion (floats, not rounded); its
    0-based, sorted-name category ids are then replaced by the stable rule in coco.py. Each
    COCO image keeps the task's original reference as `ls_ref` and its task id as
    `ls_task_id`; `file_name` defaults to the path the ref names (refs.ref_path). Tasks
    whose image size is unknown (no result with original_width/height) are left out of the
    COCO and listed in `unsized_refs`.
    """
    tasks = load_export(export)
    config = (
        _config_text(label_config) if label_config is not None else label_config_from_export(tasks)
    )
    info = _parse_config(config)
    skipped: Counter[str] = Counter()
    refs: list[str | None] = []
    filtered: list[dict[str, Any]] = []
    for index, task in enumerate(tasks):
        ref = task.get("data", {}).get(info.data_key)
        refs.append(ref if isinstance(ref, str) else None)
        if refs[-1] is None:
            skipped["task:no_image_ref"] += 1
        filtered.append(_filtered_task(index, task, info, skipped))
    sdk = _run_sdk_export(filtered, config)
    return _postprocess(sdk, tasks, refs, info, config, skipped, file_name or _default_file_name)


def _config_text(config: str | Path) -> str:
    if isinstance(config, Path) or not config.lstrip().startswith("<"):
        return Path(config).read_text(encoding="utf-8")
    return config


def _postprocess(
    sdk: Mapping[str, Any],
    tasks: list[dict[str, Any]],
    refs: list[str | None],
    info: _ConfigInfo,
    config: str,
    skipped: Counter[str],
    file_name: Callable[[str], str],
) -> ConversionResult:
    sdk_names = {c["id"]: c["name"] for c in sdk["categories"]}
    task_of_image = {im["id"]: _token_index(im["file_name"]) for im in sdk["images"]}
    sizes = {task_of_image[im["id"]]: (im["width"], im["height"]) for im in sdk["images"]}
    boxes_by_task: dict[int, list[Box]] = {}
    for ann in sdk["annotations"]:
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = Box(label=sdk_names[ann["category_id"]], x=x, y=y, w=w, h=h)
        boxes_by_task.setdefault(task_of_image[ann["image_id"]], []).append(box)
    used = {b["label"] for bs in boxes_by_task.values() for b in bs}
    cats = categories(category_order(info.label_names, used))
    cat_id = {c["name"]: c["id"] for c in cats}

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    boxes_by_ref: dict[str, list[Box]] = {}
    unsized: list[str] = []
    for index, ref in enumerate(refs):
        if ref is None:
            continue
        width, height = sizes.get(index) or (None, None)
        if not (width and height):
            width, height = _task_size(_pick_annotation(tasks[index])) or (None, None)
        if not (width and height):
            unsized.append(ref)
            continue
        image_id = len(images) + 1
        task_id = tasks[index].get("id")
        images.append(
            coco_image(
                image_id, file_name(ref), int(width), int(height), ls_ref=ref, ls_task_id=task_id
            )
        )
        boxes = boxes_by_task.get(index, [])
        for box in boxes:
            anns.append(coco_annotation(len(anns) + 1, image_id, cat_id[box["label"]], box))
        boxes_by_ref.setdefault(ref, []).extend(boxes)
    doc = coco_doc(images, anns, cats)
    validate_coco(doc)
    return ConversionResult(doc, boxes_by_ref, dict(sorted(skipped.items())), config, unsized)


def _token_index(sdk_file_name: str) -> int:
    match = _TOKEN.search(str(sdk_file_name))
    if match is None:
        raise RuntimeError(f"SDK COCO image {sdk_file_name!r} lost the task token")
    return int(match.group(1))
