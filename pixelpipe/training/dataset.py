"""Read a variant's dataset index, stage its images on local NVMe and split train/validation."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pixelpipe.settings import Settings
from pixelpipe.storage.keys import UnsafeKeyError, key_to_path
from pixelpipe.storage.transfer import download_many

STAGED_MARKER = ".staged.json"


class DatasetError(ValueError):
    """The dataset index or its files cannot be used; the message says which and why."""


def s3_client(settings: Settings) -> Any:
    """The project's one S3 client factory, for the settings' endpoint."""
    from pixelpipe.storage.client import client_from_settings

    return client_from_settings(settings)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b.json' -> ('bucket', 'a/b.json')."""
    if not uri.startswith("s3://"):
        raise DatasetError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise DatasetError(f"{uri!r} needs a bucket and a key: s3://BUCKET/KEY")
    return bucket, key


def _read_bytes(uri: str, settings: Settings | None, base: Path | None = None) -> bytes:
    if uri.startswith("s3://"):
        if settings is None:
            raise DatasetError(f"{uri}: reading from S3 needs settings")
        bucket, key = parse_s3_uri(uri)
        try:
            data: bytes = s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
            return data
        except Exception as exc:  # botocore raises one class per error code
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise DatasetError(f"cannot read {uri} ({code})") from None
    path = Path(uri.removeprefix("file://"))
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path} ({exc.strerror or exc})") from None


def _read_json(uri: str, settings: Settings | None, base: Path | None = None) -> dict[str, Any]:
    data = _read_bytes(uri, settings, base)
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{uri} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{uri} holds a JSON {type(doc).__name__}; expected an object")
    return doc


@dataclass(frozen=True)
class DatasetIndex:
    """One dataset version: a variant's partitions, categories and digest (see index.json)."""

    uri: str
    variant: str
    width: int
    height: int
    mode: str
    bucket: str | None
    categories: list[dict[str, Any]]
    partitions: list[dict[str, Any]]
    images: int
    annotations: int
    digest: str
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_local(self) -> bool:
        return not self.uri.startswith("s3://")

    @property
    def labels(self) -> list[str]:
        """Category names in id order (index i of a label vector is labels[i])."""
        return [c["name"] for c in sorted(self.categories, key=lambda c: int(c["id"]))]

    @property
    def category_ids(self) -> list[int]:
        return sorted(int(c["id"]) for c in self.categories)

    @classmethod
    def from_dict(cls, uri: str, doc: dict[str, Any]) -> DatasetIndex:
        try:
            digest = (
                str(doc.get("digest") or "")
                or hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
            )
            return cls(
                uri=uri,
                variant=str(doc["variant"]),
                width=int(doc["width"]),
                height=int(doc["height"]),
                mode=str(doc.get("mode", "fit")),
                bucket=doc.get("bucket"),
                categories=list(doc.get("categories") or []),
                partitions=list(doc.get("partitions") or []),
                images=int(doc.get("images", 0)),
                annotations=int(doc.get("annotations", 0)),
                digest=digest,
                created_at=doc.get("created_at"),
                raw=doc,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{uri} is not a dataset index ({exc!r} missing or wrong)") from None


def read_index(uri: str, settings: Settings | None = None) -> DatasetIndex:
    """Load a dataset index from S3 (s3://...) or a local path; DatasetError says why not."""
    return DatasetIndex.from_dict(uri, _read_json(uri, settings))


def known_variants(settings: Settings) -> list[str]:
    """Variants with a folder under s3://ARTIFACTS_BUCKET/datasets/ (empty if unreadable)."""
    try:
        pages = (
            s3_client(settings)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=settings.artifacts_bucket, Prefix="datasets/", Delimiter="/")
        )
        prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    except Exception:  # an unreachable store lists nothing; the caller says what is missing
        return []
    return sorted(p[len("datasets/") :].strip("/") for p in prefixes)


BoxRow = tuple[float, float, float, float, int]


@dataclass(frozen=True)
class Sample:
    """One training image: object key, local path, raw image key and sha256, classes, boxes.

    boxes are (x, y, width, height, class index) in the variant's pixels.
    """

    key: str
    path: str
    raw_key: str
    labels: tuple[int, ...]
    boxes: tuple[BoxRow, ...] = ()
    raw_sha256: str = ""
    width: int = 0
    height: int = 0

    @property
    def group(self) -> str:
        """What the split hashes: the raw content when known, else the raw key."""
        return self.raw_sha256 or self.raw_key


@dataclass
class StagedDataset:
    """An index whose images sit on local disk, as samples with multi-hot labels."""

    index: DatasetIndex
    root: Path
    samples: list[Sample]
    seconds: float = 0.0
    downloaded: int = 0

    @property
    def labels(self) -> list[str]:
        return self.index.labels

    def targets(self, samples: list[Sample] | None = None) -> npt.NDArray[np.float32]:
        return multi_hot(samples if samples is not None else self.samples, len(self.labels))


@dataclass
class TrainData:
    """One run's dataset: its index, the train / validation split and the staging time."""

    index: DatasetIndex
    train: list[Sample]
    val: list[Sample]
    stage_seconds: float


def multi_hot(samples: list[Sample], classes: int) -> npt.NDArray[np.float32]:
    """N x classes float32 matrix, 1 where the image holds the class."""
    out = np.zeros((len(samples), classes), dtype=np.float32)
    for row, sample in enumerate(samples):
        out[row, list(sample.labels)] = 1.0
    return out


