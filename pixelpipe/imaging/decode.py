"""Decode any supported image file into upright 8-bit RGB, refusing bombs and broken files."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 120_000_000
ORIENTATION_TAG = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_WHITE = (255, 255, 255)
_BROKEN = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error, IndexError)


class ImageError(ValueError):
    """A bad input image; str(exc) is a short human-readable reason."""


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> npt.NDArray[np.uint8]:
    """Read an image as an upright HxWx3 uint8 RGB array, or raise ImageError saying why not."""
    with _open(path, max_pixels) as im:
        orientation = _orientation(im)
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            rgb = _decode_jpeg(path)
        else:
            _load(im)
            rgb = _to_rgb(im)
    return _orient(rgb, orientation)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header without decoding pixels."""
    with _open(path, max_pixels=None) as im:
        width, height = im.size
        if _orientation(im) in _SWAPS_AXES:
            return height, width
        return width, height


def encode_jpeg(rgb: npt.NDArray[np.uint8], quality: int = 90) -> bytes:
    """Encode HxWx3 uint8 RGB as a 4:2:0 JPEG; the same input always gives the same bytes."""
    array = np.ascontiguousarray(rgb, dtype=np.uint8)
    try:
        encoded: bytes = simplejpeg.encode_jpeg(
            array, quality=quality, colorspace="RGB", colorsubsampling="420"
        )
    except (ValueError, TypeError):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=quality, subsampling=2)
        return buf.getvalue()
    return encoded


def _open(path: str | Path, max_pixels: int | None) -> Image.Image:
    """Open lazily (header only) and refuse images whose pixel count exceeds max_pixels."""
    try:
        # Our own limit replaces Pillow's soft warning; its hard error still maps to ImageError.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(_bomb_reason(str(exc), max_pixels)) from exc
    except FileNotFoundError as exc:
        raise ImageError(f"file not found: {path}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image: {Path(path).name}") from exc
    except _BROKEN as exc:
        raise ImageError(_broken_reason(exc)) from exc
    pixels = im.size[0] * im.size[1]
    if max_pixels is not None and pixels > max_pixels:
        im.close()
        raise ImageError(f"decompression bomb: {pixels} pixels > limit {max_pixels}")
    return im


def _bomb_reason(message: str, max_pixels: int | None) -> str:
    found = re.search(r"(\d+) pixels", message)
    pixels = found.group(1) if found else "too many"
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    return f"decompression bomb: {pixels} pixels > limit {limit}"


def _load(im: Image.Image) -> None:
    """Decode all pixels now so that truncation surfaces as ImageError, not grey padding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(_bomb_reason(str(exc), None)) from exc
    except _BROKEN as exc:
        raise ImageError(_broken_reason(exc)) from exc


def _broken_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, EOFError) or any(
        word in lowered for word in ("truncated", "premature end", "broken data stream")
    ):
        return f"truncated file ({text})"
    return f"corrupt image ({text})"


def _decode_jpeg(path: str | Path) -> npt.NDArray[np.uint8]:
    """Fast path: libjpeg-turbo straight into a numpy buffer; strict so truncation raises."""
    data = Path(path).read_bytes()
    try:
        rgb: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise ImageError(_broken_reason(exc)) from exc
    return rgb


def _orientation(im: Image.Image) -> int:
    # PNG keeps EXIF anywhere; getexif() would then decode the whole image, so trust the header.
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except _BROKEN:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(rgb: npt.NDArray[np.uint8], orientation: int) -> npt.NDArray[np.uint8]:
    """Apply an EXIF orientation (same result as ImageOps.exif_transpose) with numpy views."""
    if orientation == 1:
        return rgb
    views = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: a.transpose(1, 0, 2)[::-1],
    }
    return np.ascontiguousarray(views[orientation](rgb))


def _to_rgb(im: Image.Image) -> npt.NDArray[np.uint8]:
    """Convert a loaded Pillow image of any common mode to HxWx3 uint8 RGB."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _high_depth_to_uint8(np.asarray(im), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        return _on_white(im)
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(im.convert("RGB"))
    try:
        return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageError(f"unsupported image mode {mode}") from exc


def _on_white(im: Image.Image) -> npt.NDArray[np.uint8]:
    """Composite any image with alpha onto white; transparent pixels become white."""
    rgba = im.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, _WHITE)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return np.asarray(canvas)


def _high_depth_to_uint8(values: npt.NDArray[Any], mode: str) -> npt.NDArray[np.uint8]:
    """Scale 16-bit (and 32-bit int/float) grey to 0..255 by range, rounding instead of clipping."""
    if mode == "F":
        data = values.astype(np.float32)
        # Floats in 0..1 are normalised intensities; anything larger is taken as 0..255.
        scale = 255.0 if data.size and float(np.nanmax(data)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(data) * scale + 0.5, 0, 255).astype(np.uint8)
    wide = np.clip(values.astype(np.int64), 0, 65535) if mode == "I" else values.astype(np.uint32)
    return ((wide + 128) // 257).astype(np.uint8)
