"""CPU resize backend: decode once at reduced scale, then cascade every variant from it."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image

from pixelpipe.imaging.decode import MAX_PIXELS, ImageError, encode_jpeg, load_rgb
from pixelpipe.imaging.geometry import PAD_VALUE, Geometry, largest_first, needed_size, plan
from pixelpipe.imaging.variants import Variant

_JPEG_SOI = b"\xff\xd8"
_EXIF_HEAD = b"Exif\x00\x00"
# APP segments (where EXIF lives) sit before the first scan; 64 KiB covers them in practice.
_HEADER_BYTES = 65536
_TURBO_SUPPORTED = frozenset({"Gray", "RGB", "YCbCr"})
MAX_LINEAR_RATIO = 2.0


@dataclass(frozen=True)
class VariantOutput:
    """One encoded variant of one source image."""

    variant: Variant
    geometry: Geometry
    jpeg: bytes
    seconds: float  # resize + crop/pad + encode


@dataclass
class VariantOutputs:
    """Every variant of one source image, in the order the variants were asked for."""

    path: str
    outputs: list[VariantOutput] = field(default_factory=list)
    decode_seconds: float = 0.0


@dataclass(frozen=True)
class Decoded:
    """Pixels ready for resizing plus the size of the upright source they stand for."""

    rgb: npt.NDArray[np.uint8]
    src_width: int
    src_height: int


def process_file(path: str, variants: Sequence[Variant], quality: int = 90) -> VariantOutputs:
    """Decode path once and encode every variant; ImageError if the file is not a usable image."""
    start = time.perf_counter()
    decoded = decode_for_variants(path, variants)
    result = VariantOutputs(path=str(path), decode_seconds=time.perf_counter() - start)
    result.outputs = render_variants(decoded, variants, quality)
    return result


def decode_for_variants(path: str | Path, variants: Sequence[Variant]) -> Decoded:
    """Decode at the smallest JPEG DCT scale that still covers every variant; else full decode."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return _full_decode(path)  # load_rgb turns a missing or unreadable file into ImageError
    header = plain_jpeg_size(data)
    if header is None:
        return _full_decode(path)
    src_w, src_h = header
    need_w, need_h = needed_size(plan(src_w, src_h, v) for v in variants)
    try:
        rgb = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            fastdct=True,
            fastupsample=True,
            min_width=min(need_w, src_w),
            min_height=min(need_h, src_h),
            strict=True,
        )
    except ValueError:
        return _full_decode(path)  # truncated or corrupt: let load_rgb name the reason
    return Decoded(rgb, src_w, src_h)


def _full_decode(path: str | Path) -> Decoded:
    rgb = load_rgb(path)
    return Decoded(rgb, rgb.shape[1], rgb.shape[0])


def plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) when libjpeg-turbo can take this file as is, else None.

    None for non-JPEGs, CMYK/YCCK, oversized images and EXIF-rotated files, which all go
    through load_rgb so that reasons, colour handling and orientation match decode.py.
    """
    if not data.startswith(_JPEG_SOI):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in _TURBO_SUPPORTED or width * height > MAX_PIXELS:
        return None
    if _EXIF_HEAD in data[:_HEADER_BYTES] and exif_orientation(data) != 1:
        return None
    return int(width), int(height)


def exif_orientation(data: bytes) -> int:
    """EXIF orientation tag of an encoded image (1 when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not stop the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def render_variants(
    decoded: Decoded, variants: Sequence[Variant], quality: int
) -> list[VariantOutput]:
    """Resize largest variant first, each from the smallest earlier intermediate that covers it."""
    geoms = [plan(decoded.src_width, decoded.src_height, v) for v in variants]
    intermediates = [decoded.rgb]
    done: dict[int, VariantOutput] = {}
    for index, geom in largest_first(enumerate(geoms)):
        start = time.perf_counter()
        source = _smallest_cover(intermediates, geom.resized_width, geom.resized_height)
        resized = resize(source, geom.resized_width, geom.resized_height)
        intermediates.append(resized)
        jpeg = encode_jpeg(finish(resized, geom), quality)
        done[index] = VariantOutput(variants[index], geom, jpeg, time.perf_counter() - start)
    return [done[i] for i in range(len(geoms))]


def _smallest_cover(
    candidates: list[npt.NDArray[np.uint8]], width: int, height: int
) -> npt.NDArray[np.uint8]:
    covering = [a for a in candidates if a.shape[1] >= width and a.shape[0] >= height]
    if not covering:
        return candidates[0]  # an upscale: start from the decoded pixels
    return min(covering, key=lambda a: a.shape[0] * a.shape[1])


def resize(rgb: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    """Antialiased resize that is cheap inside a cascade.

    Shrinking by at most MAX_LINEAR_RATIO per axis, bilinear already touches every source pixel
    (mipmap-style), measured closer to a full-resolution Lanczos than repeated area averaging
    and ~5x faster; larger shrink factors use area averaging, growth uses bilinear.
    """
    src_h, src_w = rgb.shape[:2]
    if (src_w, src_h) == (width, height):
        return rgb
    far = src_w > MAX_LINEAR_RATIO * width or src_h > MAX_LINEAR_RATIO * height
    interpolation = cv2.INTER_AREA if far else cv2.INTER_LINEAR
    # cv2 types its result as any-depth; a uint8 input comes back uint8, so asarray is a no-op.
    return np.asarray(cv2.resize(rgb, (width, height), interpolation=interpolation), np.uint8)


def finish(resized: npt.NDArray[np.uint8], geom: Geometry) -> npt.NDArray[np.uint8]:
    """Crop (fit) or pad (letterbox) a resized image to the output size."""
    if geom.mode == "fit":
        y, x = geom.crop_y, geom.crop_x
        return resized[y : y + geom.height, x : x + geom.width]
    if geom.mode == "letterbox":
        canvas = np.full((geom.height, geom.width, 3), PAD_VALUE, dtype=np.uint8)
        y, x = geom.pad_y, geom.pad_x
        canvas[y : y + geom.resized_height, x : x + geom.resized_width] = resized
        return canvas
    return resized


def process_files(
    paths: Sequence[str], variants: Sequence[Variant], quality: int = 90
) -> list[VariantOutputs | ImageError]:
    """process_file over many paths in this process; a bad file yields its ImageError."""
    results: list[VariantOutputs | ImageError] = []
    for path in paths:
        try:
            results.append(process_file(path, variants, quality))
        except ImageError as exc:
            results.append(exc)
    return results
