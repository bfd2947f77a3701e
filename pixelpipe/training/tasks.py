"""The two training tasks behind one interface: detection (default) and image classification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn

from pixelpipe.training.dataset import Sample, multi_hot
from pixelpipe.training.detection_eval import (
    best_thresholds,
    constant_baseline,
    cross_fitted_f1,
    evaluate_detections,
)
from pixelpipe.training.loaders import LoaderSpec, make_batches

if TYPE_CHECKING:
    from pixelpipe.training.detection_data import Boxes


@dataclass
class Validation:
    """One epoch's validation: numbers to log and the per-class thresholds to export."""

    loss: float | None
    metrics: dict[str, float]
    thresholds: dict[str, float] = field(default_factory=dict)


class Task(Protocol):
    """What train.py needs from a task."""

    name: str

    def build(self, model: str, classes: int) -> nn.Module: ...

    def batches(
        self, loader: str, samples: list[Sample], classes: int, spec: LoaderSpec, train: bool
    ) -> Any: ...

    def loss(self, output: torch.Tensor, targets: Any) -> torch.Tensor: ...

    def step(self, model: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor: ...

    def validate(
        self, net: nn.Module, batches: Any, data: TaskData, device: torch.device, amp: bool
    ) -> Validation: ...

    def export_module(self, net: nn.Module) -> nn.Module: ...


@dataclass(frozen=True)
class TaskData:
    """The split as the task validates it: labels, train and validation samples, distribution."""

    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    distributed: bool = False


def _autocast(device: torch.device, amp: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _gather_rows(rows: list[tuple[int, Any]], distributed: bool) -> list[Any]:
    """(validation index, value) pairs from every rank, in index order."""
    if distributed:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, rows)
        rows = [row for part in parts for row in part]
    return [value for _, value in sorted(rows, key=lambda r: r[0])]


def _boxes(sample: Sample) -> Boxes:
    return np.asarray(sample.boxes, np.float32).reshape(-1, 5)


class DetectionTask:
    """CenterNet on the boxes; mAP by COCOeval, image labels derived from the detections."""

    name = "detection"

    def build(self, model: str, classes: int) -> nn.Module:
        from pixelpipe.training.detector import build_detector

        return build_detector(model, classes)

    def batches(
        self, loader: str, samples: list[Sample], classes: int, spec: LoaderSpec, train: bool
    ) -> Any:
        from pixelpipe.training.detection_data import make_detection_batches

        paths = [s.path for s in samples]
        return make_detection_batches(
            loader, paths, [_boxes(s) for s in samples], classes, spec, train
        )

    def loss(self, output: torch.Tensor, targets: Any) -> torch.Tensor:
        from pixelpipe.training.centernet import detection_loss

        heat, reg, weight = targets
        return detection_loss(output, heat, reg, weight)

    def step(self, model: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        """Heatmap + box loss, plus the crop classifier on jittered true boxes."""
        from pixelpipe.training.centernet import CROP_WEIGHT, boxes_from_targets, crop_loss, jitter

        heat, _, _ = targets
        boxes, classes = boxes_from_targets(heat, targets[1])
        dense, logits = model(images, jitter(boxes))
        return self.loss(dense, targets) + CROP_WEIGHT * crop_loss(logits, classes)

    @torch.no_grad()
    def validate(
        self, net: nn.Module, batches: Any, data: TaskData, device: torch.device, amp: bool
    ) -> Validation:
        from pixelpipe.training.centernet import make_targets
        from pixelpipe.training.detector import detect

        net.eval()
        classes = len(data.labels)
        rows: list[tuple[int, Any]] = []
        loss_sum, count = 0.0, 0
        for images, index in batches:
            with _autocast(device, amp):
                out = net.dense(images).float()  # type: ignore[operator]
                dets = detect(net, images, out).cpu().numpy()  # type: ignore[arg-type]
            idx = index.view(-1).tolist()
            spec_w, spec_h = images.shape[-1], images.shape[-2]
            parts = [make_targets(_boxes(data.val[i]), classes, spec_w, spec_h) for i in idx]
            targets = tuple(
                torch.from_numpy(np.stack([p[k] for p in parts])).to(out.device) for k in range(3)
            )
            loss_sum += float(self.loss(out, targets)) * len(idx)
            count += len(idx)
            rows += [(i, d) for i, d in zip(idx, dets, strict=True)]
        detections = _gather_rows(rows, data.distributed)
        summed = torch.tensor([loss_sum, count], dtype=torch.float64)
        if data.distributed:
            dist.all_reduce(summed)
        sizes = [(s.width or spec_w, s.height or spec_h) for s in data.val]
        m = evaluate_detections(
            detections, sizes, [_boxes(s) for s in data.val], data.labels,
            [_boxes(s) for s in data.train],
        )  # fmt: skip
        metrics = {
            "val_map": m.map,
            "val_map50": m.map50,
            "val_f1_macro": m.f1_macro,
            "baseline_f1_macro": m.baseline_f1_macro,
            **{f"val_ap_{label}": ap for label, ap in m.per_class_ap.items()},
        }
        loss = float(summed[0] / max(1.0, float(summed[1])))
        return Validation(loss, metrics, m.thresholds)

    def export_module(self, net: nn.Module) -> nn.Module:
        from pixelpipe.training.detector import CenterNet, DetectorExport

        assert isinstance(net, CenterNet)
        return DetectorExport(net)


class ClassificationTask:
    """Multi-label image classification (BCE); thresholds per class chosen on validation."""

    name = "classification"

    def build(self, model: str, classes: int) -> nn.Module:
        from pixelpipe.training.model import build_model

        return build_model(model, classes)

    def batches(
        self, loader: str, samples: list[Sample], classes: int, spec: LoaderSpec, train: bool
    ) -> Any:
        return make_batches(
            loader, [s.path for s in samples], multi_hot(samples, classes), spec, train
        )

    def loss(self, output: torch.Tensor, targets: Any) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output.float(), targets)

    def step(self, model: nn.Module, images: torch.Tensor, targets: Any) -> torch.Tensor:
        return self.loss(model(images), targets)

    @torch.no_grad()
    def validate(
        self, net: nn.Module, batches: Any, data: TaskData, device: torch.device, amp: bool
    ) -> Validation:
        net.eval()
        scores, truths = [], []
        loss_sum, count = 0.0, 0
        for x, y in batches:
            with _autocast(device, amp):
                logits = net(x).float()
            loss_sum += (
                float(nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum"))
                / y.shape[1]
            )
            count += len(x)
            scores.append(torch.sigmoid(logits).cpu().numpy())
            truths.append(y.cpu().numpy() > 0.5)
        classes = len(data.labels)
        score_part = np.concatenate(scores) if scores else np.zeros((0, classes))
        truth_part = np.concatenate(truths) if truths else np.zeros((0, classes), bool)
        local = [(0, (score_part, truth_part))]
        parts = _gather_rows(local, False) if not data.distributed else _all_parts(local)
        score = np.concatenate([p[0] for p in parts])
        truth = np.concatenate([p[1] for p in parts])
        summed = torch.tensor([loss_sum, count], dtype=torch.float64)
        if data.distributed:
            dist.all_reduce(summed)
        thresholds = best_thresholds(score, truth)
        train_truth = multi_hot(data.train, classes) > 0.5
        metrics = {
            "val_f1_macro": cross_fitted_f1(score, truth),
            "baseline_f1_macro": constant_baseline(train_truth, truth),
        }
        loss = float(summed[0] / max(1.0, float(summed[1])))
        named = {label: float(t) for label, t in zip(data.labels, thresholds, strict=True)}
        return Validation(loss, metrics, named)

    def export_module(self, net: nn.Module) -> nn.Module:
        return net


def _all_parts(local: list[tuple[int, Any]]) -> list[Any]:
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [value for part in parts for _, value in part]


TASKS: dict[str, Task] = {"detection": DetectionTask(), "classification": ClassificationTask()}


def get_task(name: str) -> Task:
    """A task by name (detection | classification)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def sample_labels(samples: Sequence[Sample], classes: int) -> npt.NDArray[np.float32]:
    return multi_hot(list(samples), classes)
