"""Plan how a source image becomes a variant (scale, crop, pad) and move boxes along with it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pixelpipe.imaging.boxes import Box, affine_boxes
from pixelpipe.imaging.variants import MODES, Mode, Variant

# Letterbox bars are black; both backends fill with this value on every channel.
PAD_VALUE = 0


@dataclass(frozen=True)
class Geometry:
    """How one source image maps onto one output variant; all sizes in whole pixels.

    The source is resized to resized_width x resized_height (scale_x, scale_y are the exact
    per-axis factors that this implies), then, for fit, cut at (crop_x, crop_y) inside the
    resized image, or, for letterbox, placed at (pad_x, pad_y) inside the width x height output.
    """

    mode: Mode
    src_width: int
    src_height: int
    scale_x: float
    scale_y: float
    resized_width: int
    resized_height: int
    crop_x: int
    crop_y: int
    pad_x: int
    pad_y: int
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict for manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """Inverse of to_dict; ValueError on an unknown mode."""
        if data["mode"] not in MODES:
            raise ValueError(f"unknown geometry mode {data['mode']!r}")
        ints = {k: int(data[k]) for k in _INT_FIELDS}
        return cls(
            mode=data["mode"],
            scale_x=float(data["scale_x"]),
            scale_y=float(data["scale_y"]),
            **ints,
        )


_INT_FIELDS = (
    "src_width",
    "src_height",
    "resized_width",
    "resized_height",
    "crop_x",
    "crop_y",
    "pad_x",
    "pad_y",
    "width",
    "height",
)


def _fit_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """Smallest resize that covers dst on both axes (the short side decides)."""
    if src_w * dst_h >= src_h * dst_w:  # source is relatively wider: height decides
        return max(dst_w, round(src_w * dst_h / src_h)), dst_h
    return dst_w, max(dst_h, round(src_h * dst_w / src_w))


def _letterbox_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """Largest resize that fits inside dst (the long side decides, and fills it exactly)."""
    if src_w * dst_h >= src_h * dst_w:  # source is relatively wider: width decides
        return dst_w, min(dst_h, max(1, round(src_h * dst_w / src_w)))
    return min(dst_w, max(1, round(src_w * dst_h / src_h))), dst_h


def plan(src_w: int, src_h: int, variant: Variant) -> Geometry:
    """Work out the resize, crop and padding that turn a src_w x src_h image into variant."""
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"source size must be positive, got {src_w}x{src_h}")
    dst_w, dst_h = variant.width, variant.height
    crop_x = crop_y = pad_x = pad_y = 0
    if variant.mode == "fit":
        rw, rh = _fit_size(src_w, src_h, dst_w, dst_h)
        crop_x, crop_y = (rw - dst_w) // 2, (rh - dst_h) // 2
    elif variant.mode == "letterbox":
        rw, rh = _letterbox_size(src_w, src_h, dst_w, dst_h)
        pad_x, pad_y = (dst_w - rw) // 2, (dst_h - rh) // 2
    elif variant.mode == "stretch":
        rw, rh = dst_w, dst_h
    else:
        raise ValueError(f"unknown mode {variant.mode!r}")
    return Geometry(
        mode=variant.mode,
        src_width=src_w,
        src_height=src_h,
        scale_x=rw / src_w,
        scale_y=rh / src_h,
        resized_width=rw,
        resized_height=rh,
        crop_x=crop_x,
        crop_y=crop_y,
        pad_x=pad_x,
        pad_y=pad_y,
        width=dst_w,
        height=dst_h,
    )


def matrix(geom: Geometry) -> list[list[float]]:
    """3x3 affine matrix from source pixel coordinates to output pixel coordinates."""
    return [
        [geom.scale_x, 0.0, float(geom.pad_x - geom.crop_x)],
        [0.0, geom.scale_y, float(geom.pad_y - geom.crop_y)],
        [0.0, 0.0, 1.0],
    ]


def inverse_matrix(geom: Geometry) -> list[list[float]]:
    """3x3 affine matrix from output pixel coordinates back to source pixel coordinates."""
    tx, ty = float(geom.pad_x - geom.crop_x), float(geom.pad_y - geom.crop_y)
    return [
        [1.0 / geom.scale_x, 0.0, -tx / geom.scale_x],
        [0.0, 1.0 / geom.scale_y, -ty / geom.scale_y],
        [0.0, 0.0, 1.0],
    ]


def project_boxes(boxes: Iterable[Box], geom: Geometry) -> list[Box]:
    """Boxes in source pixels -> boxes in output pixels, clipped; those under 1 px^2 are dropped."""
    return affine_boxes(boxes, matrix(geom), geom.width, geom.height)


def needed_size(geoms: Iterable[Geometry]) -> tuple[int, int]:
    """The smallest intermediate (w, h) from which every geometry's resize is a downscale."""
    w = h = 0
    for g in geoms:
        w, h = max(w, g.resized_width), max(h, g.resized_height)
    return w, h


def largest_first(geoms: Iterable[tuple[int, Geometry]]) -> list[tuple[int, Geometry]]:
    """Order (index, geometry) pairs by resized area, largest first, for cascaded resizing."""
    return sorted(geoms, key=lambda ig: -ig[1].resized_width * ig[1].resized_height)
