"""Offline predictions for a folder of images: scores, boxes for detectors, Choices imports."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "schemas" / "serving" / "predictions.schema.json"
)


class Detection(BaseModel):
    """One box the detector found, in the source image's pixels."""

    model_config = ConfigDict(extra="forbid")

    label: str
    score: float
    box: list[float] = Field(
        min_length=4, max_length=4, description="[x, y, width, height] in source pixels"
    )


class PredictionRecord(BaseModel):
    """One image: every label's score, the labels over their thresholds (and, from a detector,
    its boxes and the image's size), or why it failed."""

    model_config = ConfigDict(extra="forbid")

    path: str
    width: int | None = Field(None, description="source width in pixels (detectors)")
    height: int | None = Field(None, description="source height in pixels (detectors)")
    scores: dict[str, float] | None = Field(
        None, description="image-level score per label (a detector's: its best box score)"
    )
    labels: list[str] = Field(default_factory=list)
    detections: list[Detection] | None = Field(
        None, description="every box over the score floor, best first (detectors)"
    )
    error: str | None = None


class PredictionsDocument(BaseModel):
    """What batch prediction writes: model, task, labels and thresholds, one record per image."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_version: str
    task: Literal["classification", "detection"]
    labels: list[str]
    threshold: float = Field(description="the fallback for labels without their own threshold")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-label thresholds chosen on validation"
    )
    predictions: list[PredictionRecord]


def _is_detector(predictor: Any) -> bool:
    return bool(getattr(predictor, "is_detector", False))


def _records(predictor: Any, paths: Sequence[str]) -> list[dict[str, Any]]:
    """Records for one batch of files; raises if any file cannot be read or decoded."""
    from pixelpipe.serving.detections import label_scores

    labels = list(predictor.spec.labels)
    blobs = [Path(p).read_bytes() for p in paths]
    if not _is_detector(predictor):
        rows = predictor.scores(blobs)
        out = []
        for path, row in zip(paths, rows, strict=True):
            scores = {label: float(v) for label, v in zip(labels, row, strict=True)}
            out.append({"path": path, "scores": scores, "labels": predictor.over_threshold(scores)})
        return out
    from pixelpipe.imaging.decode import image_size

    out = []
    for path, found in zip(paths, predictor.detect(blobs), strict=True):
        width, height = image_size(path)  # the upright size the boxes are in
        scores = label_scores(found, labels)
        out.append(
            {
                "path": path,
                "width": width,
                "height": height,
                "scores": scores,
                "labels": predictor.over_threshold(scores),
                "detections": [dict(d) for d in found],
            }
        )
    return out


def predict_files(
    predictor: Any, paths: Sequence[str | Path], batch_size: int = 32
) -> list[dict[str, Any]]:
    """Score image files in batches; an unreadable file gets `error` instead of scores.

    A detector's records also carry `detections` ({label, score, box [x, y, w, h]} in the
    source image's pixels) and the image's `width` and `height`; `labels` are those whose
    score beats the class's own threshold. A batch with a bad image is retried one image at
    a time, so one broken file costs only itself.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        try:
            out.extend(_records(predictor, chunk))
        except Exception:  # find the culprit(s) below, one image at a time
            out.extend(_predict_one(predictor, p) for p in chunk)
    return out


def _predict_one(predictor: Any, path: str) -> dict[str, Any]:
    try:
        return _records(predictor, [path])[0]
    except Exception as exc:  # a bad image is data, reported per file
        return {"path": path, "scores": None, "labels": [], "error": str(exc) or type(exc).__name__}


def predictions_document(
    predictions: Sequence[dict[str, Any]], predictor: Any, model_name: str, model_version: str
) -> dict[str, Any]:
    """The JSON document (schemas/serving/predictions.schema.json) for predict_files' output."""
    spec = predictor.spec
    return {
        "model_name": model_name,
        "model_version": str(model_version),
        "task": "detection" if _is_detector(predictor) else "classification",
        "labels": list(spec.labels),
        "threshold": float(spec.threshold),
        "thresholds": {str(k): float(v) for k, v in spec.thresholds.items()},
        "predictions": [dict(p) for p in predictions],
    }


def threshold_of(document: Mapping[str, Any], label: str) -> float:
    """A label's threshold in a predictions document: its own, else the fallback."""
    return float(document.get("thresholds", {}).get(label, document["threshold"]))


def validate_predictions(document: dict[str, Any]) -> None:
    """jsonschema.ValidationError (saying where) unless document matches the committed schema."""
    import jsonschema

    if SCHEMA_PATH.is_file():
        schema = json.loads(SCHEMA_PATH.read_text())
    else:  # an installed package without the repository's schemas/
        schema = PredictionsDocument.model_json_schema()
    jsonschema.validate(document, schema)


def _task_score(record: dict[str, Any]) -> float:
    """Confidence of the decision: mean score of the chosen labels, 1 - max score if none."""
    scores = record.get("scores") or {}
    chosen = [scores[label] for label in record.get("labels", []) if label in scores]
    if chosen:
        return float(sum(chosen) / len(chosen))
    return 1.0 - float(max(scores.values(), default=0.0))


def ls_choices_import(
    predictions: Sequence[dict[str, Any]],
    image_url: Callable[[str], str],
    model_version: str,
    choices_name: str = "class",
    to_name: str = "image",
    data_key: str = "image",
) -> list[dict[str, Any]]:
    """Label Studio import tasks whose prediction fills the image-level Choices control.

    The control is `<Choices name="class" toName="image" choice="multiple">` as
    `rectangle_config(..., choices_name="class")` and `coco_to_ls` write it. Each task's
    `predictions[0].result` holds one `choices` result with the labels over their thresholds
    (an empty result when no label passes); records with an `error` are skipped.
    `image_url(path)` maps a record's path to the URL Label Studio loads.
    """
    tasks = []
    for i, record in enumerate(predictions):
        if record.get("error") or record.get("scores") is None:
            continue
        score = _task_score(record)
        result = []
        if record.get("labels"):
            result.append(
                {
                    "id": f"p{i}c",
                    "from_name": choices_name,
                    "to_name": to_name,
                    "type": "choices",
                    "value": {"choices": list(record["labels"])},
                    "score": score,
                }
            )
        prediction = {"model_version": str(model_version), "score": score, "result": result}
        tasks.append({"data": {data_key: image_url(record["path"])}, "predictions": [prediction]})
    return tasks