def _entries_of(coco: dict[str, Any], class_of: dict[int, int], where: str) -> list[Sample]:
    labels: dict[int, set[int]] = {}
    boxes: dict[int, list[BoxRow]] = {}
    for ann in coco.get("annotations", []):
        cat = int(ann["category_id"])
        if cat not in class_of:
            raise DatasetError(f"{where}: annotation {ann.get('id')} has unknown category {cat}")
        labels.setdefault(int(ann["image_id"]), set()).add(class_of[cat])
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.setdefault(int(ann["image_id"]), []).append((x, y, w, h, class_of[cat]))
    return [
        Sample(
            key=str(im["file_name"]),
            path="",
            raw_key=str(im.get("raw_key") or im["file_name"]),
            labels=tuple(sorted(labels.get(int(im["id"]), ()))),
            boxes=tuple(boxes.get(int(im["id"]), ())),
            raw_sha256=str(im.get("raw_sha256") or ""),
            width=int(im.get("width") or 0),
            height=int(im.get("height") or 0),
        )
        for im in coco.get("images", [])
    ]


def _hash_unit(text: str) -> float:
    """A stable number in [0, 1) for text."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def index_samples(index: DatasetIndex, settings: Settings | None) -> list[Sample]:
    """Every image of every partition (COCO files read from S3 or disk), sorted by key."""
    class_of = {cat_id: i for i, cat_id in enumerate(index.category_ids)}
    base = None if not index.is_local else Path(index.uri).resolve().parent
    seen: dict[str, Sample] = {}
    for part in index.partitions:
        uri = str(part["coco_uri"])
        for sample in _entries_of(_read_json(uri, settings, base), class_of, uri):
            seen.setdefault(sample.key, sample)
    return sorted(seen.values(), key=lambda s: s.key)


def cap_samples(samples: list[Sample], max_images: int | None) -> list[Sample]:
    """A deterministic, class-mixed subset of at most max_images samples (by key hash)."""
    if max_images is None or len(samples) <= max_images:
        return samples
    chosen = sorted(samples, key=lambda s: _hash_unit(s.key))[:max_images]
    return sorted(chosen, key=lambda s: s.key)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock so processes on one machine stage a dataset once, not concurrently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _local_paths(root: Path, samples: list[Sample]) -> list[Sample]:
    out = []
    for s in samples:
        try:
            path = key_to_path(root, s.key)
        except UnsafeKeyError as exc:
            raise DatasetError(f"refusing image key {s.key!r}: {exc.reason}") from None
        out.append(dataclasses.replace(s, path=str(path)))
    return out


def _staged_keys(root: Path) -> set[str]:
    try:
        return set(json.loads((root / STAGED_MARKER).read_text())["keys"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _download(settings: Settings, bucket: str, missing: list[Sample]) -> None:
    client = s3_client(settings)
    report = download_many(
        lambda: client,
        bucket,
        [(s.key, s.path) for s in missing],
        concurrency=settings.s3_max_concurrency,
    )
    if report.failures:
        shown = "; ".join(f"{f.key}: {f.reason}" for f in report.failures[:3])
        raise DatasetError(
            f"{len(report.failures)} of {len(missing)} images failed to download from "
            f"s3://{bucket} ({shown})"
        )


def stage_dataset(
    index: DatasetIndex, settings: Settings, *, max_images: int | None = None
) -> StagedDataset:
    """Copy the index's images to NVME_ROOT/train/<digest[:12]>/ (reusing what is already there).

    A local index (not s3://) names images relative to its `root` field or its own folder;
    those are used in place.
    """
    started = time.perf_counter()
    samples = cap_samples(index_samples(index, settings), max_images)
    if not samples:
        raise DatasetError(f"{index.uri}: the dataset has no images")
    if index.is_local:
        base = Path(index.uri).resolve().parent / str(index.raw.get("root") or ".")
        staged = _local_paths(base, samples)
        return StagedDataset(index, base, staged, time.perf_counter() - started)
    if not index.bucket:
        raise DatasetError(f"{index.uri}: the index names no bucket for its images")
    root = Path(settings.nvme_root).resolve() / "train" / index.digest[:12]
    staged = _local_paths(root, samples)
    with _locked(root.parent / f"{root.name}.lock"):
        done = _staged_keys(root)
        missing = [s for s in staged if s.key not in done or not Path(s.path).is_file()]
        if missing:
            _download(settings, index.bucket, missing)
            keys = sorted(done | {s.key for s in staged})
            (root / STAGED_MARKER).write_text(json.dumps({"uri": index.uri, "keys": keys}))
    return StagedDataset(index, root, staged, time.perf_counter() - started, len(missing))


def split_samples(samples: list[Sample], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Train/validation split by a hash of each raw image's content (its sha256; the raw key
    where the COCO has none): every copy and variant of one image lands on one side, and the
    same images uploaded under another prefix split the same way."""
    raw_keys = sorted({s.group for s in samples}, key=_hash_unit)
    if len(raw_keys) < 2:
        raise DatasetError(
            f"{len(raw_keys)} distinct raw image(s): a train/validation split needs at least 2"
        )
    val_keys = {k for k in raw_keys if _hash_unit(k) < val_fraction}
    if not val_keys:
        val_keys = {raw_keys[0]}  # smallest hash: tiny datasets still get a validation image
    if len(val_keys) == len(raw_keys):
        val_keys.discard(raw_keys[-1])
    train = [s for s in samples if s.group not in val_keys]
    val = [s for s in samples if s.group in val_keys]
    return train, val
