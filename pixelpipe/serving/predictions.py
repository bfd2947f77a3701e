"""Offline predictions for a folder of images and their Label Studio import (Choices results)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "schemas" / "serving" / "predictions.schema.json"
)


class PredictionRecord(BaseModel):
    """One image: every label's score and the labels over the threshold, or why it failed."""

    model_config = ConfigDict(extra="forbid")

    path: str
    scores: dict[str, float] | None = None
    labels: list[str] = Field(default_factory=list)
    error: str | None = None


class PredictionsDocument(BaseModel):
    """What batch prediction writes: model, label set and threshold, one record per image."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_version: str
    labels: list[str]
    threshold: float
    predictions: list[PredictionRecord]


def _record(path: str, labels: Sequence[str], row: Any, threshold: float) -> dict[str, Any]:
    scores = {label: float(v) for label, v in zip(labels, row, strict=True)}
    return {
        "path": path,
        "scores": scores,
        "labels": [k for k, v in scores.items() if v > threshold],
    }


def predict_files(
    predictor: Any, paths: Sequence[str | Path], batch_size: int = 32
) -> list[dict[str, Any]]:
    """Score image files in batches; an unreadable file gets `error` instead of scores.

    A batch with a bad image is retried one image at a time, so one broken file costs only
    itself.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    labels = list(predictor.spec.labels)
    threshold = float(predictor.spec.threshold)
    out: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        try:
            rows = predictor.scores([Path(p).read_bytes() for p in chunk])
            out.extend(
                _record(p, labels, row, threshold) for p, row in zip(chunk, rows, strict=True)
            )
        except Exception:  # find the culprit(s) below, one image at a time
            out.extend(_predict_one(predictor, p, labels, threshold) for p in chunk)
    return out


def _predict_one(predictor: Any, path: str, labels: list[str], threshold: float) -> dict[str, Any]:
    try:
        row = predictor.scores([Path(path).read_bytes()])[0]
    except Exception as exc:  # a bad image is data, reported per file
        return {"path": path, "scores": None, "labels": [], "error": str(exc) or type(exc).__name__}
    return _record(path, labels, row, threshold)


def predictions_document(
    predictions: Sequence[dict[str, Any]], predictor: Any, model_name: str, model_version: str
) -> dict[str, Any]:
    """The JSON document (schemas/serving/predictions.schema.json) for predict_files' output."""
    return {
        "model_name": model_name,
        "model_version": str(model_version),
        "labels": list(predictor.spec.labels),
        "threshold": float(predictor.spec.threshold),
        "predictions": [dict(p) for p in predictions],
    }


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
        return sum(chosen) / len(chosen)
    return 1.0 - max(scores.values(), default=0.0)


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
    `predictions[0].result` holds one `choices` result with the labels over the threshold
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
