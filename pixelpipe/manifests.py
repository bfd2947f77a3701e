"""Manifest models (pydantic), their JSON Schemas, and write-once storage in S3."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pixelpipe.imaging.boxes import Box
from pixelpipe.schema_files import write_schema_files

SCHEMA_VERSION = 1  # every document says schema_version: 1 (a Literal, so a bump is a new model)
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MANIFEST_ROOT = "_manifests"


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


# --- storage -------------------------------------------------------------------------------


def content_digest(manifest: Any) -> str:
    """sha256 of what a manifest says, without run id, time or timings (so re-runs match)."""
    body = manifest.model_dump(mode="json", exclude={"run_id", "created_at", "stats"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def manifest_prefix(asset: str, partition: str) -> str:
    return f"{MANIFEST_ROOT}/{asset}/{partition}"


CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _put_new(s3: Any, bucket: str, key: str, body: bytes) -> bool:
    """Put `key` unless it exists (If-None-Match); False when it was already there."""
    import botocore.exceptions

    for _ in range(5):
        try:
            s3.put_object(
                Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json"
            )
            return True
        except botocore.exceptions.ClientError as exc:
            code = _error_code(exc)
            if code in {"PreconditionFailed", "412"}:
                return False
            if code not in {"ConditionalRequestConflict", "409"}:
                raise
            time.sleep(0.2)  # another identical write is in flight: ask again
    return False


def write_manifest(
    s3: Any, bucket: str, manifest: Any, *, conditional: bool, run_started: float | None = None
) -> tuple[str, bool]:
    """Write a manifest that is never rewritten in place; return (s3 uri, newly_written).

    With conditional writes the key is content-addressed and put with If-None-Match, so a
    re-run that produced the same outputs finds the first run's manifest and keeps it.
    Without them, each run writes its own key. Then `latest.json` moves to it, unless a run
    that started later already put its own manifest there (`advance_latest`).
    """
    prefix = manifest_prefix(manifest.asset, manifest.partition)
    body = manifest.model_dump_json(indent=1).encode()
    written = True
    if conditional:
        key = f"{prefix}/manifest-{content_digest(manifest)[:16]}.json"
        written = _put_new(s3, bucket, key, body)
    else:
        key = f"{prefix}/runs/{manifest.run_id}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    uri = f"s3://{bucket}/{key}"
    started = time.time() if run_started is None else run_started
    advance_latest(s3, bucket, prefix, uri, manifest.run_id, started, conditional=conditional)
    return uri, written


def _read_pointer(s3: Any, bucket: str, key: str) -> tuple[dict[str, Any] | None, str | None]:
    import botocore.exceptions

    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) in {"NoSuchKey", "404"}:
            return None, None
        raise
    return json.loads(response["Body"].read()), response.get("ETag")


def advance_latest(
    s3: Any,
    bucket: str,
    prefix: str,
    uri: str,
    run_id: str,
    run_started: float,
    *,
    conditional: bool,
) -> bool:
    """Point `<prefix>/latest.json` at `uri` unless a run that started later is there already.

    latest.json only moves forward: the run started last wins, whichever finishes last. With
    conditional writes the put carries If-Match on the ETag just read (If-None-Match when there
    is none), so two runs racing cannot both win; without them the rule still holds but two
    writes within the same instant may race. Returns True when the pointer moved.
    """
    import botocore.exceptions

    key = f"{prefix}/latest.json"
    mine = (run_started, run_id)
    pointer = json.dumps({"manifest_uri": uri, "run_id": run_id, "run_started": run_started})
    for _ in range(10):
        current, etag = _read_pointer(s3, bucket, key)
        if current is not None:
            theirs = (float(current.get("run_started") or 0.0), str(current.get("run_id", "")))
            if theirs >= mine:
                return False
        extra: dict[str, str] = {}
        if conditional:
            extra = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=pointer.encode(),
                ContentType="application/json",
                **extra,
            )
            return True
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) not in CONFLICT_CODES:
                raise
            time.sleep(0.1)  # someone else moved it: read again and decide again
    raise RuntimeError(f"s3://{bucket}/{key} kept changing under concurrent writers")


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def read_json(s3: Any, uri: str) -> dict[str, Any]:
    """The JSON object stored at an s3:// URI."""
    bucket, key = split_uri(uri)
    doc: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return doc


def latest_manifest_uri(s3: Any, bucket: str, asset: str, partition: str) -> str | None:
    """The manifest the partition's latest run wrote, or None if it never completed."""
    import botocore.exceptions

    try:
        pointer = read_json(s3, f"s3://{bucket}/{manifest_prefix(asset, partition)}/latest.json")
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise
    return str(pointer["manifest_uri"])


if __name__ == "__main__":
    for written_path in write_schemas():
        print(written_path)
