"""The `convert` commands: Label Studio export -> COCO and COCO -> Label Studio import."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pixelpipe.cli.apps import convert_app, settings_or_exit


def _read_input(source: str) -> Path:
    """A local path, or an s3:// object fetched to a temp file."""
    if not source.startswith("s3://"):
        return Path(source)
    import tempfile

    from pixelpipe.manifests import split_uri
    from pixelpipe.storage.client import client_from_settings

    bucket, key = split_uri(source)
    local = Path(tempfile.mkdtemp()) / Path(key).name
    client_from_settings(settings_or_exit()).download_file(bucket, key, str(local))
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

    settings = settings_or_exit()
    bucket = bucket or settings.normalized_bucket
    if urls not in {"s3", "presigned"}:
        raise typer.BadParameter(f"--urls {urls!r}: expected s3 or presigned")
    if urls == "presigned":
        from pixelpipe.storage.client import client_from_settings

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
