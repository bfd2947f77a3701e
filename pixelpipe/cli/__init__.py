"""The `pixelpipe` command line: devstack, data, pipeline, conversion, benchmarks, reports."""

from __future__ import annotations

import os
import sys

import typer

from pixelpipe.cli.apps import app
from pixelpipe.settings import SettingsError

# importing a command module registers its commands, so this order is the order `--help` lists
# isort: off
from pixelpipe.cli import data, pipeline, models, stack  # noqa: F401
from pixelpipe.cli import bench, convert, infra  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Entry point that turns configuration errors into a clean exit."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        app()
    except SettingsError as exc:
        typer.secho(str(exc), fg="red", err=True)
        sys.exit(2)
