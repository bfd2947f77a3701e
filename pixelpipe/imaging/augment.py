"""Declarative albumentations specs, seeded augmentation, and the geometry each sample applied."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from pixelpipe.imaging.boxes import Box, affine_boxes, clip_boxes
from pixelpipe.imaging.transform_matrices import GEOMETRY, GeometryStep, geometry_steps

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2  # noqa: E402

DEFAULT_SPEC: list[dict[str, Any]] = [
    {"name": "HorizontalFlip", "p": 0.5},
    {
        "name": "Affine",
        "p": 0.7,
        "scale": [0.9, 1.1],
        "rotate": [-10, 10],
        "translate_percent": [-0.05, 0.05],
    },
    {"name": "RandomBrightnessContrast", "p": 0.5},
]

_REFLECT_BORDERS = frozenset({cv2.BORDER_REFLECT, cv2.BORDER_REFLECT_101})
_DRY_RUN_SHAPE = (48, 64, 3)
_LABELS = "labels"


class TransformRecord(BaseModel):
    """What one augmented sample did: enough to replay its geometry on boxes that arrive later.

    matrix maps continuous input pixel coordinates (pixel i spans [i, i+1)) to output ones; steps
    holds each geometric step with the size it produced, so boxes can be clipped where
    albumentations clipped them (this matters only when a crop precedes a rotation).
    """

    seed: int
    spec_digest: str
    input_width: int
    input_height: int
    output_width: int
    output_height: int
    matrix: list[list[float]]
    applied: list[str] = []
    steps: list[GeometryStep] = []


@dataclass
class AugmentResult:
    """One augmented image, its moved boxes and the record of what was done."""

    image: npt.NDArray[np.uint8]
    boxes: list[Box]
    record: TransformRecord


# ---------------------------------------------------------------- spec loading and checking


def load_spec(value: str | None) -> list[dict[str, Any]]:
    """Spec from None (default), inline JSON or a .json/.yaml/.yml path; ValueError says why not."""
    if value is None or not value.strip():
        return [dict(item) for item in DEFAULT_SPEC]
    text = value.strip()
    if text[0] in "[{":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"augmentation spec is not valid JSON: {exc}") from exc
    else:
        raw = _read_spec_file(Path(text))
    spec = _as_list(raw)
    validate_spec(spec)
    return spec


def _read_spec_file(path: Path) -> Any:
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise ValueError(f"augmentation spec {path} must be inline JSON or a .json/.yaml/.yml file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read augmentation spec {path}: {exc.strerror or exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"augmentation spec {path} is not valid JSON: {exc}") from exc
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"augmentation spec {path} is not valid YAML: {exc}") from exc


def _as_list(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, dict):
        if "transforms" not in raw:
            raise ValueError('augmentation spec object needs a "transforms" list')
        raw = raw["transforms"]
    if not isinstance(raw, list):
        raise ValueError("augmentation spec must be a list of transforms")
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"augmentation spec item {index} must be an object with a 'name'")
    return [dict(item) for item in raw]


def validate_spec(spec: Sequence[dict[str, Any]]) -> None:
    """Build and dry-run every transform so a bad spec fails before any image is touched."""
    _build_transforms(spec, dry_run=True)


def spec_digest(spec: Sequence[dict[str, Any]]) -> str:
    """First 16 hex chars of the sha256 of the spec's canonical JSON."""
    canonical = json.dumps(list(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def seed_for(key: str, copy_index: int, digest: str) -> int:
    """Deterministic 32-bit seed for one copy of one source under one spec."""
    material = f"{key}\x00{copy_index}\x00{digest}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:4], "big")


def _transform_class(name: str) -> type[A.BasicTransform]:
    cls = getattr(A, name, None)
    if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
        raise ValueError(f"augmentation {name!r} is not an albumentations transform")
    if cls in (A.BasicTransform, A.DualTransform, A.ImageOnlyTransform):
        raise ValueError(f"augmentation {name!r} is an abstract base, not a transform")
    if issubclass(cls, A.DualTransform) and name not in GEOMETRY:
        raise ValueError(
            f"augmentation {name!r} moves or removes pixels in a way a 3x3 matrix cannot record, "
            f"so boxes could not be projected; supported geometric transforms: "
            f"{', '.join(sorted(GEOMETRY))}"
        )
    return cls


def _build_one(item: dict[str, Any], dry_run: bool) -> A.BasicTransform:
    name = item["name"]
    cls = _transform_class(name)
    kwargs = {k: v for k, v in item.items() if k != "name"}
    if kwargs.get("rotate_method", "largest_box") != "largest_box":
        raise ValueError(f"augmentation {name!r}: rotate_method must be 'largest_box'")
    if kwargs.get("pad_if_needed"):
        raise ValueError(f"augmentation {name!r}: pad_if_needed is not supported; use PadIfNeeded")
    if "rotate_method" in inspect.signature(cls.__init__).parameters:
        # The corner envelope is what project_boxes reproduces; say so rather than rely on defaults.
        kwargs["rotate_method"] = "largest_box"
    try:
        with warnings.catch_warnings():
            # Unknown arguments only warn without strict mode; they are turned into errors below.
            warnings.simplefilter("ignore", UserWarning)
            transform = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"augmentation {name!r}: {_short(exc)}") from exc
    unknown = getattr(transform, "invalid_args", None)
    if unknown:
        raise ValueError(f"augmentation {name!r}: unknown argument(s) {', '.join(unknown)}")
    if getattr(transform, "border_mode", None) in _REFLECT_BORDERS:
        raise ValueError(
            f"augmentation {name!r}: reflecting border modes mirror boxes into copies; "
            "use border_mode 0 (constant) or 1 (replicate)"
        )
    if getattr(transform, "crop_border", False) and name != "Rotate":
        raise ValueError(f"augmentation {name!r}: crop_border is not supported")
    # Geometric steps are checked by their schema; their sizes may depend on the real image.
    if dry_run and name not in GEOMETRY:
        _dry_run(name, transform)
    return transform


def _short(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ValidationError):
        problems: dict[str, str] = {}
        for error in cause.errors():
            field = str(error["loc"][0]) if error["loc"] else "arguments"
            problems.setdefault(field, f"{field}: {error['msg']}")
        return "; ".join(problems.values())
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("For further information")]
    text = "; ".join(lines[:4]) or type(exc).__name__
    return text.replace("for transform BasicTransform", "").strip()


