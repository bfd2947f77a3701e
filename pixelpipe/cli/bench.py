"""The `bench` commands: each benchmark with its baseline in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pixelpipe.cli.apps import bench_app, settings_or_exit
from pixelpipe.settings import Settings


def echo_rows(rows: list[dict[str, Any]], prefix: str = "") -> None:
    """One `key=value, ...` line per row, floats to 3 significant digits."""
    for row in rows:
        cells = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        typer.echo(prefix + ", ".join(cells))


def publish_bench(
    settings: Settings, bench: str, out: Path, metrics: dict[str, Any] | None = None
) -> None:
    """Publish a bench's result folder to S3 and MLflow; say where it went."""
    from pixelpipe.bench.publish import publish

    where = publish(settings, bench, out, metrics)
    typer.echo(f"results: {where['s3_prefix']} and MLflow run {where['mlflow_run_id']}")


def _bench_images(out: Path, count: int) -> list[Path]:
    """The datagen mix (equal shares of 640x480 .. 4000x3000), made once per count."""
    from pixelpipe.datagen import generate

    folder = out / f"images-{count}"
    if not (folder / "images").is_dir():
        generate(folder, count, seed=1234)
    return sorted((folder / "images").iterdir())


@bench_app.command("stage1")
def bench_stage1(
    images: int = typer.Option(24, "--images", help="datagen images for the compute bench"),
    objects: int = typer.Option(1000, "--objects", help="small objects for the stage-in bench"),
    object_kb: int = typer.Option(50, "--object-kb"),
    repeats: int = typer.Option(3, "--repeats", min=1),
    out: Path = typer.Option(Path("reports/bench/stage1"), "--out"),
    publish_results: bool = typer.Option(True, "--publish/--no-publish"),
) -> None:
    """Stage 1 images/s per worker vs a plain albumentations loop; stage-in vs boto3 and s5cmd."""
    from pixelpipe.bench import transfer
    from pixelpipe.bench.stage1 import run_bench
    from pixelpipe.storage.client import client_from_settings

    settings = settings_or_exit()
    out.mkdir(parents=True, exist_ok=True)
    paths = _bench_images(out.parent, images)
    summary = run_bench(paths, out, settings.worker_count, repeats)
    typer.echo(
        f"stage 1: {summary['ours_images_s_median']:.1f} images/s with {settings.worker_count} "
        f"workers (spread {summary['ours_spread']:.0%}); baseline loop "
        f"{summary['baseline_images_s_median']:.1f} images/s; per-worker ratio "
        f"{summary['per_worker_ratio']:.2f}x (goal >= 0.8x)"
    )
    client = client_from_settings(settings)
    rows = transfer.run_bench(
        lambda: client,
        settings.artifacts_bucket,
        settings.s3_endpoint_url or "",
        settings.aws_access_key_id or "",
        settings.aws_secret_access_key or "",
        sizes=[(objects, object_kb * 1000)],
        repeats=repeats,
        work_dir=out / "transfer",
        extra_files=paths,
        region=settings.aws_region,
    )
    echo_rows(transfer.summarize(rows), "stage-in: ")
    if publish_results:
        for path in (out / "transfer").glob("*.csv"):
            path.replace(out / path.name)
        publish_bench(settings, "stage1", out, summary)


@bench_app.command("stage2")
def bench_stage2(
    images: int = typer.Option(16, "--images", help="datagen images (equal shares of 4 sizes)"),
    variants: str = typer.Option("1,2,3,5", "--variants", help="variant counts"),
    repeats: int = typer.Option(3, "--repeats", min=1),
    backend: str = typer.Option("cpu", "--backend", help="cpu | dali | dali-cpu | dali-gpu"),
    out: Path = typer.Option(Path("reports/bench/stage2"), "--out"),
    publish_results: bool = typer.Option(True, "--publish/--no-publish"),
) -> None:
    """Stage 2 multi-variant cost vs the naive baseline; NVMe write and S3 upload throughput."""
    from pixelpipe.bench.stage2 import run_bench
    from pixelpipe.storage.client import client_from_settings
    from pixelpipe.storage.transfer import upload_many

    settings = settings_or_exit()
    out.mkdir(parents=True, exist_ok=True)
    paths = _bench_images(out.parent, images)
    client = client_from_settings(settings)

    def upload(folder: Path) -> float:
        items = [
            (str(p), f"perf/stage2-upload/{p.relative_to(folder).as_posix()}")
            for p in folder.rglob("*.jpg")
        ]
        report = upload_many(
            lambda: client, settings.artifacts_bucket, items, settings.s3_max_concurrency
        )
        return report.seconds

    counts = [int(c) for c in variants.split(",") if c.strip()]
    rows = run_bench(
        paths,
        counts,
        repeats,
        settings.worker_count,
        backend,
        out,
        settings.jpeg_quality,
        upload=upload,
    )
    echo_rows(rows)
    if publish_results:
        publish_bench(settings, "stage2", out)


