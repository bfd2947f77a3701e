"""`make demo`: start the stack, make and upload sample data, run every stage, summarise."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from pixelpipe import settings as settings_mod
from pixelpipe.devstack.stack import DevStack, bucket_names

DEFAULT_COUNT = 24
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _count(s3: object, bucket: str, prefix: str = "") -> tuple[int, int]:
    objects = size = 0
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
    for page in pages:
        for obj in page.get("Contents", []):
            objects += 1
            size += obj["Size"]
    return objects, size


def _train(settings: settings_mod.Settings, epochs: int) -> object:
    """Stage 3 on the first variant's dataset index; registers a `candidate` version."""
    from pixelpipe.training.config import TrainConfig
    from pixelpipe.training.launch import launch

    variant = settings.variants[0].name
    typer.echo(f"training on variant {variant!r} ({epochs} epochs, model tiny) ...")
    result = launch(
        TrainConfig(
            variant=variant,
            model="tiny",
            epochs=epochs,
            batch_size=16,
            num_workers=1,
            run_name="demo",
        ),
        settings,
    )
    f1 = result.metrics.get("val_f1_macro", float("nan"))
    typer.echo(
        f"  trained: val macro-F1 {f1:.3f}, model version {result.model_version} "
        f"(alias candidate), run {result.run_url}"
    )
    return result


def _serve_and_ask(settings: settings_mod.Settings, image: Path, partition: str | None) -> bool:
    """Promote the candidate, serve it, send one sample image, print the answer."""
    import subprocess
    import sys

    import httpx
    from mlflow.tracking import MlflowClient

    from pixelpipe.devstack.processes import pick_ports
    from pixelpipe.serving.registry import promote

    name = settings.registered_model_name
    version = promote(MlflowClient(settings.mlflow_tracking_uri), name, None)
    typer.echo(f"promoted {name} version {version} to @champion")
    if partition:
        _batch_predictions(settings, partition)
    (port,) = pick_ports(1, grpc=False)
    server = subprocess.Popen(
        [sys.executable, "-m", "pixelpipe", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            err = server.stderr.read().decode()[-2000:] if server.stderr else ""
            typer.echo(f"inference service did not become ready:\n{err}")
            return False
        with image.open("rb") as handle:
            answer = httpx.post(
                f"{url}/predict", files={"file": (image.name, handle, "image/jpeg")}, timeout=30
            )
        typer.echo(f"serving {name}@champion at {url} (OIP v2, /predict, /metrics)")
        typer.echo(f"  POST /predict {image.name} -> {answer.status_code} {answer.text}")
        return answer.status_code == 200
    finally:
        server.terminate()
        server.wait(30)


def _batch_predictions(settings: settings_mod.Settings, partition: str) -> None:
    import dagster as dg

    from pixelpipe.definitions import build_definitions
    from pixelpipe.pipeline import QUIET, instance_for

    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        asset_selection=[dg.AssetKey("batch_predictions")],
        partition_key=partition,
        instance=instance_for(settings),
        run_config=QUIET,
        raise_on_error=False,
    )
    for event in result.get_asset_materialization_events():
        meta = event.event_specific_data.materialization.metadata
        typer.echo(
            f"batch_predictions {partition}: {meta['images'].value} images, labels "
            f"{meta['label_counts'].value}; Label Studio import "
            f"{meta['label_studio_import_uri'].value}"
        )


def run_demo(stack_dir: Path, count: int, seed: int = 7, epochs: int = 3) -> int:
    """The whole pipeline on sample data; returns a process exit code."""
    started = time.monotonic()
    stack = DevStack(stack_dir, settings_mod.load_settings())
    info = stack.up()
    typer.echo(f"stack up: S3 {info.s3_endpoint}, MLflow {info.mlflow_uri}")
    os.environ.update(info.env(stack.settings))
    settings_mod.get_settings.cache_clear()
    settings = settings_mod.get_settings()

    from pixelpipe.datagen import generate
    from pixelpipe.pipeline import poll
    from pixelpipe.resources.s3 import client_from_settings
    from pixelpipe.uploads import upload_dataset

    sample = stack_dir / f"sample-{count}-{seed}"
    if not (sample / "annotations" / "export.json").exists():
        summary = generate(sample, count, seed)
        typer.echo(f"generated {summary.images} images with {summary.boxes} boxes in {sample}")
    prefix = f"{settings.raw_prefix}/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    report = upload_dataset(sample, settings, prefix)
    typer.echo(f"uploaded {report.count} objects to s3://{settings.raw_bucket}/{prefix}/")

    outcomes = poll(settings, prefix, once=True, echo=typer.echo)
    trained = _train(settings, epochs)
    first = next((o.partition for o in outcomes if o.success), None)
    image = next(p for p in sorted((sample / "images").iterdir()) if p.suffix == ".jpg")
    served = bool(getattr(trained, "model_version", None)) and _serve_and_ask(
        settings, image, first
    )
    s3 = client_from_settings(settings)
    typer.echo("\nbuckets:")
    for bucket in bucket_names(settings):
        objects, size = _count(s3, bucket)
        typer.echo(f"  s3://{bucket:<28} {objects:6d} objects {size / 1e6:9.1f} MB")
    for variant in settings.variants:
        objects, _ = _count(s3, settings.normalized_bucket, f"{variant.name}/")
        typer.echo(
            f"    {variant.name}/ ({variant.width}x{variant.height} {variant.mode}): {objects}"
        )
    typer.echo("\nwhere to look:")
    typer.echo(f"  MLflow UI     {info.mlflow_uri}")
    typer.echo(
        f"  Dagster UI    eval $(pixelpipe devstack env --dir {stack_dir}) && "
        "dagster dev -w workspace.yaml"
    )
    typer.echo(f"  stack status  pixelpipe devstack status --dir {stack_dir}")
    failed = [o for o in outcomes if not o.success]
    ok = bool(outcomes) and not failed and served
    verdict = "demo finished" if ok else f"demo FAILED ({len(failed)} failed runs)"
    typer.echo(
        f"\n{verdict} in {time.monotonic() - started:.0f}s; "
        f"{len(outcomes)} batch run(s) for {report.count} objects"
    )
    return 0 if ok else 1
