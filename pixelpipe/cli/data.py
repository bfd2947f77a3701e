"""Commands that make and upload sample data: `datagen`, `upload`."""

from __future__ import annotations

from pathlib import Path

import typer

from pixelpipe.cli.apps import app, settings_or_exit


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

    settings = settings_or_exit()
    report = upload_dataset(dir, settings, prefix or settings.raw_prefix, progress=True)
    typer.echo(
        f"uploaded {report.count} objects, {report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s"
    )
    if report.failures:
        for failed in report.failures:
            typer.secho(f"failed {failed.key}: {failed.reason}", fg="red", err=True)
        raise typer.Exit(1)
