"""Prepare the training bench's dataset once through the real pipeline, keyed by its parameters.

datagen (small images) -> upload under RAW_BUCKET/bench/pt1-<key>/ (outside RAW_PREFIX, so a
running daemon's sensor leaves it alone) -> the sensor's batches, polled here -> Stage 1
(one augmented copy per image) -> Stage 2 (one small letterbox variant named pt1-<key>) ->
COCO + dataset index. The variant name carries the key, so its index lists exactly this set
and never mixes with another preparation. The key digests the image count, datagen seed and
sizes, the variant's size, the augmentation spec and the raw and normalized buckets. A marker
at ARTIFACTS_BUCKET/perf/prepared/<key>.json names the variant once the index holds every
image; a later bench with the same parameters reads it and skips the pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pixelpipe.settings import Settings

PREPARED_PREFIX = "perf/prepared"
BENCH_PREFIX = "bench"  # in RAW_BUCKET, beside (not under) the RAW_PREFIX the daemon watches
DEFAULT_IMAGE_SIZES: tuple[tuple[int, int], ...] = ((160, 120), (128, 96))
DEFAULT_INPUT = "96x96:letterbox"
MAX_TICKS = 50
RUNS_PER_SET = 16  # preparation batches: at most about this many runs, at least INGEST_BATCH_SIZE
Echo = Callable[[str], None]


class PrepareError(RuntimeError):
    """The pipeline did not turn the generated images into a complete dataset index."""


@dataclass(frozen=True)
class Prepared:
    """A dataset the pipeline made for the bench: its variant, index and how it was made."""

    key: str
    variant: str
    index_uri: str
    images: int
    count: int
    seed: int
    image_sizes: list[list[int]]
    input: str
    seconds: float
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepared_key(
    settings: Settings,
    count: int,
    seed: int,
    image_sizes: Sequence[tuple[int, int]],
    input_spec: str,
) -> str:
    """A short digest of what decides the prepared images and labels, and where they live."""
    doc = {"v": 1, "count": count, "seed": seed, "sizes": [list(s) for s in image_sizes],
           "input": input_spec, "copies": 1, "augment": settings.augment_spec,
           "buckets": [settings.raw_bucket, settings.normalized_bucket]}  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _pipeline_env(overrides: dict[str, str]) -> Iterator[None]:
    """Environment for the assets (they read get_settings()), restored afterwards."""
    from pixelpipe import settings as settings_mod

    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    settings_mod.get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings_mod.get_settings.cache_clear()


def _read_marker(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{PREPARED_PREFIX}/{key}.json")["Body"].read()
    except Exception as exc:  # botocore raises one class per error code
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404"}:
            return None
        raise
    return json.loads(body)


def _index_images(settings: Settings, uri: str) -> int:
    from pixelpipe.training.dataset import DatasetError, read_index

    try:
        return read_index(uri, settings).images
    except DatasetError:
        return 0


def _run_pipeline(
    settings: Settings, prefix: str, variant: str, input_spec: str, count: int, echo: Echo
) -> None:
    from pixelpipe.pipeline import poll

    batch = max(settings.ingest_batch_size, -(-count // RUNS_PER_SET))
    overrides = {
        "RAW_PREFIX": prefix,
        "NORMALIZE_SIZES": f"{variant}:{input_spec}",
        "AUGMENT_COPIES": "1",
        "INGEST_BATCH_SIZE": str(batch),
    }
    scoped = settings.model_copy(
        update={
            "raw_prefix": prefix,
            "normalize_sizes": overrides["NORMALIZE_SIZES"],
            "augment_copies": 1,
            "ingest_batch_size": batch,
        }
    )
    with _pipeline_env(overrides):
        for _ in range(MAX_TICKS):
            if not poll(scoped, prefix, echo=echo):
                return  # nothing new, nothing pending: every batch ran or failed for good


def prepare(
    settings: Settings,
    count: int,
    *,
    seed: int = 1234,
    image_sizes: Sequence[tuple[int, int]] = DEFAULT_IMAGE_SIZES,
    input_spec: str = DEFAULT_INPUT,
    echo: Echo = print,
) -> Prepared:
    """The dataset of `count` generated images as a pipeline-made variant, made once per key."""
    from pixelpipe.datagen import generate
    from pixelpipe.resources.s3 import client_from_settings
    from pixelpipe.uploads import upload_dataset

    if count < 2:
        raise ValueError(f"count={count}: expected at least 2 images (a train/validation split)")
    key = prepared_key(settings, count, seed, image_sizes, input_spec)
    s3 = client_from_settings(settings)
    bucket = settings.artifacts_bucket
    marker = _read_marker(s3, bucket, key)
    if marker and _index_images(settings, marker["index_uri"]) >= count:
        echo(f"prepared set {key}: reusing variant {marker['variant']} ({count} images)")
        return Prepared(**{**marker, "reused": True})
    variant = f"pt1-{key[:10]}"
    prefix = f"{BENCH_PREFIX}/{variant}"
    index_uri = f"s3://{bucket}/datasets/{variant}/index.json"
    started = time.perf_counter()
    echo(f"prepared set {key}: generating {count} images, then the pipeline into {variant}")
    with tempfile.TemporaryDirectory(prefix="pixelpipe-pt1-") as tmp:
        generate(Path(tmp), count, seed, sizes=image_sizes, workers=settings.worker_count)
        report = upload_dataset(Path(tmp), settings, prefix)
    if report.failures:
        shown = "; ".join(f"{f.key}: {f.reason}" for f in report.failures[:3])
        raise PrepareError(
            f"{len(report.failures)} uploads to s3://{settings.raw_bucket}/{prefix} failed: {shown}"
        )
    _run_pipeline(settings, prefix, variant, input_spec, count, echo)
    images = _index_images(settings, index_uri)
    if images < count:
        raise PrepareError(
            f"{index_uri} holds {images} images after the pipeline; expected {count} "
            f"(see the failed batches above, or `pixelpipe poll --prefix {prefix}`)"
        )
    prepared = Prepared(key, variant, index_uri, images, count, seed,
                        [list(s) for s in image_sizes], input_spec,
                        round(time.perf_counter() - started, 1))  # fmt: skip
    body = json.dumps(prepared.to_dict(), indent=2).encode()
    s3.put_object(Bucket=bucket, Key=f"{PREPARED_PREFIX}/{key}.json", Body=body)
    echo(f"prepared set {key}: {images} images in {prepared.seconds:.0f} s")
    return prepared
