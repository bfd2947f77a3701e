"""The `pixelpipe` command line: devstack, data, pipeline, conversion, benchmarks, reports."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from pixelpipe.settings import SettingsError, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
devstack_app = typer.Typer(no_args_is_help=True, help="The embedded S3 + MLflow stack.")
report_app = typer.Typer(no_args_is_help=True, help="Test reports.")
convert_app = typer.Typer(no_args_is_help=True, help="Label Studio <-> COCO conversion.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks with a baseline in the same run.")
infra_app = typer.Typer(no_args_is_help=True, help="Deployed infrastructure.")
app.add_typer(devstack_app, name="devstack")
app.add_typer(report_app, name="report")
app.add_typer(convert_app, name="convert")
app.add_typer(bench_app, name="bench")
app.add_typer(infra_app, name="infra")

DEFAULT_DIR = Path(".pixelpipe")


def _settings():  # noqa: ANN202 - typer callbacks stay untyped-friendly
    try:
        return get_settings()
    except SettingsError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


@devstack_app.command("up")
def devstack_up(
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help="state directory"),
    with_label_studio: bool = typer.Option(
        False, "--with-label-studio", help="also Label Studio (installed on first use)"
    ),
) -> None:
    """Start S3 + MLflow on loopback (harmless if already running)."""
    import time

    from pixelpipe.devstack.stack import DevStack

    started = time.monotonic()
    stack = DevStack(dir, _settings())
    info = stack.up()
    typer.echo(f"S3      {info.s3_endpoint}  (pid {info.s3_pid})")
    typer.echo(f"MLflow  {info.mlflow_uri}  (pid {info.mlflow_pid})")
    if with_label_studio:
        ls = stack.label_studio.start(echo=typer.echo)
        typer.echo(f"Label Studio  {ls.url}  (pid {ls.pid})  login {ls.email} / {ls.password}")
        typer.echo(f"  personal access token (label-studio-sdk api_key): {ls.token}")
    typer.echo(f"ready in {time.monotonic() - started:.1f}s; `eval $(pixelpipe devstack env)`")


@devstack_app.command("down")
def devstack_down(dir: Path = typer.Option(DEFAULT_DIR, "--dir")) -> None:
    """Stop the processes this directory's stack started (data stays)."""
    from pixelpipe.devstack.stack import DevStack

    pids = DevStack(dir, _settings()).down()
    typer.echo(f"stopped {', '.join(map(str, pids))}" if pids else "nothing was running")


@devstack_app.command("status")
def devstack_status(dir: Path = typer.Option(DEFAULT_DIR, "--dir")) -> None:
    """Say what runs where."""
    from pixelpipe.devstack.stack import DevStack

    status = DevStack(dir, _settings()).status()
    typer.echo(json.dumps(status, indent=2))
    raise typer.Exit(0 if status["running"] else 1)


@devstack_app.command("env")
def devstack_env(dir: Path = typer.Option(DEFAULT_DIR, "--dir")) -> None:
    """Print `export NAME=value` lines for every setting the stack provides."""
    import shlex

    from pixelpipe.devstack.stack import DevStack

    settings = _settings()
    info = DevStack(dir, settings).info()
    if not info:
        typer.secho(f"no stack running in {dir}; run `pixelpipe devstack up`", fg="red", err=True)
        raise typer.Exit(1)
    for name, value in info.env(settings).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command()
