"""Manifest models (pydantic) and their JSON Schemas (S3 storage: storage/manifest_store.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pixelpipe.imaging.boxes import Box
from pixelpipe.schema_files import write_schema_files

# the storage functions stay reachable as mf.read_json, mf.write_manifest, ...
from pixelpipe.storage.manifest_store import CONFLICT_CODES as CONFLICT_CODES
from pixelpipe.storage.manifest_store import MANIFEST_ROOT as MANIFEST_ROOT
from pixelpipe.storage.manifest_store import advance_latest as advance_latest
from pixelpipe.storage.manifest_store import content_digest as content_digest
from pixelpipe.storage.manifest_store import latest_manifest_uri as latest_manifest_uri
from pixelpipe.storage.manifest_store import manifest_prefix as manifest_prefix
from pixelpipe.storage.manifest_store import read_json as read_json
from pixelpipe.storage.manifest_store import split_uri as split_uri
from pixelpipe.storage.manifest_store import write_manifest as write_manifest

SCHEMA_VERSION = 1  # every document says schema_version: 1 (a Literal, so a bump is a new model)
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BoxRecord(_Model):
    """A box in the pixels of the image it belongs to (COCO xywh, top-left origin)."""

    label: str
    x: float
    y: float
    w: float
    h: float


class Failure(_Model):
    """An input that failed alone, and why."""

    source_uri: str
    reason: str


class StageStats(_Model):
    """Counts, bytes and seconds of one stage run."""

    inputs: int = 0
    outputs: int = 0
    failures: int = 0
    skipped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds_stage_in: float = 0.0
    seconds_compute: float = 0.0
    seconds_stage_out: float = 0.0
    images_per_second: float = 0.0


class BatchObject(_Model):
    """One raw object of a batch, pinned by its ETag."""

    key: str
    etag: str
    size: int
    last_modified: str


class BatchListing(_Model):
    """The key list of one batch partition: a partition re-runs exactly these objects."""

    schema_version: Literal[1] = 1
    partition: str
    bucket: str
    prefix: str
    created_at: str
    objects: list[BatchObject]


class Stage1Item(_Model):
    """One augmented copy of one raw image."""

    source_uri: str
    source_key: str
    source_sha256: str = Field("", description="sha256 of the raw object's bytes as staged")
    output_uri: str
    sha256: str
    width: int
    height: int
    bytes: int
    copy_index: int
    seed: int
    transform: dict[str, Any] = Field(
        description="TransformRecord: seed, spec digest, sizes, matrix"
    )
    boxes: list[BoxRecord] = []


class Stage2Item(_Model):
    """One variant of one stage-1 image."""

    source_uri: str
    source_key: str = Field(description="the raw object key this image descends from")
    source_sha256: str = Field("", description="sha256 of that raw object's bytes")
    variant_name: str
    width: int
    height: int
    output_uri: str
    sha256: str
    bytes: int
    geometry: dict[str, Any]
    boxes: list[BoxRecord] = []


class VariantStats(_Model):
    """Per-variant output counts and bytes."""

    outputs: int
    bytes: int
    width: int
    height: int
    mode: str


class _Manifest(_Model):
    schema_version: Literal[1] = 1
    asset: str
    run_id: str
    partition: str
    created_at: str
    config: dict[str, Any]
    failures: list[Failure] = []
    stats: StageStats = StageStats()


class Stage1Manifest(_Manifest):
    """Stage 1 (augmented_images) manifest."""

    stage: Literal["augment"] = "augment"
    items: list[Stage1Item]


class Stage2Manifest(_Manifest):
    """Stage 2 (normalized_images) manifest."""

    stage: Literal["normalize"] = "normalize"
    items: list[Stage2Item]
    variant_stats: dict[str, VariantStats] = {}


class AnnotationArtifact(_Model):
    """One annotation file: where it is, its format and the variant its pixels belong to."""

    uri: str
    annotation_format: Literal["label_studio_json", "coco"]
    role: Literal["source", "converted", "dataset_index", "label_config"]
    variant: str | None = Field(None, description="None for raw pixels / source exports")
    partition: str | None = None
    images: int = 0
    annotations: int = 0
    sha256: str = ""


class AnnotationManifest(_Manifest):
    """Manifest of raw_annotations (LS -> COCO in raw pixels) or coco_annotations (per variant)."""

    stage: Literal["annotations"] = "annotations"
    artifacts: list[AnnotationArtifact]
    skipped: dict[str, int] = {}
    items: list[dict[str, Any]] = []


PredictionFormat = Literal["pixelpipe_predictions", "coco_results", "coco", "label_studio_json"]


class PredictionArtifact(_Model):
    """A predictions file: pixelpipe's JSON, COCO results with their images, or a Label Studio
    import with pre-annotations."""

    uri: str
    format: PredictionFormat
    images: int


class PredictionManifest(_Manifest):
    """batch_predictions manifest: which model scored a batch's raw images, and where it wrote."""

    stage: Literal["predict"] = "predict"
    artifacts: list[PredictionArtifact]
    items: list[dict[str, Any]] = []


class DatasetPartition(_Model):
    """One partition of a variant's dataset: its COCO file and the manifest it came from."""

    partition: str
    coco_uri: str
    sha256: str = Field(description="sha256 of the COCO document (canonical JSON)")
    manifest_uri: str | None = Field(description="the stage-2 manifest the COCO was made from")
    images: int
    annotations: int


class DatasetIndex(_Model):
    """What training reads for one size variant: every partition's COCO, categories, a digest."""

    schema_version: Literal[1] = 1
    variant: str
    width: int | None
    height: int | None
    mode: str | None
    bucket: str = Field(description="the bucket the COCO file_names (object keys) are in")
    categories: list[dict[str, Any]]
    partitions: list[DatasetPartition]
    images: int
    annotations: int
    digest: str = Field(description="changes whenever any partition's COCO or a category does")
    created_at: str


def boxes_of(item: Stage1Item | Stage2Item) -> list[Box]:
    """An item's boxes as the imaging code takes them."""
    return [Box(label=b.label, x=b.x, y=b.y, w=b.w, h=b.h) for b in item.boxes]


MODELS: dict[str, type[BaseModel]] = {
    "batch_listing": BatchListing,
    "stage1_manifest": Stage1Manifest,
    "stage2_manifest": Stage2Manifest,
    "annotation_manifest": AnnotationManifest,
    "prediction_manifest": PredictionManifest,
    "dataset_index": DatasetIndex,
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every model, keyed by file stem."""
    return {name: model.model_json_schema() for name, model in MODELS.items()}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate schemas/*.schema.json (committed; a test fails when they drift)."""
    return write_schema_files(json_schemas(), directory)


def validate_against_schema(name: str, document: dict[str, Any]) -> None:
    """Validate a JSON document against the committed schema; jsonschema errors say where."""
    import jsonschema

    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    jsonschema.validate(document, schema)


if __name__ == "__main__":
    for written_path in write_schemas():
        print(written_path)
