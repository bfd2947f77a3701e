"""The model behind the service: decode and size images, batch the forward pass, map results."""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg
import torch
from PIL import Image, UnidentifiedImageError

from pixelpipe.imaging.geometry import Geometry
from pixelpipe.serving.api_models import (
    DETECTIONS_OUTPUT,
    IMAGE_INPUT,
    LABELS_OUTPUT,
    PLATFORM,
    SCORES_OUTPUT,
    TENSOR_INPUT,
)
from pixelpipe.serving.batching import BatchConfig, BatcherStopped, MicroBatcher
from pixelpipe.serving.detections import image_labels, input_geometry, label_scores, to_source
from pixelpipe.serving.errors import ApiError
from pixelpipe.serving.metrics import ServingMetrics

Array = npt.NDArray[np.float32]
Pixels = npt.NDArray[np.uint8]


def image_size(blob: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding pixels; ApiError if unusable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(blob)) as im:
                return im.size
        except Image.DecompressionBombError as exc:
            raise ApiError(413, f"decompression bomb refused: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ApiError(400, "not a supported image (JPEG, PNG, WebP, TIFF, ...)") from exc
        except Exception as exc:  # any parser failure on user bytes is the user's bad image
            raise ApiError(400, f"corrupt image header ({type(exc).__name__})") from exc


@dataclass(frozen=True)
class Prepared:
    """A preprocessed batch and, per image, how its source maps onto the model input."""

    tensor: torch.Tensor
    geometries: list[Geometry]


@dataclass(frozen=True)
class Answer:
    """What the model says about one image: image-level scores (model label order), boxes."""

    scores: list[float]
    detections: list[dict[str, Any]]


class ModelService:
    """Predictor + micro-batcher + metrics: decode in worker threads, batch the forward pass.

    A detector's forward pass gives K x 6 [x, y, w, h, score, class] per image in input pixels;
    each image's Geometry maps them back to its source pixels. A classifier gives sigmoid scores.
    """

    def __init__(
        self,
        predictor: Any,
        model_name: str,
        model_version: str,
        batch: BatchConfig,
        max_pixels: int,
        max_images: int,
        dct_scaling: bool = True,
    ) -> None:
        self.predictor = predictor
        self.dct_scaling = dct_scaling
        self.spec = predictor.spec
        self.name = model_name
        self.version = str(model_version)
        self.max_pixels = max_pixels
        self.max_images = max_images
        self.metrics = ServingMetrics(model_name, self.version, PLATFORM)
        self.batcher: MicroBatcher[torch.Tensor, Array] = MicroBatcher(
            self._run_batch, batch, self.metrics.observe_batch
        )

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def is_detector(self) -> bool:
        return bool(self.spec.task == "detection")

    @property
    def task(self) -> str:
        return "detection" if self.is_detector else "classification"

    @property
    def outputs(self) -> list[str]:
        """The output names of /infer, in answer order."""
        names = [SCORES_OUTPUT, LABELS_OUTPUT]
        return [*names, DETECTIONS_OUTPUT] if self.is_detector else names

    @property
    def ready(self) -> bool:
        return self.batcher.running

    def _run_batch(self, tensors: list[torch.Tensor]) -> list[Array]:
        """One forward pass over every queued request; runs in the inference thread.

        Per request: a detector's raw N x K x 6, a classifier's N x C sigmoid scores.
        """
        x = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        # exported detectors flatten their heatmap with view(): NCHW-contiguous input only
        x = x.contiguous()
        with torch.inference_mode():
            out = self.predictor.module(x.to(self.predictor.device)).float()
        if not self.is_detector:
            out = torch.sigmoid(out)
        result = out.cpu().numpy()
        bounds = np.cumsum([t.shape[0] for t in tensors])[:-1]
        return list(np.split(result, bounds))

    def warm_up(self) -> None:
        """A few passes at batch 1 and full size: TorchScript optimises on its first calls."""
        s = self.spec
        for n in (1, 1, self.batcher.config.max_batch_size, self.batcher.config.max_batch_size):
            self._run_batch([torch.zeros(n, 3, s.input_height, s.input_width)])

    def decode(self, blob: bytes) -> tuple[Pixels, Geometry]:
        """One encoded image -> input-sized HxWx3 uint8 (as stage 2 makes its variants) and how
        the upright source maps onto it.

        Plain JPEGs decode at the smallest DCT scale that still covers the input size (as
        resize_cpu.decode_for_variants does for the training images); their header size is the
        upright size, since plain_jpeg_size refuses EXIF-rotated files. Everything else, and any
        JPEG libjpeg-turbo refuses, takes the training loader's full decode, sized by its pixels.
        """
        from pixelpipe.imaging.geometry import needed_size
        from pixelpipe.imaging.resize_cpu import finish, plain_jpeg_size, resize
        from pixelpipe.training.loaders import decode_image, to_input_size

        header = plain_jpeg_size(blob) if self.dct_scaling else None
        if header is not None:
            geom = input_geometry(header[0], header[1], self.spec)
            need_w, need_h = needed_size([geom])
            try:
                rgb = simplejpeg.decode_jpeg(
                    blob,
                    colorspace="RGB",
                    fastdct=True,
                    fastupsample=True,
                    strict=True,
                    min_width=min(need_w, header[0]),
                    min_height=min(need_h, header[1]),
                )
                resized = resize(rgb, geom.resized_width, geom.resized_height)
                return np.ascontiguousarray(finish(resized, geom)), geom
            except ValueError:
                pass  # truncated or corrupt: the full decode below names the reason
        rgb = decode_image(blob)
        geom = input_geometry(rgb.shape[1], rgb.shape[0], self.spec)
        s = self.spec
        return to_input_size(rgb, s.input_width, s.input_height, s.mode), geom

    def preprocess(self, blobs: Sequence[bytes]) -> Prepared:
        """Encoded images -> normalised float NCHW + geometries; ApiError naming the first
        unusable image."""
        from pixelpipe.training.loaders import normalize

        started = time.perf_counter()
        arrays, geoms = [], []
        for i, blob in enumerate(blobs):
            where = f"image {i}" if len(blobs) > 1 else "image"
            if not blob:
                raise ApiError(400, f"{where} is empty")
            try:
                width, height = image_size(blob)
            except ApiError as exc:
                raise ApiError(exc.status, f"{where}: {exc.message}") from exc
            if width * height > self.max_pixels:
                raise ApiError(
                    413,
                    f"{where}: decompression bomb refused: {width}x{height} = "
                    f"{width * height} pixels > limit {self.max_pixels}",
                )
            try:
                rgb, geom = self.decode(blob)
            except Exception as exc:  # ImageError and any decoder failure on user bytes
                reason = str(exc) or type(exc).__name__
                raise ApiError(400, f"{where}: cannot decode: {reason}") from exc
            arrays.append(rgb)
            geoms.append(geom)
        # uint8 NCHW made contiguous before normalising: a quarter of the bytes to move
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        tensor = normalize(batch, self.spec.mean, self.spec.std)
        self.metrics.observe_preprocess(time.perf_counter() - started)
        return Prepared(tensor, geoms)

    def tensor_input(self, tensor: torch.Tensor) -> Prepared:
        """An already preprocessed FP32 batch: no source image, so boxes stay in input pixels."""
        s = self.spec
        geom = input_geometry(s.input_width, s.input_height, s)
        return Prepared(tensor, [geom] * int(tensor.shape[0]))

    async def answer(self, prepared: Prepared) -> list[Answer]:
        """Run a prepared batch through the micro-batcher; one Answer per image."""
        batch = prepared.tensor
        try:
            raw = await self.batcher.submit(batch, size=int(batch.shape[0]))
        except BatcherStopped as exc:
            raise ApiError(503, str(exc)) from exc
        if not np.isfinite(raw).all():
            raise ApiError(400, "the model produced non-finite scores for this input")
        if not self.is_detector:
            return [Answer(row.tolist(), []) for row in raw]
        answers = []
        for rows, geom in zip(raw, prepared.geometries, strict=True):
            found = to_source(rows, geom, self.spec.labels)
            best = label_scores(found, self.spec.labels)
            answers.append(Answer([best[k] for k in self.spec.labels], found))
        return answers

    def labels_of(self, answer: Answer, threshold: float | None = None) -> list[str]:
        """Labels over their own thresholds (preprocess.json), or all over `threshold`."""
        thresholds = dict(self.spec.thresholds) if threshold is None else {}
        fallback = self.spec.threshold if threshold is None else threshold
        if self.is_detector:
            return image_labels(answer.detections, thresholds, fallback)
        pairs = zip(self.spec.labels, answer.scores, strict=True)
        return [label for label, v in pairs if v > thresholds.get(label, fallback)]

    def infer_outputs(
        self, answers: Sequence[Answer], names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The OIP output tensors called `names` (in that order) for a batch's answers."""
        out: list[dict[str, Any]] = []
        for name in names:
            if name == SCORES_OUTPUT:
                data: list[Any] = [v for a in answers for v in a.scores]
                shape = [len(answers), len(self.spec.labels)]
                out.append({"name": name, "datatype": "FP32", "shape": shape, "data": data})
                continue
            if name == LABELS_OUTPUT:
                data = [json.dumps(self.labels_of(a)) for a in answers]
            else:
                data = [json.dumps(a.detections) for a in answers]
            out.append({"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data})
        return out

    def metadata(self) -> dict[str, Any]:
        s = self.spec
        outputs: list[dict[str, Any]] = [
            {"name": SCORES_OUTPUT, "datatype": "FP32", "shape": [-1, len(s.labels)]},
            {"name": LABELS_OUTPUT, "datatype": "BYTES", "shape": [-1]},
        ]
        parameters: dict[str, Any] = {
            "task": self.task,
            "labels": list(s.labels),
            "threshold": s.threshold,
            "thresholds": dict(s.thresholds),
            "input_width": s.input_width,
            "input_height": s.input_height,
            "mode": s.mode,
            "mean": list(s.mean),
            "std": list(s.std),
        }
        if self.is_detector:
            outputs.append({"name": DETECTIONS_OUTPUT, "datatype": "BYTES", "shape": [-1]})
            parameters["box_pixels"] = {
                IMAGE_INPUT: "source image pixels (after EXIF orientation)",
                TENSOR_INPUT: f"model input pixels ({s.input_width}x{s.input_height}): "
                "an FP32 tensor has no source image",
            }
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [
                {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                {
                    "name": TENSOR_INPUT,
                    "datatype": "FP32",
                    "shape": [-1, 3, s.input_height, s.input_width],
                },
            ],
            "outputs": outputs,
            "parameters": parameters,
        }
