"""The trained model as an MLflow pyfunc (raw image bytes -> labels), its logging and registry.

Artifacts of a logged model: `model.pt` (TorchScript) and `preprocess.json`
({input_width, input_height, mode, mean, std, labels, threshold, task, thresholds}). The
pyfunc and
`load_predictor` run the same `loaders.preprocess_images`, so serving sees exactly what
training saw. Serve it from the pixelpipe environment (the class lives in this package):

    mlflow models serve -m "models:/pixelpipe-detector@candidate" --env-manager local

and POST {"dataframe_records": [{"image": "<base64 JPEG/PNG>"}]} to /invocations.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

MODEL_FILE = "model.pt"
PREPROCESS_FILE = "preprocess.json"
CANDIDATE_ALIAS = "candidate"
IMAGE_COLUMN = "image"
LABELS_COLUMN = "labels"
DETECTIONS_COLUMN = "detections"


@dataclass(frozen=True)
class PreprocessSpec:
    """What a raw image goes through before the network, and how scores become labels."""

    input_width: int
    input_height: int
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    threshold: float = 0.5
    task: str = "classification"
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def threshold_of(self, label: str) -> float:
        """The class's own threshold (chosen on validation), else the fallback."""
        return self.thresholds.get(label, self.threshold)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        return cls(
            input_width=int(data["input_width"]),
            input_height=int(data["input_height"]),
            mode=str(data["mode"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            labels=tuple(str(v) for v in data["labels"]),
            threshold=float(data.get("threshold", 0.5)),
            task=str(data.get("task", "classification")),
            thresholds={str(k): float(v) for k, v in (data.get("thresholds") or {}).items()},
        )


class Predictor:
    """TorchScript model + preprocessing: encoded images in, scores (and boxes) out.

    A detection model's TorchScript file returns N x K x 6 [x, y, w, h, score, class] in
    input pixels; `detect` maps those back to each source image's pixels.
    """

    def __init__(self, module: Any, spec: PreprocessSpec, device: str = "cpu") -> None:
        self.module = module
        self.spec = spec
        self.device = torch.device(device)

    @property
    def is_detector(self) -> bool:
        return self.spec.task == "detection"

    def _forward(self, blobs: Sequence[bytes]) -> tuple[torch.Tensor, list[Any]]:
        from pixelpipe.serving.detections import input_geometry
        from pixelpipe.training.loaders import decode_image, normalize, to_input_size

        s = self.spec
        arrays, geoms = [], []
        for blob in blobs:
            rgb = decode_image(blob)
            geoms.append(input_geometry(rgb.shape[1], rgb.shape[0], s))
            arrays.append(to_input_size(rgb, s.input_width, s.input_height, s.mode))
        # NCHW-contiguous: an exported detector flattens its heatmap with view(), which fails
        # on the channels-last strides a bare permute gives
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        batch = normalize(pixels, s.mean, s.std)
        with torch.inference_mode():
            out = self.module(batch.to(self.device)).float().cpu()
        return out, geoms

    def detect(self, blobs: Sequence[bytes]) -> list[list[dict[str, Any]]]:
        """Per image, detections {label, score, box [x, y, w, h]} in source pixels."""
        from pixelpipe.serving.detections import to_source

        if not self.is_detector:
            raise ValueError("this model is an image classifier; it has no boxes")
        if not blobs:
            return []
        raw, geoms = self._forward(blobs)
        return [to_source(r.numpy(), g, self.spec.labels) for r, g in zip(raw, geoms, strict=True)]

    def scores(self, blobs: Sequence[bytes]) -> npt.NDArray[np.float32]:
        """N x labels image-level scores (a detector's: each label's best box score)."""
        if not blobs:
            return np.zeros((0, len(self.spec.labels)), dtype=np.float32)
        if self.is_detector:
            from pixelpipe.serving.detections import label_scores

            rows = [label_scores(d, self.spec.labels) for d in self.detect(blobs)]
            return np.array([[r[k] for k in self.spec.labels] for r in rows], np.float32)
        out, _ = self._forward(blobs)
        return torch.sigmoid(out).numpy()

    def predict_images(self, blobs: Sequence[bytes]) -> list[dict[str, float]]:
        """One {label: score} dict per image, labels in category-id order."""
        return [
            {label: float(v) for label, v in zip(self.spec.labels, row, strict=True)}
            for row in self.scores(blobs)
        ]

    def over_threshold(self, scores: dict[str, float]) -> list[str]:
        """Labels whose score beats the class's own threshold."""
        return [label for label, v in scores.items() if v > self.spec.threshold_of(label)]


def _artifact_files(model_dir: Path) -> tuple[Path, Path]:
    for base in (model_dir, model_dir / "artifacts"):
        if (base / MODEL_FILE).is_file() and (base / PREPROCESS_FILE).is_file():
            return base / MODEL_FILE, base / PREPROCESS_FILE
    raise FileNotFoundError(
        f"{model_dir} holds no {MODEL_FILE} + {PREPROCESS_FILE} (nor under artifacts/)"
    )


def load_predictor_files(model_file: Path, preprocess_file: Path, device: str = "cpu") -> Predictor:
    spec = PreprocessSpec.from_dict(json.loads(Path(preprocess_file).read_text()))
    module = torch.jit.load(str(model_file), map_location=device)
    module.eval()
    return Predictor(module, spec, device)


def load_predictor(local_model_dir: str | Path, device: str = "cpu") -> Predictor:
    """A Predictor from a downloaded MLflow model directory (or a folder with the two files)."""
    model_file, preprocess_file = _artifact_files(Path(local_model_dir))
    return load_predictor_files(model_file, preprocess_file, device)


class ImageModel(PythonModel):
    """pyfunc: DataFrame with base64 `image` -> a score column per label, `labels` and, for a
    detector, `detections` (JSON: [{label, score, box: [x, y, w, h]}] in source pixels)."""

    def load_context(self, context: Any) -> None:
        self.predictor = load_predictor_files(
            Path(context.artifacts["model"]), Path(context.artifacts["preprocess"])
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        del context, params
        blobs = [_as_bytes(v) for v in model_input[IMAGE_COLUMN]]
        return predictions_frame(self.predictor, blobs)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return base64.b64decode(str(value), validate=True)


def predictions_frame(predictor: Predictor, blobs: Sequence[bytes]) -> pd.DataFrame:
    """The pyfunc's answer: image-level scores and labels, plus boxes for a detector."""
    from pixelpipe.serving.detections import label_scores

    labels = list(predictor.spec.labels)
    if predictor.is_detector:
        found = predictor.detect(blobs)
        scores = np.array([[label_scores(d, labels)[k] for k in labels] for d in found])
    else:
        scores = predictor.scores(blobs)
    frame = pd.DataFrame(scores.astype(np.float64).reshape(-1, len(labels)), columns=labels)
    frame[LABELS_COLUMN] = [
        predictor.over_threshold(dict(zip(labels, row.tolist(), strict=True))) for row in scores
    ]
    if predictor.is_detector:
        frame[DETECTIONS_COLUMN] = [json.dumps(d) for d in found]
    return frame


def export_model(model: torch.nn.Module, spec: PreprocessSpec, out_dir: Path) -> tuple[Path, Path]:
    """Write model.pt (TorchScript, CPU, eval mode) and preprocess.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(model).to("cpu").float().eval()
    example = torch.zeros(1, 3, spec.input_height, spec.input_width)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the asked format
        # top-k sizes become constants of the trace: the input size is fixed per model
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(cpu_model, example)
        model_file = out_dir / MODEL_FILE
        torch.jit.save(traced, str(model_file))
    preprocess_file = out_dir / PREPROCESS_FILE
    preprocess_file.write_text(json.dumps(spec.to_dict(), indent=2))
    return model_file, preprocess_file


def _signature(labels: Sequence[str], detector: bool) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

    inputs = Schema([ColSpec(DataType.string, IMAGE_COLUMN)])
    columns: list[ColSpec | TensorSpec] = [ColSpec(DataType.double, label) for label in labels]
    columns.append(ColSpec(Array(DataType.string), LABELS_COLUMN))
    if detector:
        columns.append(ColSpec(DataType.string, DETECTIONS_COLUMN))
    outputs = Schema(columns)
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        "numpy",
        "pandas",
        "pillow",
        "simplejpeg",
        "opencv-python-headless",
    ]


def log_pyfunc_model(
    model: torch.nn.Module, spec: PreprocessSpec, example_image: bytes, name: str = "model"
) -> Any:
    """Log the pyfunc model into the active run; returns mlflow's ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp:
        model_file, preprocess_file = export_model(model, spec, Path(tmp))
        example = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(example_image).decode("ascii")]})
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=ImageModel(),
            artifacts={"model": str(model_file), "preprocess": str(preprocess_file)},
            signature=_signature(spec.labels, spec.task == "detection"),
            input_example=example,
            pip_requirements=pip_requirements(),
        )


def register_candidate(
    client: MlflowClient, model_uri: str, name: str, tags: dict[str, str] | None = None
) -> str:
    """Register model_uri (a logged model's URI, not runs:/) and point alias 'candidate' at it."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
    return str(version.version)


def code_version() -> str:
    """The git commit of the checkout this code runs from, else the package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pixelpipe=={version('pixelpipe')}"
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """Point mlflow's fluent API at uri (tracking and registry), restoring both afterwards."""
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created on first use (tolerating a concurrent creator)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
