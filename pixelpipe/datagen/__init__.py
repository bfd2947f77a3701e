"""Synthetic learnable sample data: shapes on noisy backgrounds and a Label Studio export."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pixelpipe.annotations.labelstudio import rectangle_config
from pixelpipe.datagen.scenes import CLASSES as CLASSES
from pixelpipe.datagen.scenes import COLOURS_RGB as COLOURS_RGB
from pixelpipe.datagen.scenes import background, draw_shapes
from pixelpipe.imaging.boxes import Box

SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720), (1920, 1080), (4000, 3000))
PNG_EVERY = 5
LOCAL_FILES_TEMPLATE = "/data/local-files/?d=images/{name}"
FROM_NAME, TO_NAME = "label", "image"
_EPOCH = datetime(2024, 5, 1, 9, 0, 0)
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@dataclass(frozen=True)
class DatagenSummary:
    """What generate() wrote: counts, the class list and where the files are."""

    out_dir: Path
    images: int
    boxes: int
    classes: tuple[str, ...]
    export_path: Path
    label_config_path: Path
    image_paths: tuple[Path, ...]
    per_class: dict[str, int] = field(default_factory=dict)
    per_size: dict[str, int] = field(default_factory=dict)
    per_format: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (paths as strings, image paths left out)."""
        return {
            "out_dir": str(self.out_dir),
            "images": self.images,
            "boxes": self.boxes,
            "classes": list(self.classes),
            "export_path": str(self.export_path),
            "label_config_path": str(self.label_config_path),
            "per_class": self.per_class,
            "per_size": self.per_size,
            "per_format": self.per_format,
        }


@dataclass(frozen=True)
class _Rendered:
    name: str
    width: int
    height: int
    boxes: list[Box]


def image_name(index: int) -> str:
    """File name of the index-th image: round-robin sizes, every 5th one a PNG."""
    ext = "png" if index % PNG_EVERY == PNG_EVERY - 1 else "jpg"
    return f"synth_{index:05d}.{ext}"


