"""MLflow tracking of a training run: its params, the run started on rank 0, the model logged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from pixelpipe.settings import Settings
from pixelpipe.training.config import TrainConfig
from pixelpipe.training.dataset import TrainData
from pixelpipe.training.distributed import DistInfo
from pixelpipe.training.loaders import MEAN, STD
from pixelpipe.training.metrics import TrainResult
from pixelpipe.training.model import count_parameters
from pixelpipe.training.tasks import get_task

if TYPE_CHECKING:
    from pixelpipe.training.run_logger import RunLogger


def run_params(config: TrainConfig, data: TrainData, extra: dict[str, Any]) -> dict[str, Any]:
    """The MLflow params of a run: the whole config, the dataset and what was resolved."""
    from pixelpipe.training.mlflow_model import code_version

    return {
        **config.model_dump(),
        "dataset_uri": data.index.uri,
        "dataset_digest": data.index.digest,
        "dataset_variant": data.index.variant,
        "input_size": f"{data.index.width}x{data.index.height}:{data.index.mode}",
        "code_version": code_version(),
        "train_images": len(data.train),
        "val_images": len(data.val),
        **extra,
    }


def start_tracking(
    config: TrainConfig,
    settings: Settings,
    data: TrainData,
    info: DistInfo,
    loader: str,
    device: str,
    net: nn.Module,
) -> RunLogger | None:
    """Rank 0 with config.track: an MLflow run started with params, tags and the dataset."""
    if not (config.track and info.is_main):
        return None
    from pixelpipe.training.run_logger import RunLogger

    tracker = RunLogger(
        settings.mlflow_tracking_uri, settings.mlflow_experiment, settings.registered_model_name
    )
    extra = {
        "world_size": info.world_size,
        "resolved_device": device,
        "resolved_loader": loader,
        "num_parameters": count_parameters(net),
    }
    tags = {"pixelpipe.variant": data.index.variant, "pixelpipe.dataset_digest": data.index.digest}
    tracker.start(config.run_name, run_params(config, data, extra), tags)
    try:
        tracker.log_dataset(data.index.uri, data.index.raw, data.index.digest)
    except BaseException:
        tracker.end("FAILED")
        raise
    return tracker


def finish_tracking(
    tracker: RunLogger, config: TrainConfig, data: TrainData, net: nn.Module, result: TrainResult
) -> None:
    """Log the final metrics and the model (registered), fill in the result's ids, end the run."""
    from pixelpipe.training.mlflow_model import PreprocessSpec

    tracker.log_metrics({f"final_{k}": v for k, v in result.metrics.items()}, config.epochs)
    if not config.synthetic_data:
        spec = PreprocessSpec(
            input_width=data.index.width,
            input_height=data.index.height,
            mode=data.index.mode,
            mean=MEAN,
            std=STD,
            labels=tuple(result.labels),
            threshold=config.threshold,
            task=config.task,
            thresholds=result.thresholds,
        )
        example = Path(data.val[0].path).read_bytes()
        tags = {
            "dataset_digest": data.index.digest,
            "variant": data.index.variant,
            "task": config.task,
            **{k: f"{v:.4f}" for k, v in result.metrics.items() if "f1" in k or "map" in k},
        }
        module = get_task(config.task).export_module(net)
        result.model_uri, result.model_version = tracker.log_model(module, spec, example, tags)
    result.run_id, result.run_url = tracker.run_id, tracker.run_url
    tracker.end("FINISHED")
