"""`make demo`: start the stack, make and upload sample data, run every stage, summarise."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import typer

from pixelpipe import settings as settings_mod
from pixelpipe.devstack.stack import DevStack, bucket_names
from pixelpipe.training.config import TrainConfig

DEFAULT_COUNT = 200
DEMO_VARIANT = "detect"
DEMO_SIZES = "detect:128x128:letterbox,small:224x224,medium:384x384:letterbox"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# the demo prints its own summary (run links included), not MLflow's notes
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
logging.getLogger("mlflow").setLevel(logging.ERROR)


def _count(s3: Any, bucket: str, prefix: str = "") -> tuple[int, int]:
    """(objects, bytes) under a prefix; s3 is a boto3 client (untyped: no stubs installed)."""
    objects = size = 0
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            objects += 1
            size += obj["Size"]
    return objects, size


def _train(settings: settings_mod.Settings, epochs: int) -> dict[str, Any] | None:
    """Stage 3 through the `trained_model` asset on the Dagster instance; its metadata."""

    from pixelpipe.definitions import build_definitions
    from pixelpipe.pipeline import QUIET, instance_for

    names = [v.name for v in settings.variants]
    boxed = [v.name for v in settings.variants if v.mode == "letterbox"]
    variant = DEMO_VARIANT if DEMO_VARIANT in names else (boxed or names)[0]
    typer.echo(f"training a detector on variant {variant!r} ({epochs} epochs) via Dagster ...")
    job = build_definitions(settings).resolve_job_def("training_job")
    config = {"variant": variant, "epochs": epochs, "num_workers": 1}
    result = job.execute_in_process(
        run_config={**QUIET, "ops": {"trained_model": {"config": config}}},
        instance=instance_for(settings),
        raise_on_error=False,
    )
    if not result.success:
        failure = next((e for e in result.all_events if e.is_failure), None)
        typer.echo(f"  training FAILED: {failure.message if failure else 'see the Dagster run'}")
        return None
    event = result.get_asset_materialization_events()[0]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    typer.echo(
        f"  held-out mAP@[.5:.95] {meta.get('final_val_map', float('nan')):.3f}, "
        f"mAP@.5 {meta.get('final_val_map50', float('nan')):.3f}; image-level macro-F1 "
        f"{meta.get('final_val_f1_macro', float('nan')):.3f} vs "
        f"{meta.get('final_baseline_f1_macro', float('nan')):.3f} for predicting every class"
    )
    typer.echo(
        f"  {meta.get('train_images')} train / {meta.get('val_images')} validation images; "
        f"model version {meta.get('model_version')} (alias candidate); Dagster run "
        f"{result.run_id[:8]}; MLflow {meta.get('mlflow_url')}"
    )
    return meta


def _true_boxes(sample: Path, image: Path) -> list[tuple[str, list[float]]]:
    """The sample image's labelled boxes (source pixels), from the Label Studio export."""
    from pixelpipe.annotations.labelstudio import ls_to_coco

    folder = sample / "annotations"
    coco = ls_to_coco(folder / "export.json", folder / "label_config.xml").coco
    names = {c["id"]: c["name"] for c in coco["categories"]}
    ids = {im["id"] for im in coco["images"] if Path(im["file_name"]).name == image.name}
    return [
        (names[a["category_id"]], [round(v, 1) for v in a["bbox"]])
        for a in coco["annotations"]
        if a["image_id"] in ids
    ]


def _show_boxes(answer: dict[str, Any], truth: list[tuple[str, list[float]]]) -> None:
    from pixelpipe.serving.detections import best_per_box

    labels = set(answer.get("labels", []))
    found = [d for d in best_per_box(answer.get("detections", [])) if d["label"] in labels][:8]
    typer.echo("  true boxes [x, y, w, h]:")
    for label, box in truth:
        typer.echo(f"    {label:<9} {box}")
    typer.echo(
        f"  served boxes (best label per box, over its threshold; image labels {sorted(labels)}):"
    )
    for d in found:
        typer.echo(f"    {d['label']:<9} {[round(v, 1) for v in d['box']]}  score {d['score']:.2f}")
    if not found:
        typer.echo("    none")


def _serve_and_ask(
    settings: settings_mod.Settings, sample: Path, image: Path, partition: str | None
) -> bool:
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
        typer.echo(f"  POST /predict {image.name} -> {answer.status_code}")
        if answer.status_code != 200:
            typer.echo(f"  {answer.text[:2000]}")
            return False
        _show_boxes(answer.json(), _true_boxes(sample, image))
        return True
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
        meta = event.materialization.metadata
        keys = ("images", "failures", "label_counts", "label_studio_boxes")
        shown = {k: meta[k].value for k in keys if k in meta}
        typer.echo(f"batch_predictions {partition}: {shown}")
        for key in ("coco_results_uri", "label_studio_import_uri"):
            if key in meta:
                typer.echo(f"  {key.removesuffix('_uri').replace('_', ' ')}: {meta[key].value}")


def run_demo(stack_dir: Path, count: int, seed: int = 7, epochs: int | None = None) -> int:
    """The whole pipeline on sample data; returns a process exit code."""
    started = time.monotonic()
    # the detector trains on a small letterbox variant (every box kept whole); the user's own
    # NORMALIZE_SIZES wins when set, as long as it has a variant of that name
    os.environ.setdefault("NORMALIZE_SIZES", DEMO_SIZES)
    # the training defaults (chosen to learn datagen scenes on CPU) unless the sample is tiny
    epochs = epochs or (TrainConfig.model_fields["epochs"].default if count >= 100 else 2)
    stack = DevStack(stack_dir, settings_mod.load_settings())
    info = stack.up()
    typer.echo(f"stack up: S3 {info.s3_endpoint}, MLflow {info.mlflow_uri}")
    os.environ.update(info.env(stack.settings))
    settings_mod.get_settings.cache_clear()
    settings = settings_mod.get_settings()

    from pixelpipe.datagen import generate
    from pixelpipe.pipeline import poll
    from pixelpipe.storage.client import client_from_settings
    from pixelpipe.uploads import upload_dataset

    sample = stack_dir / f"sample-{count}-{seed}"
    if not (sample / "annotations" / "export.json").exists():
        summary = generate(sample, count, seed, workers=max(1, len(os.sched_getaffinity(0))))
        typer.echo(f"generated {summary.images} images with {summary.boxes} boxes in {sample}")
    prefix = f"{settings.raw_prefix}/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    report = upload_dataset(sample, settings, prefix)
    typer.echo(f"uploaded {report.count} objects to s3://{settings.raw_bucket}/{prefix}/")

    outcomes = poll(settings, prefix, once=True, echo=typer.echo)
    trained = _train(settings, epochs)
    first = next((o.partition for o in outcomes if o.success), None)
    image = next(p for p in sorted((sample / "images").iterdir()) if p.suffix == ".jpg")
    served = bool(trained and trained.get("model_version")) and _serve_and_ask(
        settings, sample, image, first
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
