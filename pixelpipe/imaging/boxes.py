"""Bounding boxes in pixel space and the affine maths that moves them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypedDict

import numpy as np

MIN_AREA = 1.0


class Box(TypedDict):
    """An axis-aligned box in COCO order (top-left x, y, width, height), in pixels."""

    label: str
    x: float
    y: float
    w: float
    h: float


def clip_boxes(
    boxes: Iterable[Box], width: int, height: int, min_area: float = MIN_AREA
) -> list[Box]:
    """Clip boxes to the image and drop those whose remaining area is below min_area px."""
    out: list[Box] = []
    for b in boxes:
        x0, y0 = max(0.0, b["x"]), max(0.0, b["y"])
        x1, y1 = min(float(width), b["x"] + b["w"]), min(float(height), b["y"] + b["h"])
        w, h = x1 - x0, y1 - y0
        if w > 0 and h > 0 and w * h >= min_area:
            out.append(Box(label=b["label"], x=x0, y=y0, w=w, h=h))
    return out


def affine_boxes(
    boxes: Iterable[Box], matrix: Sequence[Sequence[float]], width: int, height: int
) -> list[Box]:
    """Map boxes through a 3x3 (or 2x3) affine matrix: corner envelope, clipped to the image."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    moved: list[Box] = []
    for b in boxes:
        xs = (b["x"], b["x"] + b["w"])
        ys = (b["y"], b["y"] + b["h"])
        pts = np.array([[x, y, 1.0] for x in xs for y in ys]).T
        tx, ty, _ = m @ pts
        x0, y0 = float(tx.min()), float(ty.min())
        moved.append(
            Box(label=b["label"], x=x0, y=y0, w=float(tx.max()) - x0, h=float(ty.max()) - y0)
        )
    return clip_boxes(moved, width, height)


def rotated_envelope(
    x: float, y: float, w: float, h: float, degrees: float
) -> tuple[float, float, float, float]:
    """Axis-aligned envelope (x, y, w, h) of a box rotated clockwise about its top-left (x, y)."""
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    xs = [x, x + w * cos, x - h * sin, x + w * cos - h * sin]
    ys = [y, y + w * sin, y + h * cos, y + w * sin + h * cos]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
