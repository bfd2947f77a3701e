"""The embedded stack (`devstack up|down|status|env`) and `demo`, which runs everything on it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from pixelpipe.cli.apps import DEFAULT_DIR, app, devstack_app, settings_or_exit


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
    stack = DevStack(dir, settings_or_exit())
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

    pids = DevStack(dir, settings_or_exit()).down()
    typer.echo(f"stopped {', '.join(map(str, pids))}" if pids else "nothing was running")


@devstack_app.command("status")
def devstack_status(dir: Path = typer.Option(DEFAULT_DIR, "--dir")) -> None:
    """Say what runs where."""
    from pixelpipe.devstack.stack import DevStack

    status = DevStack(dir, settings_or_exit()).status()
    typer.echo(json.dumps(status, indent=2))
    raise typer.Exit(0 if status["running"] else 1)


@devstack_app.command("env")
def devstack_env(dir: Path = typer.Option(DEFAULT_DIR, "--dir")) -> None:
    """Print `export NAME=value` lines for every setting the stack provides."""
    import shlex

    from pixelpipe.devstack.stack import DevStack

    settings = settings_or_exit()
    info = DevStack(dir, settings).info()
    if not info:
        typer.secho(f"no stack running in {dir}; run `pixelpipe devstack up`", fg="red", err=True)
        raise typer.Exit(1)
    for name, value in info.env(settings).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command()
def demo(
    dir: Path = typer.Option(DEFAULT_DIR, "--dir", help="stack state directory"),
    count: int = typer.Option(None, "--count", help="sample images (default DEMO_COUNT or 200)"),
) -> None:
    """Start the stack, generate and upload sample data, run every stage, print where to look."""
    from pixelpipe.demo import DEFAULT_COUNT, run_demo

    settings_or_exit()
    n = count or int(os.environ.get("DEMO_COUNT") or DEFAULT_COUNT)
    raise typer.Exit(run_demo(dir, n))
