"""Stage 3: train the detector (or classifier) on a variant's dataset index, tracked in MLflow."""

from typing import Any

import dagster as dg

from pixelpipe.assets.annotations import coco_annotations
from pixelpipe.resources.mlflow import MlflowResource
from pixelpipe.resources.settings import SettingsResource
from pixelpipe.training.config import TrainConfig


def _default(name: str) -> Any:
    """TrainConfig's default: each hyperparameter is declared once, there."""
    return TrainConfig.model_fields[name].default


class TrainedModelConfig(dg.Config):
    """Launch settings for the trained_model asset (the same fields as `pixelpipe train`)."""

    variant: str = _default("variant")
    task: str = _default("task")
    model: str = _default("model")
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    lr: float = _default("lr")
    seed: int = _default("seed")
    nproc_per_node: int = _default("nproc_per_node")
    loader: str = _default("loader")
    device: str = _default("device")
    num_workers: int = _default("num_workers")
    max_images: int | None = _default("max_images")


@dg.asset(group_name="training", deps=[coco_annotations], kinds={"pytorch", "mlflow"})
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainedModelConfig,
    mlflow: MlflowResource,
    settings: SettingsResource,
) -> dg.MaterializeResult:
    """A new registered model version (alias `candidate`) trained on one variant's dataset."""
    from pixelpipe.training.launch import launch

    launch_settings = settings.get().model_copy(
        update={
            "mlflow_tracking_uri": mlflow.tracking_uri,
            "mlflow_experiment": mlflow.experiment,
            "registered_model_name": mlflow.registered_model_name,
        }
    )
    train_config = TrainConfig(**config.model_dump(), run_name=f"dagster-{context.run.run_id[:8]}")
    result = launch(train_config, launch_settings)
    return dg.MaterializeResult(metadata=training_metadata(result, mlflow.tracking_uri))


def training_metadata(result: Any, tracking_uri: str) -> dict[str, Any]:
    """What a trained_model materialization shows: MLflow link, mAP, F1 vs baseline, data."""
    metrics: dict[str, Any] = {k: round(v, 4) for k, v in result.metrics.items()}
    return {
        "run_id": result.run_id or "",
        "mlflow_url": dg.MetadataValue.url(result.run_url or tracking_uri),
        "model_version": result.model_version or "",
        "model_uri": result.model_uri or "",
        "dataset_uri": result.dataset_uri,
        "dataset_digest": result.dataset_digest,
        "world_size": result.world_size,
        "device": result.device,
        "loader": result.loader,
        "task": result.task,
        "thresholds": dg.MetadataValue.json(result.thresholds),
        "train_images": result.train_images,
        "val_images": result.val_images,
        "metrics": dg.MetadataValue.json(metrics),
        **{f"final_{k}": v for k, v in metrics.items() if isinstance(v, int | float)},
    }


def record_cli_training(result: Any, tracking_uri: str, instance: dg.DagsterInstance) -> None:
    """`pixelpipe train` outside Dagster: the same materialization, as a runless event."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=dg.AssetKey("trained_model"),
            description="trained with `pixelpipe train`",
            metadata=training_metadata(result, tracking_uri),
        )
    )
