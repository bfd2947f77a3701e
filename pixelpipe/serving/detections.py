"""Detections in source pixels: undo the variant's scale and letterbox padding (or crop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from pixelpipe.imaging.geometry import Geometry, plan
from pixelpipe.imaging.variants import Variant

SCORE_FLOOR = 0.05  # weaker detections are never returned
MIN_SIDE = 0.5  # boxes thinner than this (in source pixels) after clipping are dropped


def input_geometry(src_width: int, src_height: int, spec: Any) -> Geometry:
    """How a src_width x src_height image maps onto the model's input (as stage 2 maps it)."""
    variant = Variant("input", spec.input_width, spec.input_height, spec.mode)
    return plan(src_width, src_height, variant)


def to_source(
    raw: npt.NDArray[Any],
    geom: Geometry,
    labels: Sequence[str],
    floor: float = SCORE_FLOOR,
) -> list[dict[str, Any]]:
    """K x 6 [x, y, w, h, score, class] in input pixels -> detections in source pixels.

    Each detection is {"label", "score", "box": [x, y, width, height]}, clipped to the
    image, best score first.
    """
    out: list[dict[str, Any]] = []
    shift_x = geom.crop_x - geom.pad_x
    shift_y = geom.crop_y - geom.pad_y
    for x, y, w, h, score, cls in np.asarray(raw, np.float64).reshape(-1, 6).tolist():
        c = int(cls)
        if score < floor or not 0 <= c < len(labels):
            continue
        x0 = min(max((x + shift_x) / geom.scale_x, 0.0), geom.src_width)
        y0 = min(max((y + shift_y) / geom.scale_y, 0.0), geom.src_height)
        x1 = min(max((x + w + shift_x) / geom.scale_x, 0.0), geom.src_width)
        y1 = min(max((y + h + shift_y) / geom.scale_y, 0.0), geom.src_height)
        if x1 - x0 < MIN_SIDE or y1 - y0 < MIN_SIDE:
            continue
        box = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
        out.append({"label": labels[c], "score": round(float(score), 5), "box": box})
    out.sort(key=lambda d: (-d["score"], d["label"], d["box"]))  # ties in a fixed order
    return out


def image_labels(
    detections: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float], fallback: float
) -> list[str]:
    """Labels with a detection over the class's own threshold, in first-seen score order."""
    out: list[str] = []
    for d in detections:
        label = str(d["label"])
        if label not in out and float(d["score"]) > thresholds.get(label, fallback):
            out.append(label)
    return out


def label_scores(
    detections: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> dict[str, float]:
    """Each label's best detection score (0 where none): the image-level scores."""
    best = dict.fromkeys(labels, 0.0)
    for d in detections:
        label = str(d["label"])
        if label in best:
            best[label] = max(best[label], float(d["score"]))
    return best


def best_per_box(detections: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One detection per distinct box: its best-scoring label (the detector reads each box once
    per class, which mAP wants; a person looking at boxes wants one label per box)."""
    best: dict[tuple[float, ...], dict[str, Any]] = {}
    for d in detections:
        key = tuple(float(v) for v in d["box"])
        if key not in best or float(d["score"]) > float(best[key]["score"]):
            best[key] = dict(d)
    return sorted(best.values(), key=lambda d: -float(d["score"]))
