"""Detection metrics: COCO mAP with pycocotools, per-class AP, score thresholds and image F1."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

SCORE_FLOOR = 0.05  # detections below this are never kept (COCO results, serving)
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)

Floats = npt.NDArray[np.float32]  # boxes (M x 5), detections (K x 6), scores (N x classes)
Mask = npt.NDArray[np.bool_]  # N x classes: a class is present / predicted in an image
Coco = dict[str, Any]  # a COCO document as pycocotools takes it


@dataclass
class DetectionMetrics:
    """Validation numbers of one epoch; thresholds are per class, chosen on validation."""

    map: float
    map50: float
    per_class_ap: dict[str, float]
    f1_macro: float
    thresholds: dict[str, float]
    baseline_f1_macro: float
    images: int
    extra: dict[str, float] = field(default_factory=dict)


def coco_ground_truth(
    sizes: Sequence[tuple[int, int]], boxes: Sequence[Floats], classes: int
) -> Coco:
    """A COCO dict for images 1..N (width, height) with their M x 5 boxes."""
    images = [{"id": i + 1, "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
    anns: list[dict[str, Any]] = []
    for i, arr in enumerate(boxes):
        for x, y, w, h, c in arr.tolist():
            anns.append({
                "id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
            })  # fmt: skip
    cats = [{"id": c + 1, "name": str(c)} for c in range(classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_results(detections: Sequence[Floats]) -> list[dict[str, Any]]:
    """COCO results for images 1..N from K x 6 [x, y, w, h, score, class] arrays."""
    out: list[dict[str, Any]] = []
    for i, dets in enumerate(detections):
        for x, y, w, h, score, c in dets.tolist():
            if score >= SCORE_FLOOR:
                out.append({"image_id": i + 1, "category_id": int(c) + 1,
                            "bbox": [x, y, w, h], "score": score})  # fmt: skip
    return out


def coco_map(
    gt: Coco, results: list[dict[str, Any]], classes: int
) -> tuple[float, float, list[float]]:
    """(mAP@[.5:.95], mAP@.5, AP per class) by pycocotools' COCOeval (0 with no results)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0, 0.0, [0.0] * classes
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        found = truth.loadRes(results)
        ev = COCOeval(truth, found, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # T x R x K x A x M
    per_class = []
    for k in range(classes):
        p = precision[:, :, k, 0, -1]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else 0.0)
    return max(0.0, float(ev.stats[0])), max(0.0, float(ev.stats[1])), per_class


def image_scores(detections: Sequence[Floats], classes: int) -> Floats:
    """N x classes: each image's best detection score per class (0 where none)."""
    out = np.zeros((len(detections), classes), np.float32)
    for i, dets in enumerate(detections):
        for score, c in dets[:, 4:6].tolist():
            out[i, int(c)] = max(out[i, int(c)], score)
    return out


def _f1(pred: Mask, truth: Mask) -> npt.NDArray[np.float64]:
    tp = (pred & truth).sum(0)
    fp = (pred & ~truth).sum(0)
    fn = (~pred & truth).sum(0)
    denom = 2 * tp + fp + fn
    f1: npt.NDArray[np.float64] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    return f1


def best_thresholds(scores: Floats, truth: Mask) -> npt.NDArray[np.float64]:
    """Per class, the grid threshold with the best image-level F1 (ties: the lowest)."""
    f1 = np.stack([_f1(scores > t, truth) for t in THRESHOLD_GRID])  # grid x classes
    f1 = np.nan_to_num(f1, nan=-1.0)
    best: npt.NDArray[np.float64] = THRESHOLD_GRID[np.argmax(f1, axis=0)]
    return best


def macro_f1(pred: Mask, truth: Mask) -> float:
    """Mean F1 over classes present or predicted (others carry no evidence)."""
    f1 = _f1(pred, truth)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else 0.0


def cross_fitted_f1(scores: Floats, truth: Mask) -> float:
    """Image-level macro-F1 with thresholds chosen on one half of validation, scored on the other.

    Each half is scored with the thresholds of the other half, so the number does not flatter
    itself with thresholds fitted to the very images it is measured on.
    """
    n = len(scores)
    if n < 4:
        return macro_f1(scores > best_thresholds(scores, truth), truth)
    halves = (np.arange(n) % 2 == 0, np.arange(n) % 2 == 1)
    pred = np.zeros_like(truth)
    for fit, score in (halves, halves[::-1]):
        pred[score] = scores[score] > best_thresholds(scores[fit], truth[fit])
    return macro_f1(pred, truth)


def constant_baseline(train_truth: Mask, val_truth: Mask) -> float:
    """Macro-F1 of predicting every class seen in training on every image (label-blind)."""
    seen = train_truth.any(axis=0) if len(train_truth) else np.zeros(val_truth.shape[1], bool)
    return macro_f1(np.broadcast_to(seen, val_truth.shape).copy(), val_truth)


def presence(boxes: Sequence[Floats], classes: int) -> Mask:
    """N x classes bool: which classes each image holds."""
    out = np.zeros((len(boxes), classes), bool)
    for i, arr in enumerate(boxes):
        out[i, arr[:, 4].astype(int)] = True
    return out


def evaluate_detections(
    detections: Sequence[Floats],
    sizes: Sequence[tuple[int, int]],
    boxes: Sequence[Floats],
    labels: Sequence[str],
    train_boxes: Sequence[Floats],
) -> DetectionMetrics:
    """Every validation number from the detections of the validation images."""
    classes = len(labels)
    gt = coco_ground_truth(sizes, boxes, classes)
    m, m50, per_class = coco_map(gt, coco_results(detections), classes)
    scores, truth = image_scores(detections, classes), presence(boxes, classes)
    thresholds = best_thresholds(scores, truth)
    return DetectionMetrics(
        map=m,
        map50=m50,
        per_class_ap=dict(zip(labels, per_class, strict=True)),
        f1_macro=cross_fitted_f1(scores, truth),
        thresholds={label: float(t) for label, t in zip(labels, thresholds, strict=True)},
        baseline_f1_macro=constant_baseline(presence(train_boxes, classes), truth),
        images=len(detections),
    )
