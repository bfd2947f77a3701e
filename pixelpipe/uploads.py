"""Upload a datagen-style folder: images under a raw prefix, exports under ANNOTATIONS_PREFIX."""

from __future__ import annotations

from pathlib import Path

from pixelpipe.settings import Settings
from pixelpipe.storage.transfer import TransferReport, upload_many

CHUNK = 64
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
    """Upload concurrently into RAW_BUCKET, with a progress bar (objects, MB, MB/s) when asked."""
    from pixelpipe.storage.client import client_from_settings

    client = client_from_settings(settings)
    items = plan_upload(directory, settings, prefix)
    if not progress:
        return upload_many(lambda: client, settings.raw_bucket, items, settings.s3_max_concurrency)
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    total = TransferReport()
    # Chunks of a few pool-fulls: the bar moves often and the pool rarely runs dry between them.
    step = max(CHUNK, 4 * settings.s3_max_concurrency)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TextColumn("{task.fields[objects]}"))  # fmt: skip
    with Progress(*columns) as bar:
        task = bar.add_task(
            f"s3://{settings.raw_bucket}/{prefix}",
            total=sum(Path(path).stat().st_size for path, _ in items),
            objects=f"0/{len(items)} objects",
        )
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            part = upload_many(
                lambda: client, settings.raw_bucket, chunk, settings.s3_max_concurrency
            )
            total.bytes += part.bytes
            total.seconds += part.seconds
            total.count += part.count
            total.failures += part.failures
            total.results += part.results
            sent = sum(Path(path).stat().st_size for path, _ in chunk)
            bar.update(task, advance=sent, objects=f"{start + len(chunk)}/{len(items)} objects")
    return total
