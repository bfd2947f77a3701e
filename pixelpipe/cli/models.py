"""Commands for models: `train`, `serve`, `promote`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from pixelpipe.cli.apps import app, settings_or_exit


@app.command()
def train(
    variant: str = typer.Option(None, "--variant", help="size variant (its dataset index)"),
    task: str = typer.Option(None, "--task", help="detection (default) | classification"),
    epochs: int = typer.Option(None, "--epochs"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr"),
    nproc_per_node: int = typer.Option(None, "--nproc-per-node"),
    model: str = typer.Option(None, "--model", help="tiny | small | resnet18 | resnet50"),
    loader: str = typer.Option(None, "--loader", help="auto | torch | dali"),
    max_images: int = typer.Option(None, "--max-images"),
    config: Path = typer.Option(None, "--config", help="TrainConfig as JSON or YAML"),
) -> None:
    """Validate, then train (in-process, or torchrun for several processes) and register."""
    import yaml

    from pixelpipe.training.config import LaunchError, TrainConfig
    from pixelpipe.training.launch import launch

    settings = settings_or_exit()
    fields = yaml.safe_load(config.read_text()) if config else {}
    given = {
        "variant": variant,
        "task": task,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "model": model,
        "nproc_per_node": nproc_per_node,
        "loader": loader,
        "max_images": max_images,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        # one line per epoch (loss, mAP, F1, images/s) while it trains, as torchrun's workers log
        _epoch_lines()
        result = launch(TrainConfig(**fields), settings)
    except LaunchError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    if settings.dagster_home or os.environ.get("DAGSTER_HOME"):
        from pixelpipe.assets.training import record_cli_training
        from pixelpipe.pipeline import instance_for

        record_cli_training(result, settings.mlflow_tracking_uri, instance_for(settings))
    typer.echo(
        json.dumps(
            {
                "run_id": result.run_id,
                "model_version": result.model_version,
                "run_url": result.run_url,
                "metrics": result.metrics,
            },
            indent=2,
        )
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
    model: str = typer.Option(None, "--model", help="NAME@ALIAS or NAME/VERSION (@champion)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
) -> None:
    """Serve a registered model: Open Inference Protocol v2, /predict and /metrics."""
    from pixelpipe.serving.app import serve as run_server

    settings = settings_or_exit()
    run_server(model or f"{settings.registered_model_name}@champion", host, port, device=device)


@app.command()
def promote(
    version: str = typer.Argument(None, help="version to promote (default: the candidate)"),
) -> None:
    """Move the `champion` alias to VERSION (default: the version aliased `candidate`)."""
    from mlflow.tracking import MlflowClient

    from pixelpipe.serving.registry import RegistryError
    from pixelpipe.serving.registry import promote as move_alias

    settings = settings_or_exit()
    client = MlflowClient(settings.mlflow_tracking_uri)
    try:
        promoted = move_alias(client, settings.registered_model_name, version)
    except RegistryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{settings.registered_model_name} version {promoted} is now @champion")


def _epoch_lines() -> None:
    """Show training's per-epoch log lines on stderr (the in-process run logs them at INFO)."""
    import logging

    log = logging.getLogger("pixelpipe.training")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
