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
from pixelpipe.imaging.boxes import Box

# Fixed order: this is the category list (category ids 1..N follow it, see annotations/coco.py).
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720), (1920, 1080), (4000, 3000))
PNG_EVERY = 5
BG_GRID = 8
COLOURS_RGB: tuple[tuple[int, int, int], ...] = (
    (225, 35, 35),
    (35, 190, 60),
    (40, 80, 235),
    (245, 215, 30),
    (215, 45, 215),
    (250, 250, 250),
    (15, 15, 15),
)
SHAPE_FRACTION = (0.08, 0.30)
MAX_SHAPES = 4
LOCAL_FILES_TEMPLATE = "/data/local-files/?d=images/{name}"
FROM_NAME, TO_NAME = "label", "image"
_EPOCH = datetime(2024, 5, 1, 9, 0, 0)
_SHIFT = 4  # cv2 sub-pixel bits: vertices are drawn at 1/16 px precision
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
    image = _background(rng, width, height)
    boxes = _draw_shapes(rng, image)
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


# ---------------------------------------------------------------- backgrounds


def _smooth_noise(
    rng: np.random.Generator, width: int, height: int, cells: int, amp: float
) -> np.ndarray:
    """Colour noise with about `cells` blobs along the long side, at width x height (float32)."""
    gh = max(2, cells * height // max(width, height))
    gw = max(2, cells * width // max(width, height))
    small = rng.uniform(-amp, amp, size=(gh, gw, 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Noise or gradient background, built on a grid 1/8 the size and upscaled once as uint8.

    Doing the arithmetic on the small grid keeps a 4000x3000 background cheap; the cubic
    upscale of the fine noise gives texture a few pixels across.
    """
    sw, sh = max(2, width // BG_GRID), max(2, height // BG_GRID)
    if rng.random() < 0.5:
        base = rng.uniform(70, 180, size=3).astype(np.float32)
        layer = base + _smooth_noise(rng, sw, sh, int(rng.integers(4, 12)), 45.0)
    else:
        layer = _gradient(rng, sw, sh)
    texture = rng.uniform(-18, 18, size=(sh, sw, 3)).astype(np.float32)
    small = np.clip(layer + texture, 0, 255).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    c0, c1 = rng.uniform(50, 200, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx / width * np.cos(angle) + yy / height * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 + (c1 - c0) * t[..., None]


# ---------------------------------------------------------------- shapes


def _unit_polygon(label: str, angle: float) -> np.ndarray:
    """Vertices of a shape of radius 1 around the origin, rotated by angle (radians)."""
    if label == "square":
        theta = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif label == "triangle":
        theta = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif label == "star":
        theta = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    elif label == "cross":
        a = 1 / 3
        pts = np.array(
            [
                (-a, -1),
                (a, -1),
                (a, -a),
                (1, -a),
                (1, a),
                (a, a),
                (a, 1),
                (-a, 1),
                (-a, a),
                (-1, a),
                (-1, -a),
                (-a, -a),
            ],
            dtype=np.float64,
        )
    else:
        raise ValueError(f"no polygon for {label!r}")
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T


def _draw_shapes(rng: np.random.Generator, image: np.ndarray) -> list[Box]:
    height, width = image.shape[:2]
    short = min(width, height)
    boxes: list[Box] = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        radius = rng.uniform(*SHAPE_FRACTION) * short / 2
        colour = COLOURS_RGB[int(rng.integers(len(COLOURS_RGB)))]
        pts = (
            None if label == "circle" else _unit_polygon(label, rng.uniform(0, 2 * np.pi)) * radius
        )
        lo, hi = (
            (np.array([-radius, -radius]), np.array([radius, radius]))
            if pts is None
            else (
                pts.min(axis=0),
                pts.max(axis=0),
            )
        )
        centre = _place(rng, lo, hi, width, height, boxes)
        if centre is None:
            continue
        _fill(image, label, centre, radius, pts, colour[::-1])
        x0, y0 = centre + lo
        w, h = hi - lo
        boxes.append(
            Box(
                label=label,
                x=round(float(x0), 3),
                y=round(float(y0), 3),
                w=round(float(w), 3),
                h=round(float(h), 3),
            )
        )
    return boxes


def _place(
    rng: np.random.Generator,
    lo: np.ndarray,
    hi: np.ndarray,
    width: int,
    height: int,
    boxes: list[Box],
) -> np.ndarray | None:
    """A centre that keeps the shape inside the image and clear of the boxes drawn so far."""
    margin = 2.0
    for _ in range(30):
        cx = rng.uniform(margin - lo[0], width - margin - hi[0])
        cy = rng.uniform(margin - lo[1], height - margin - hi[1])
        x0, y0, x1, y1 = cx + lo[0], cy + lo[1], cx + hi[0], cy + hi[1]
        if all(
            x1 < b["x"] or b["x"] + b["w"] < x0 or y1 < b["y"] or b["y"] + b["h"] < y0
            for b in boxes
        ):
            return np.array([cx, cy])
    return None


def _fill(
    image: np.ndarray,
    label: str,
    centre: np.ndarray,
    radius: float,
    pts: np.ndarray | None,
    colour_bgr: tuple[int, int, int],
) -> None:
    scale = 1 << _SHIFT
    if pts is None:
        c = (int(round(centre[0] * scale)), int(round(centre[1] * scale)))
        cv2.circle(image, c, int(round(radius * scale)), colour_bgr, -1, cv2.LINE_AA, _SHIFT)
        return
    poly = np.round((pts + centre) * scale).astype(np.int32)
    cv2.fillPoly(image, [poly], colour_bgr, cv2.LINE_AA, _SHIFT)


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