def _dry_run(name: str, transform: A.BasicTransform) -> None:
    sample = np.random.default_rng(0).integers(0, 256, _DRY_RUN_SHAPE, dtype=np.uint8)
    try:
        out = transform(image=sample, force_apply=True)["image"]
    except Exception as exc:  # any failure means the spec is unusable
        raise ValueError(f"augmentation {name!r} failed on a test image: {_short(exc)}") from exc
    if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(
            f"augmentation {name!r} must return HxWx3 uint8 images, got {out.dtype} {out.shape}"
        )


def _build_transforms(spec: Sequence[dict[str, Any]], dry_run: bool) -> list[A.BasicTransform]:
    if not isinstance(spec, Sequence) or isinstance(spec, str | bytes):
        raise ValueError("augmentation spec must be a list of transforms")
    _as_list(list(spec))
    return [_build_one(item, dry_run) for item in spec]


# ---------------------------------------------------------------- augmentation


_CACHE = threading.local()


def _compose(spec: Sequence[dict[str, Any]], digest: str) -> A.Compose:
    """One Compose per spec per thread: building one validates every argument and is slow."""
    cache: dict[str, A.Compose] = getattr(_CACHE, "composes", None) or {}
    _CACHE.composes = cache
    if digest not in cache:
        cache[digest] = A.Compose(
            _build_transforms(spec, dry_run=False),
            bbox_params=A.BboxParams(
                format="coco",
                label_fields=[_LABELS],
                min_area=1,
                clip=True,
                filter_invalid_bboxes=True,
            ),
            save_applied_params=True,
        )
    return cache[digest]


def augment(
    image: npt.NDArray[np.uint8],
    spec: Sequence[dict[str, Any]],
    seed: int,
    boxes: list[Box] | None = None,
) -> AugmentResult:
    """Augment one HxWx3 uint8 image; the same image, spec and seed always give the same pixels."""
    digest = spec_digest(spec)
    compose = _compose(spec, digest)
    # One shared stream for the whole pipeline: set_random_seed would give every transform the
    # same stream, so e.g. two p=0.5 flips would always fire together.
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
    boxes = boxes or []
    out = compose(
        image=image,
        bboxes=np.array(
            [[b["x"], b["y"], b["w"], b["h"]] for b in boxes], dtype=np.float64
        ).reshape(-1, 4),
        **{_LABELS: list(range(len(boxes)))},
    )
    result = out["image"]
    height, width = image.shape[:2]
    out_h, out_w = result.shape[:2]
    applied = out["applied_transforms"]
    steps = geometry_steps(compose, applied, (out_h, out_w))
    total = np.eye(3)
    for step in steps:
        total = np.asarray(step.matrix) @ total
    record = TransformRecord(
        seed=seed,
        spec_digest=digest,
        input_width=width,
        input_height=height,
        output_width=out_w,
        output_height=out_h,
        matrix=total.tolist(),
        applied=[name for name, _ in applied],
        steps=steps,
    )
    moved = [
        Box(label=boxes[int(index)]["label"], x=float(x), y=float(y), w=float(w), h=float(h))
        for (x, y, w, h), index in zip(out["bboxes"], out[_LABELS], strict=True)
    ]
    return AugmentResult(image=result, boxes=moved, record=record)


def project_boxes(boxes: list[Box], record: TransformRecord | dict[str, Any]) -> list[Box]:
    """Move raw-pixel boxes of the input image into an augmented output through its record."""
    rec = record if isinstance(record, TransformRecord) else TransformRecord.model_validate(record)
    # albumentations clips to the input first (clip=True); rotating an unclipped box would differ.
    moved = clip_boxes(boxes, rec.input_width, rec.input_height)
    if not rec.steps:
        return affine_boxes(moved, rec.matrix, rec.output_width, rec.output_height)
    for step in rec.steps:
        moved = affine_boxes(moved, step.matrix, step.width, step.height)
    return moved
