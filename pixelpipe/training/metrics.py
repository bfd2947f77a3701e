"""What a training run measured: per-epoch metrics, the finished run's result, its summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class EpochMetrics:
    """What one epoch measured (all processes together)."""

    epoch: int
    train_loss: float
    images_per_s: float
    data_wait_fraction: float
    train_seconds: float
    epoch_seconds: float
    lr: float
    val_loss: float | None = None
    val_f1_macro: float | None = None
    val_map: float | None = None
    val_map50: float | None = None
    baseline_f1_macro: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        """Every number, flat (per-class APs included), for MLflow."""
        out = {k: v for k, v in asdict(self).items() if isinstance(v, int | float)}
        return {**out, **self.extra}


@dataclass
class TrainResult:
    """A finished run: MLflow ids, final metrics, per-epoch metrics and the baseline."""

    run_id: str | None
    model_version: str | None
    run_url: str | None
    model_uri: str | None
    metrics: dict[str, float]
    epochs: list[EpochMetrics] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    task: str = "detection"
    thresholds: dict[str, float] = field(default_factory=dict)
    dataset_uri: str = ""
    dataset_digest: str = ""
    world_size: int = 1
    device: str = "cpu"
    loader: str = "torch"
    model: str = ""
    num_parameters: int = 0
    train_images: int = 0
    val_images: int = 0
    stage_seconds: float = 0.0
    total_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        epochs = [EpochMetrics(**e) for e in data.get("epochs", [])]
        return cls(**{**data, "epochs": epochs})


def final_metrics(epochs: list[EpochMetrics]) -> dict[str, float]:
    """The run's headline numbers: the last epoch's losses and scores, steady-state speed."""
    last = epochs[-1]
    steady = epochs[1:] or epochs  # epoch 0 pays for worker start-up and warm-up
    out = {
        "train_loss": last.train_loss,
        "images_per_s": float(np.median([e.images_per_s for e in steady])),
        "data_wait_fraction": float(np.median([e.data_wait_fraction for e in steady])),
        "epoch_seconds": float(np.median([e.epoch_seconds for e in steady])),
    }
    for name in ("val_loss", "val_f1_macro", "val_map", "val_map50", "baseline_f1_macro"):
        value = getattr(last, name)
        if value is not None:
            out[name] = value
    return out | ({k: v for k, v in last.extra.items()} if last.val_loss is not None else {})
