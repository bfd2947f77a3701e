"""The pixel matrix by which each applied albumentations geometric transform moved the image."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

Matrix = npt.NDArray[np.float64]


class GeometryStep(BaseModel):
    """One applied geometric transform: its pixel matrix and the image size after it."""

    matrix: list[list[float]]
    width: int
    height: int


Shape = tuple[int, int]
StepMatrix = Callable[[A.BasicTransform, dict[str, Any], Shape, Shape], Matrix]


def geometry_steps(
    compose: A.Compose, applied: list[tuple[str, dict[str, Any]]], final: Shape
) -> list[GeometryStep]:
    """The pixel matrix and output size of every applied geometric step, in order."""
    out: list[GeometryStep] = []
    geometric = [t for t in compose.transforms if isinstance(t, A.DualTransform)]
    shapes = [tuple(params["shape"][:2]) for _, params in applied] + [final]
    steps = iter(geometric)
    for index, (name, params) in enumerate(applied):
        if name not in GEOMETRY:
            continue
        transform = next(t for t in steps if type(t).__name__ == name)
        matrix = GEOMETRY[name](transform, params, shapes[index], shapes[index + 1])
        height, width = shapes[index + 1]
        out.append(GeometryStep(matrix=matrix.tolist(), width=width, height=height))
    return out


def _from_normalized(matrix: Sequence[Sequence[float]], src: Shape, dst: Shape) -> Matrix:
    """Lift a matrix on 0..1 coordinates (how albumentations moves boxes) to pixels."""
    to_unit: Matrix = np.diag([1.0 / src[1], 1.0 / src[0], 1.0])
    to_pixels: Matrix = np.diag([float(dst[1]), float(dst[0]), 1.0])
    return to_pixels @ np.asarray(matrix, dtype=np.float64) @ to_unit


def _translate(dx: float, dy: float) -> Matrix:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


_UNIT = {
    "e": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    "h": [[-1, 0, 1], [0, 1, 0], [0, 0, 1]],
    "v": [[1, 0, 0], [0, -1, 1], [0, 0, 1]],
    "t": [[0, 1, 0], [1, 0, 0], [0, 0, 1]],
    "r90": [[0, 1, 0], [-1, 0, 1], [0, 0, 1]],
    "r180": [[-1, 0, 1], [0, -1, 1], [0, 0, 1]],
    "r270": [[0, -1, 1], [1, 0, 0], [0, 0, 1]],
    "hvt": [[0, -1, 1], [-1, 0, 1], [0, 0, 1]],
}
_ROT90 = {0: "e", 1: "r90", 2: "r180", 3: "r270"}


def _unit_step(element: str) -> StepMatrix:
    return lambda _t, _p, src, dst: _from_normalized(_UNIT[element], src, dst)


def _d4_step(_t: A.BasicTransform, params: dict[str, Any], src: Shape, dst: Shape) -> Matrix:
    return _from_normalized(_UNIT[str(params["group_element"])], src, dst)


def _rot90_step(_t: A.BasicTransform, params: dict[str, Any], src: Shape, dst: Shape) -> Matrix:
    return _from_normalized(_UNIT[_ROT90[int(params["factor"]) % 4]], src, dst)


def _resize_step(_t: A.BasicTransform, _p: dict[str, Any], src: Shape, dst: Shape) -> Matrix:
    return _from_normalized(_UNIT["e"], src, dst)


def _affine_step(t: A.BasicTransform, params: dict[str, Any], _src: Shape, _dst: Shape) -> Matrix:
    matrix = np.asarray(params["bbox_matrix"], dtype=np.float64)
    if getattr(t, "crop_border", False) and params.get("x_min", -1) >= 0:
        matrix = _translate(-params["x_min"], -params["y_min"]) @ matrix
    return matrix


def _crop_step(_t: A.BasicTransform, params: dict[str, Any], _src: Shape, dst: Shape) -> Matrix:
    x0, y0, x1, y1 = (float(v) for v in params["crop_coords"])
    scale = np.diag([dst[1] / (x1 - x0), dst[0] / (y1 - y0), 1.0])
    return scale @ _translate(-x0, -y0)


def _pad_step(_t: A.BasicTransform, params: dict[str, Any], _src: Shape, _dst: Shape) -> Matrix:
    return _translate(float(params["pad_left"]), float(params["pad_top"]))


GEOMETRY: dict[str, StepMatrix] = {
    "HorizontalFlip": _unit_step("h"),
    "VerticalFlip": _unit_step("v"),
    "Transpose": _unit_step("t"),
    "RandomRotate90": _rot90_step,
    "D4": _d4_step,
    "SquareSymmetry": _d4_step,
    "Affine": _affine_step,
    "ShiftScaleRotate": _affine_step,
    "SafeRotate": _affine_step,
    "Rotate": _affine_step,
    "Resize": _resize_step,
    "LongestMaxSize": _resize_step,
    "SmallestMaxSize": _resize_step,
    "RandomScale": _resize_step,
    "RandomCrop": _crop_step,
    "CenterCrop": _crop_step,
    "Crop": _crop_step,
    "RandomResizedCrop": _crop_step,
    "RandomSizedCrop": _crop_step,
    "RandomCropFromBorders": _crop_step,
    "BBoxSafeRandomCrop": _crop_step,
    "RandomSizedBBoxSafeCrop": _crop_step,
    "AtLeastOneBBoxRandomCrop": _crop_step,
    "Pad": _pad_step,
    "PadIfNeeded": _pad_step,
}
