"""Protects decoding: every common mode becomes upright 8-bit RGB, and bad files say why."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from pixelpipe.imaging.decode import MAX_PIXELS, ImageError, encode_jpeg, image_size, load_rgb

RED = (255, 0, 0)


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only claims a size: no real pixels, so a bomb costs a few bytes to build."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    path = _save(Image.fromarray(pixels), tmp_path / "a.png")
    out = load_rgb(path)
    assert out.dtype == np.uint8
    assert np.array_equal(out, pixels)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), RED),
        ("RGBA", (255, 0, 0, 255), RED),
        ("LA", (50, 255), (50, 50, 50)),
    ],
)
def test_modes_become_rgb(
    tmp_path: Path, mode: str, colour: object, expected: tuple[int, int, int]
) -> None:
    fmt = "tiff" if mode == "CMYK" else "png"
    path = _save(Image.new(mode, (7, 5), colour), tmp_path / f"img.{fmt}")  # type: ignore[arg-type]
    out = load_rgb(path)
    assert out.shape == (5, 7, 3)
    assert out.dtype == np.uint8
    assert tuple(out[2, 3]) == expected


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    out = load_rgb(path)
    assert out.shape == (16, 16, 3)
    assert np.abs(out[8, 8].astype(int) - RED).max() <= 3


def test_transparent_pixels_are_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :3, 3] = 255  # left half opaque red, right half fully transparent
    rgba[:, 3, 3] = 128  # one column half transparent
    out = load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "t.png"))
    assert tuple(out[0, 0]) == RED
    assert tuple(out[0, 5]) == (255, 255, 255)
    assert out[0, 3, 0] == 255 and 120 <= out[0, 3, 1] <= 135


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    image.putpixel((0, 0), 1)
    path = _save(image, tmp_path / "p.png", transparency=0)
    out = load_rgb(path)
    assert tuple(out[0, 0]) == (0, 255, 0)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_plain_palette(tmp_path: Path) -> None:
    image = Image.new("P", (3, 3), 0)
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert tuple(load_rgb(_save(image, tmp_path / "p.gif"))[1, 1]) == (10, 20, 30)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    assert cv2.imwrite(str(path), grey)
    out = load_rgb(path)
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    bgr = np.zeros((2, 2, 3), dtype=np.uint16)
    bgr[..., 2] = 65535  # red, as OpenCV stores channels BGR
    bgr[..., 1] = 257 * 40
    path = tmp_path / "c16.png"
    assert cv2.imwrite(str(path), bgr)
    assert tuple(load_rgb(path)[1, 1]) == (255, 40, 0)


def test_float_and_int32_images(tmp_path: Path) -> None:
    floats = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), "F")
    assert tuple(load_rgb(_save(floats, tmp_path / "f.tiff"))[0, 0]) == (128, 128, 128)
    ints = Image.fromarray(np.full((2, 2), 65535, dtype=np.int32), "I")
    assert tuple(load_rgb(_save(ints, tmp_path / "i.tiff"))[0, 0]) == (255, 255, 255)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_exif_orientation_6_rotates_the_pixels(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # white band on the left edge
    path = _save(Image.fromarray(pixels), tmp_path / "o.jpg", exif=_exif(6), quality=95)
    out = load_rgb(path)
    assert out.shape == (40, 20, 3)
    # Orientation 6 means "rotate 90 degrees clockwise to display": the left edge becomes the top.
    assert out[:8].mean() > 240 and out[-20:].mean() < 15
    assert image_size(path) == (20, 40)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path: Path, fmt: str, orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    path = _save(Image.fromarray(pixels), tmp_path / f"o.{fmt}", exif=_exif(orientation))
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    out = load_rgb(path)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).max() <= 2
    assert image_size(path) == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize(("width", "height"), [(20_000, 10_000), (20_000, 20_000)])
def test_decompression_bomb_is_refused_from_the_header(
    tmp_path: Path, width: int, height: int
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    with pytest.raises(ImageError, match="decompression bomb") as info:
        load_rgb(path)
    assert f"{width * height} pixels > limit {MAX_PIXELS}" in str(info.value)


def test_custom_pixel_limit(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (20, 10)), tmp_path / "small.png")
    with pytest.raises(ImageError, match="decompression bomb: 200 pixels > limit 100"):
        load_rgb(path, max_pixels=100)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG" if fmt == "jpg" else "PNG")
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="^truncated file"):
        load_rgb(path)


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("definitely not pixels\n")
    with pytest.raises(ImageError, match="^not an image"):
        load_rgb(path)
    with pytest.raises(ImageError, match="^not an image"):
        image_size(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")


def test_image_size_reads_the_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(4000, 3000))
    assert image_size(path) == (4000, 3000)


def test_encode_jpeg_is_deterministic_420(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    first, second = encode_jpeg(pixels, 85), encode_jpeg(pixels.copy(), 85)
    assert first == second
    with Image.open(io.BytesIO(first)) as im:
        assert im.size == (48, 32)
        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
    assert encode_jpeg(pixels[:, ::-1], 85) != first  # non-contiguous views work too