@bench_app.command("training")
def bench_training(
    images: str = typer.Option(
        "1000,4000,16000", "--images", help="dataset sizes: nested subsets of one prepared set"
    ),
    images_per_node: int = typer.Option(
        None,
        "--images-per-node",
        min=1,
        help="weak scaling: each instance's shard of the dataset, N images, so n instances "
        "train on n*N (extra rows, scaling=weak). A shard, not a batch: the per-node share "
        "of the data is what PT1 scales over nodes; the batch is --batch-size, per process",
    ),
    instances: str = typer.Option(
        "1,2", "--instances", help="processes here (CPU: more than the cores share them)"
    ),
    epochs: int = typer.Option(2, "--epochs", min=1, help="the first is start-up, not counted"),
    repeats: int = typer.Option(3, "--repeats", min=1, help="runs per point, same seed"),
    task: str = typer.Option("detection", "--task", help="detection | classification"),
    loader: str = typer.Option("auto", "--loader", help="auto | torch | dali, comma-separated"),
    model: str = typer.Option("tiny", "--model"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="images per step per process"),
    num_workers: int = typer.Option(1, "--num-workers", min=0, help="DataLoader workers"),
    seed: int = typer.Option(0, "--seed", help="training seed (weights, shuffles)"),
    variant: str = typer.Option(None, "--variant", help="an existing dataset, not a prepared one"),
    data_seed: int = typer.Option(1234, "--data-seed", help="datagen seed of the prepared set"),
    image_sizes: str = typer.Option("160x120,128x96", "--image-sizes", help="datagen sizes"),
    input_size: str = typer.Option("96x96:letterbox", "--input", help="the variant's size"),
    out: Path = typer.Option(Path("reports/bench/training"), "--out"),
    publish_results: bool = typer.Option(True, "--publish/--no-publish"),
) -> None:
    """PT1: epoch time, images/s, the loader alone and scaling, as the dataset grows."""
    from pixelpipe.bench import training_sweep as ts
    from pixelpipe.bench.prepare import PrepareError

    settings = settings_or_exit()
    try:
        sweep = ts.Sweep(
            images=ts.int_list(images, "--images"),
            instances=ts.int_list(instances, "--instances"),
            loaders=ts.loaders(loader),
            epochs=epochs,
            repeats=repeats,
            images_per_node=images_per_node,
            task=task,  # type: ignore[arg-type]
            model=model,  # type: ignore[arg-type]
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        result = ts.bench_training(
            settings, sweep, out, variant=variant, data_seed=data_seed,
            sizes=ts.image_sizes(image_sizes), input_spec=input_size, echo=typer.echo,
        )  # fmt: skip
    except (ValueError, PrepareError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    if publish_results:
        publish_bench(settings, "training", out, result.metrics)


@bench_app.command("sensor")
def bench_sensor(
    objects: str = typer.Option("10000,100000", "--objects", help="object counts, comma-separated"),
    repeats: int = typer.Option(3, "--repeats", min=1),
    out: Path = typer.Option(Path("reports/bench/sensor"), "--out"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as a JSON list"),
    publish_results: bool = typer.Option(True, "--publish/--no-publish"),
) -> None:
    """Polling sensor: idle tick vs a bare listing, cursor bytes, peak RSS, a drop to batches."""
    import json

    from pixelpipe.bench.sensor import run_bench
    from pixelpipe.storage.client import client_from_settings

    settings = settings_or_exit()
    counts = [int(n) for n in objects.split(",")]
    rows = run_bench(client_from_settings(settings), settings, counts, repeats, out)
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        echo_rows(rows)
    if publish_results:
        metrics = {f"idle_over_bare_{r['objects']}": r["idle_over_bare"] for r in rows}
        publish_bench(settings, "sensor", out, metrics)


@bench_app.command("serve")
def bench_serve(
    concurrency: int = typer.Option(8, "--concurrency", min=1),
    seconds: float = typer.Option(10.0, "--seconds", min=0.5),
    rounds: int = typer.Option(3, "--rounds", min=1),
    model: str = typer.Option("champion", "--model", help="alias or version of the model"),
    out: Path = typer.Option(Path("reports/bench/serve"), "--out"),
    publish_results: bool = typer.Option(True, "--publish/--no-publish"),
) -> None:
    """Our service vs `mlflow models serve` of the same version, same image and concurrency."""
    from pixelpipe.bench.serve import run_bench

    settings = settings_or_exit()
    rows = run_bench(
        settings, settings.registered_model_name, model, concurrency, seconds, out, rounds=rounds
    )
    echo_rows(rows)
    if publish_results:
        publish_bench(settings, "serve", out)