def generate(
    out_dir: Path,
    count: int,
    seed: int,
    image_ref: Callable[[str], str] | str = LOCAL_FILES_TEMPLATE,
    workers: int = 1,
    sizes: Sequence[tuple[int, int]] = SIZES,
    progress: Callable[[int], None] | None = None,
) -> DatagenSummary:
    """Write count images, annotations/export.json and annotations/label_config.xml under out_dir.

    image_ref maps an image file name to the reference stored in each task's data.image: a
    callable, or a template with {name} (default Label Studio local files,
    "/data/local-files/?d=images/{name}"; e.g. "s3://bucket/prefix/{name}"). The same seed
    gives the same bytes; workers > 1 renders in spawned processes with identical output.
    sizes are the (width, height) images take in turn (default SIZES; tests ask for small ones).
    progress, when given, is called with 1 after each image is written (output unchanged).
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not sizes or any(w < 16 or h < 16 for w, h in sizes):
        raise ValueError(f"sizes must be (width, height) pairs of at least 16 px, got {sizes!r}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    rendered = _render_all(out_dir / "images", count, seed, workers, tuple(sizes), progress)
    to_ref = image_ref if callable(image_ref) else _template(image_ref)
    tasks = [_task(i, r, to_ref(r.name), seed) for i, r in enumerate(rendered)]
    export_path = out_dir / "annotations" / "export.json"
    export_path.write_text(json.dumps(tasks, indent=2) + "\n", encoding="utf-8")
    config_path = out_dir / "annotations" / "label_config.xml"
    config_path.write_text(rectangle_config(CLASSES, FROM_NAME, TO_NAME), encoding="utf-8")
    return _summary(out_dir, rendered, export_path, config_path)


def _template(template: str) -> Callable[[str], str]:
    if "{name}" not in template:
        raise ValueError(f"image_ref template {template!r} has no {{name}}")
    return lambda name: template.format(name=name)


def _render_all(
    image_dir: Path,
    count: int,
    seed: int,
    workers: int,
    sizes: tuple[tuple[int, int], ...],
    progress: Callable[[int], None] | None = None,
) -> list[_Rendered]:
    jobs = [(image_dir, seed, i, sizes[i % len(sizes)]) for i in range(count)]
    done: list[_Rendered] = []
    if workers <= 1 or count < 2:
        for job in jobs:
            done.append(_render_to_file(*job))
            if progress:
                progress(1)
        return done
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for result in pool.map(_render_to_file, *zip(*jobs, strict=True)):
            done.append(result)  # map keeps input order, so the export does not change
            if progress:
                progress(1)
    return done


def _render_to_file(image_dir: Path, seed: int, index: int, size: tuple[int, int]) -> _Rendered:
    name = image_name(index)
    width, height = size
    rng = np.random.default_rng([seed, index])
    image = background(rng, width, height)
    boxes = draw_shapes(rng, image)
    params = (
        [cv2.IMWRITE_PNG_COMPRESSION, 1]
        if name.endswith(".png")
        else [cv2.IMWRITE_JPEG_QUALITY, 92]
    )
    ok, buf = cv2.imencode(Path(name).suffix, image, params)
    if not ok:
        raise RuntimeError(f"cv2 could not encode {name}")
    (image_dir / name).write_bytes(buf.tobytes())
    return _Rendered(name, width, height, boxes)


# ---------------------------------------------------------------- Label Studio export


def _ls_id(rng: np.random.Generator) -> str:
    return "".join(_ID_CHARS[i] for i in rng.integers(0, len(_ID_CHARS), size=10))


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _result(rng: np.random.Generator, box: Box, width: int, height: int) -> dict[str, Any]:
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": box["x"] * 100 / width,
            "y": box["y"] * 100 / height,
            "width": box["w"] * 100 / width,
            "height": box["h"] * 100 / height,
            "rotation": 0,
            "rectanglelabels": [box["label"]],
        },
        "id": _ls_id(rng),
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": "rectanglelabels",
        "origin": "manual",
    }


def _task(index: int, r: _Rendered, ref: str, seed: int) -> dict[str, Any]:
    """One task exactly as a Label Studio JSON export writes it (one annotation, no drafts)."""
    rng = np.random.default_rng([seed, index, 1])
    created = _EPOCH + timedelta(seconds=37 * index)
    annotated = created + timedelta(seconds=int(rng.integers(60, 3600)))
    task_id = index + 1
    results = [_result(rng, b, r.width, r.height) for b in r.boxes]
    annotation = {
        "id": task_id,
        "completed_by": 1,
        "result": results,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": _stamp(annotated),
        "updated_at": _stamp(annotated),
        "draft_created_at": None,
        "lead_time": round(float(rng.uniform(3, 90)), 3),
        "prediction": {},
        "result_count": len(results),
        "unique_id": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": task_id,
        "project": 1,
        "updated_by": 1,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }
    return {
        "id": task_id,
        "annotations": [annotation],
        "file_upload": None,
        "drafts": [],
        "predictions": [],
        "data": {"image": ref},
        "meta": {},
        "created_at": _stamp(created),
        "updated_at": _stamp(annotated),
        "inner_id": task_id,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 0,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 1,
        "updated_by": 1,
        "comment_authors": [],
    }


def _summary(
    out_dir: Path, rendered: list[_Rendered], export_path: Path, config_path: Path
) -> DatagenSummary:
    per_class = Counter(b["label"] for r in rendered for b in r.boxes)
    return DatagenSummary(
        out_dir=out_dir,
        images=len(rendered),
        boxes=sum(len(r.boxes) for r in rendered),
        classes=CLASSES,
        export_path=export_path,
        label_config_path=config_path,
        image_paths=tuple(out_dir / "images" / r.name for r in rendered),
        per_class={c: per_class.get(c, 0) for c in CLASSES},
        per_size=dict(Counter(f"{r.width}x{r.height}" for r in rendered)),
        per_format=dict(Counter(Path(r.name).suffix.lstrip(".") for r in rendered)),
    )