def datagen(
    out: Path = typer.Option(..., "--out", help="output directory"),
    count: int = typer.Option(40, "--count", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a learnable synthetic image set with a Label Studio export and label config."""
    from rich.progress import Progress

    from pixelpipe.datagen import generate

    with Progress() as bar:
        task = bar.add_task(f"rendering {count} images", total=count)
        summary = generate(out, count, seed, progress=lambda n: bar.advance(task, n))
    typer.echo(
        f"wrote {summary.images} images with {summary.boxes} boxes to {out} "
        f"(export {summary.export_path}, config {summary.label_config_path})"
    )


@app.command()
def upload(
    dir: Path = typer.Argument(..., exists=True, file_okay=False),
    prefix: str = typer.Option(None, "--prefix", help="raw prefix (default RAW_PREFIX)"),
) -> None:
    """Put a datagen folder in RAW_BUCKET: images under PREFIX, exports under ANNOTATIONS_PREFIX."""
    from pixelpipe.uploads import upload_dataset

    settings = _settings()
    report = upload_dataset(dir, settings, prefix or settings.raw_prefix, progress=True)
    typer.echo(
        f"uploaded {report.count} objects, {report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s"
    )
    if report.failures:
        for failed in report.failures:
            typer.secho(f"failed {failed.key}: {failed.reason}", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def poll(
    prefix: str = typer.Option(None, "--prefix", help="raw prefix to watch (default RAW_PREFIX)"),
    once: bool = typer.Option(False, "--once", help="one tick, then exit"),
    interval: float = typer.Option(10.0, "--interval", help="seconds between ticks"),
) -> None:
    """Evaluate the raw-images sensor on DAGSTER_HOME's instance and run its batches in-process."""
    from pixelpipe.pipeline import poll as run_poll

    settings = _settings()
    outcomes = run_poll(
        settings,
        prefix or settings.raw_prefix,
        once=once,
        interval=interval,
        echo=typer.echo,
        progress=True,
    )
    if any(not o.success for o in outcomes):
        raise typer.Exit(1)


@app.command()
def rerun(partition: str = typer.Argument(..., help="batch partition (b-<time>-<digest>)")) -> None:
    """Run one batch partition again in-process (e.g. one reported failed after its retries)."""
    from pixelpipe.pipeline import rerun as run_again

    outcome = run_again(_settings(), partition, echo=typer.echo)
    if not outcome.success:
        raise typer.Exit(1)


@app.command()
def audit(
    prefix: str = typer.Option(None, "--prefix", help="raw prefix to audit (default RAW_PREFIX)"),
    verify_bytes: bool = typer.Option(True, "--verify-bytes/--no-verify-bytes"),
) -> None:
    """Check that every raw image under PREFIX has exactly its outputs, and that they are intact."""
    from pixelpipe.audit import audit as run_audit
    from pixelpipe.resources.s3 import client_from_settings

    settings = _settings()
    report = run_audit(
        client_from_settings(settings),
        raw_bucket=settings.raw_bucket,
        prefix=prefix or settings.raw_prefix,
        buckets={"augmented": settings.augmented_bucket, "normalized": settings.normalized_bucket},
        copies=settings.augment_copies,
        variants=len(settings.variants),
        verify_bytes=verify_bytes,
    )
    typer.echo(
        f"{report.raw_images} raw objects in {report.partitions} partitions: "
        f"{report.outputs} outputs of {report.expected_outputs} expected"
    )
    for name in ("lost", "duplicated", "mismatched"):
        for entry in getattr(report, name)[:20]:
            typer.secho(f"{name}: {entry}", fg="red")
    for source, reasons in list(report.failed.items())[:20]:
        typer.echo(f"failed alone: {source}: {reasons[-1]}")
    if not report.clean:
        raise typer.Exit(1)


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

    settings = _settings()
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

    settings = _settings()
    run_server(model or f"{settings.registered_model_name}@champion", host, port, device=device)


@app.command()
def promote(
    version: str = typer.Argument(None, help="version to promote (default: the candidate)"),
) -> None:
    """Move the `champion` alias to VERSION (default: the version aliased `candidate`)."""
    from mlflow.tracking import MlflowClient

    from pixelpipe.serving.registry import RegistryError
    from pixelpipe.serving.registry import promote as move_alias

    settings = _settings()
    client = MlflowClient(settings.mlflow_tracking_uri)
    try:
        promoted = move_alias(client, settings.registered_model_name, version)
    except RegistryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{settings.registered_model_name} version {promoted} is now @champion")


@infra_app.command("verify")
def infra_verify(
    variant: str = typer.Option(..., "--variant", help="aws | local"),
    outputs: str = typer.Option(None, "--outputs", help="`terraform output -json` file, or -"),
) -> None:
    """Check with boto3 that the buckets, ECR repos, schedules and queues in the outputs exist."""
    from pixelpipe import infra

    try:
        checks = infra.verify_deployment(variant, _settings(), outputs)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(infra.summarize(variant, checks))
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@report_app.command("upload")
def report_upload(dir: Path = typer.Argument(..., exists=True, file_okay=False)) -> None:
    """Put test reports in the artifacts bucket under test-reports/<timestamp>/ and in MLflow."""
    from pixelpipe.reports import upload_reports

    result = upload_reports(dir, _settings())
    typer.echo(json.dumps(result, indent=2))


@app.command()
def demo(
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help="stack state directory"),
    count: int = typer.Option(None, "--count", help="sample images (default DEMO_COUNT or 200)"),
) -> None:
    """Start the stack, generate and upload sample data, run every stage, print where to look."""
    from pixelpipe.demo import DEFAULT_COUNT, run_demo

    _settings()
    n = count or int(os.environ.get("DEMO_COUNT") or DEFAULT_COUNT)
    raise typer.Exit(run_demo(dir, n))


def _echo_rows(rows: list[dict], prefix: str = "") -> None:
    for row in rows:
        cells = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        typer.echo(prefix + ", ".join(cells))


def _publish(settings, bench: str, out: Path, metrics: dict | None = None) -> None:  # noqa: ANN001
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
    from pixelpipe.resources.s3 import client_from_settings

    settings = _settings()
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
    _echo_rows(transfer.summarize(rows), "stage-in: ")
    if publish_results:
        for path in (out / "transfer").glob("*.csv"):
            path.replace(out / path.name)
        _publish(settings, "stage1", out, summary)


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
    from pixelpipe.resources.s3 import client_from_settings
    from pixelpipe.storage.transfer import upload_many

    settings = _settings()
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
    _echo_rows(rows)
    if publish_results:
        _publish(settings, "stage2", out)


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

    settings = _settings()
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
        _publish(settings, "training", out, result.metrics)


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
    from pixelpipe.resources.s3 import client_from_settings

    settings = _settings()
    counts = [int(n) for n in objects.split(",")]
    rows = run_bench(client_from_settings(settings), settings, counts, repeats, out)
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        _echo_rows(rows)
    if publish_results:
        metrics = {f"idle_over_bare_{r['objects']}": r["idle_over_bare"] for r in rows}
        _publish(settings, "sensor", out, metrics)


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

    settings = _settings()
    rows = run_bench(
        settings, settings.registered_model_name, model, concurrency, seconds, out, rounds=rounds
    )
    _echo_rows(rows)
    if publish_results:
        _publish(settings, "serve", out)


def _read_input(source: str) -> Path:
    """A local path, or an s3:// object fetched to a temp file."""
    if not source.startswith("s3://"):
        return Path(source)
    import tempfile

    from pixelpipe.manifests import split_uri
    from pixelpipe.resources.s3 import client_from_settings

    bucket, key = split_uri(source)
    local = Path(tempfile.mkdtemp()) / Path(key).name
    client_from_settings(_settings()).download_file(bucket, key, str(local))
    return local


@convert_app.command("ls-to-coco")
def ls_to_coco_cmd(
    input: str = typer.Argument(..., help="Label Studio JSON export (path or s3://)"),
    output: Path = typer.Argument(..., help="COCO JSON to write"),
    label_config: str = typer.Option(None, "--label-config", help="label config XML"),
) -> None:
    """Label Studio export -> COCO (raw pixels), rectangles only; other result types counted."""
    from pixelpipe.annotations.labelstudio import ls_to_coco

    export = _read_input(input)
    config = label_config or (
        str(export.with_name("label_config.xml"))
        if export.with_name("label_config.xml").exists()
        else None
    )
    result = ls_to_coco(export, _read_input(config) if config else None)
    output.write_text(json.dumps(result.coco, indent=1))
    typer.echo(
        f"wrote {output}: {len(result.coco['images'])} images, "
        f"{len(result.coco['annotations'])} boxes; skipped {result.skipped or 'nothing'}"
    )


@convert_app.command("coco-to-ls")
def coco_to_ls_cmd(
    input: str = typer.Argument(..., help="COCO JSON (path or s3://)"),
    output: Path = typer.Argument(..., help="Label Studio import JSON to write"),
    bucket: str = typer.Option(None, "--bucket", help="bucket of the images (NORMALIZED_BUCKET)"),
    urls: str = typer.Option("s3", "--urls", help="image URLs: s3 | presigned"),
    expires: int = typer.Option(7 * 86400, "--expires", help="presigned URL lifetime, seconds"),
) -> None:
    """COCO -> Label Studio import (boxes as predictions) + a label config with RectangleLabels
    and an image-level Choices control."""
    from pixelpipe.annotations.ls_import import coco_to_ls

    settings = _settings()
    bucket = bucket or settings.normalized_bucket
    if urls not in {"s3", "presigned"}:
        raise typer.BadParameter(f"--urls {urls!r}: expected s3 or presigned")
    if urls == "presigned":
        from pixelpipe.resources.s3 import client_from_settings

        client = client_from_settings(settings)

        def image_url(name: str) -> str:
            return client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": name}, ExpiresIn=expires
            )
    else:

        def image_url(name: str) -> str:
            return f"s3://{bucket}/{name}"

    coco = json.loads(_read_input(input).read_text())
    tasks, config = coco_to_ls(coco, image_url)
    output.write_text(json.dumps(tasks, indent=1))
    config_path = output.with_suffix(".label_config.xml")
    config_path.write_text(config)
    typer.echo(f"wrote {output} ({len(tasks)} tasks with predictions) and {config_path}")


def main() -> None:
    """Entry point that turns configuration errors into a clean exit."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        app()
    except SettingsError as exc:
        typer.secho(str(exc), fg="red", err=True)
        sys.exit(2)
