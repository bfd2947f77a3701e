"""Upload a datagen-style folder: images under a raw prefix, exports under ANNOTATIONS_PREFIX."""

from __future__ import annotations

from pathlib import Path

from pixelpipe.settings import Settings
from pixelpipe.storage.transfer import TransferReport, upload_many

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def plan_upload(directory: Path, settings: Settings, prefix: str) -> list[tuple[str, str]]:
    """(local path, key) pairs: annotation files go under ANNOTATIONS_PREFIX/<prefix>/."""
    items = []
    prefix = prefix.strip("/")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory)
        if rel.parts[0] == "annotations" or path.suffix.lower() in {".json", ".xml"}:
            tail = rel.relative_to("annotations") if rel.parts[0] == "annotations" else rel
            key = f"{settings.annotations_prefix}/{prefix}/{tail.as_posix()}"
        else:
            tail = rel.relative_to("images") if rel.parts[0] == "images" else rel
            key = f"{prefix}/{tail.as_posix()}"
        items.append((str(path), key.lstrip("/")))
    return items


def upload_dataset(
    directory: Path, settings: Settings, prefix: str, *, progress: bool = False
) -> TransferReport:
    """Upload concurrently into RAW_BUCKET, with a progress bar when asked."""
    from pixelpipe.resources.s3 import client_from_settings

    client = client_from_settings(settings)
    items = plan_upload(directory, settings, prefix)
    if not progress:
        return upload_many(lambda: client, settings.raw_bucket, items, settings.s3_max_concurrency)
    from rich.progress import Progress

    total = TransferReport()
    with Progress() as bar:
        task = bar.add_task(f"s3://{settings.raw_bucket}/{prefix}", total=len(items))
        for start in range(0, len(items), 64):
            chunk = items[start : start + 64]
            part = upload_many(
                lambda: client, settings.raw_bucket, chunk, settings.s3_max_concurrency
            )
            total.bytes += part.bytes
            total.seconds += part.seconds
            total.count += part.count
            total.failures += part.failures
            total.results += part.results
            bar.advance(task, len(chunk))
    return total
