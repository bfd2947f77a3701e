"""The Typer apps every command hangs on, and the settings prelude the commands share."""

from __future__ import annotations

from pathlib import Path

import typer

from pixelpipe.settings import Settings, SettingsError, get_settings

HELP = "The `pixelpipe` command line: devstack, data, pipeline, conversion, benchmarks, reports."

app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
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


def settings_or_exit() -> Settings:
    """The environment's Settings, or exit 2 with the error in red."""
    try:
        return get_settings()
    except SettingsError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
