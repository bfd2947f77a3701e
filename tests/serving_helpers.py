"""Shared pieces of the serving tests: tiny exported models and comparing two detection lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def detector_module(n_classes: int, spread: float = 1.0, seed: int = 0) -> Any:
    """An untrained tiny DetectorExport whose centres all look like objects (heatmap bias 0:
    objectness about 0.5, so scores are about 0.5 x 1/classes, above the 0.05 floor); spread > 1
    widens its heatmap and class logits so scores vary more."""
    import torch

    from pixelpipe.training.detector import DetectorExport, build_detector

    torch.manual_seed(seed)
    net = build_detector("tiny", n_classes)
    with torch.no_grad():
        net.heatmap[-1].bias.zero_()
        net.heatmap[-1].weight.mul_(spread)
        net.crop_classifier.fc.weight.mul_(spread)
    return DetectorExport(net)


def export_detector(
    out_dir: Path,
    labels: Sequence[str],
    size: int,
    mode: str = "letterbox",
    threshold: float = 0.5,
    thresholds: dict[str, float] | None = None,
) -> Path:
    """model.pt + preprocess.json of an untrained detector in out_dir."""
    from pixelpipe.training.mlflow_model import PreprocessSpec, export_model

    spec = PreprocessSpec(
        size, size, mode, MEAN, STD, tuple(labels), threshold, "detection", thresholds or {}
    )
    export_model(detector_module(len(labels)), spec, out_dir)
    return out_dir


def unmatched(
    expected: Sequence[dict[str, Any]],
    got: Sequence[dict[str, Any]],
    box_px: float = 0.5,
    score_tol: float = 1e-3,
) -> list[str]:
    """What keeps two detection lists from being the same objects: [] when each detection has
    a partner with the same label, every box side within box_px and the score within score_tol
    (order may differ among equal scores)."""
    left = list(got)
    problems = []
    for d in expected:
        match = next(
            (
                g
                for g in left
                if g["label"] == d["label"]
                and abs(g["score"] - d["score"]) <= score_tol
                and all(abs(a - b) <= box_px for a, b in zip(g["box"], d["box"], strict=True))
            ),
            None,
        )
        if match is None:
            problems.append(f"no match for {d}")
        else:
            left.remove(match)
    problems += [f"unexpected {g}" for g in left]
    return problems
