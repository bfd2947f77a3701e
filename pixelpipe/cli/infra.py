"""Deployed infrastructure (`infra verify`) and test reports (`report upload`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pixelpipe.cli.apps import infra_app, report_app, settings_or_exit


@infra_app.command("verify")
def infra_verify(
    variant: str = typer.Option(..., "--variant", help="aws | local"),
    outputs: str = typer.Option(None, "--outputs", help="`terraform output -json` file, or -"),
) -> None:
    """Check with boto3 that the buckets, ECR repos, schedules and queues in the outputs exist."""
    from pixelpipe import infra

    try:
        checks = infra.verify_deployment(variant, settings_or_exit(), outputs)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(infra.summarize(variant, checks))
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


@report_app.command("upload")
def report_upload(dir: Path = typer.Argument(..., exists=True, file_okay=False)) -> None:
    """Put test reports in the artifacts bucket under test-reports/<timestamp>/ and in MLflow."""
    from pixelpipe.reports import upload_reports

    result = upload_reports(dir, settings_or_exit())
    typer.echo(json.dumps(result, indent=2))
