"""Commands that run and check the pipeline in-process: `poll`, `rerun`, `audit`."""

from __future__ import annotations

import typer

from pixelpipe.cli.apps import app, settings_or_exit


@app.command()
def poll(
    prefix: str = typer.Option(None, "--prefix", help="raw prefix to watch (default RAW_PREFIX)"),
    once: bool = typer.Option(False, "--once", help="one tick, then exit"),
    interval: float = typer.Option(10.0, "--interval", help="seconds between ticks"),
) -> None:
    """Evaluate the raw-images sensor on DAGSTER_HOME's instance and run its batches in-process."""
    from pixelpipe.pipeline import poll as run_poll

    settings = settings_or_exit()
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

    outcome = run_again(settings_or_exit(), partition, echo=typer.echo)
    if not outcome.success:
        raise typer.Exit(1)


@app.command()
def audit(
    prefix: str = typer.Option(None, "--prefix", help="raw prefix to audit (default RAW_PREFIX)"),
    verify_bytes: bool = typer.Option(True, "--verify-bytes/--no-verify-bytes"),
) -> None:
    """Check that every raw image under PREFIX has exactly its outputs, and that they are intact."""
    from pixelpipe.audit import audit as run_audit
    from pixelpipe.storage.client import client_from_settings

    settings = settings_or_exit()
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
