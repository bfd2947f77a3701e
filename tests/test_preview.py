"""Image previews for asset metadata: thumbnails stay small and oriented, boxes land where the
objects are, and the markdown carries one decodable data-URI JPEG per thumbnail, side by side.
(That dagster-webserver really displays them is tests/test_browser.py's job.)"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelpipe.annotations.labelstudio import ls_to_coco
from pixelpipe.datagen import generate
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.preview import (
    THUMB_SIDE,
    Thumb,
    coco_boxes,
    data_uri,
    label_colour,
    preview_markdown,
    thumbnail_jpeg,
)

IMAGE = re.compile(r'!\[((?:\\.|[^\]\\])*)\]\((data:image/jpeg;base64,[A-Za-z0-9+/=]+) "([^"]*)"\)')


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """datagen's real mix: 640x480 .. 4000x3000, JPEG and PNG."""
    return generate(tmp_path_factory.mktemp("preview"), 5, seed=7)


def _outline_at(thumb: np.ndarray, y: int, x: int, colour: tuple[int, int, int]) -> bool:
    """The label colour is found within a pixel of (y, x): JPEG blurs thin lines a little."""
    window = thumb[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].reshape(-1, 3)
    return bool(np.abs(window - np.array(colour)).max(axis=1).min() < 50)


def _decode(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image.convert("RGB")


def test_thumbnails_fit_the_side_keep_the_aspect_and_weigh_a_few_kb(sample) -> None:
    for path in sample.image_paths:
        width, height = Image.open(path).size
        thumb = _decode(jpeg := thumbnail_jpeg(path))
        assert max(thumb.size) == THUMB_SIDE
        assert abs(thumb.width / thumb.height - width / height) < 0.03
        assert len(jpeg) < 6_000, (path.name, len(jpeg))


def test_boxes_are_drawn_around_the_objects_in_thumbnail_pixels(tmp_path: Path) -> None:
    grey = np.full((300, 400, 3), 128, np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    box = Box(label="star", x=100.0, y=60.0, w=200.0, h=150.0)
    thumb = np.asarray(_decode(thumbnail_jpeg(tmp_path / "grey.png", [box])), dtype=int)
    assert thumb.shape[:2] == (96, 128)  # 400x300 scaled by 0.32
    colour = label_colour("star")
    # the outline runs along x 32..96, y 19..67 in the thumbnail; inside and outside stay grey
    assert _outline_at(thumb, 40, 33, colour) and _outline_at(thumb, 20, 60, colour)
    assert _outline_at(thumb, 66, 60, colour) and _outline_at(thumb, 40, 95, colour)
    assert np.abs(thumb[40, 60] - 128).max() < 12
    assert np.abs(thumb[85, 110] - 128).max() < 12


def test_exif_orientation_is_applied_before_boxes_are_drawn(tmp_path: Path) -> None:
    """A phone photo stored landscape with orientation 6 is shown portrait, as Label Studio does."""
    stored = Image.fromarray(np.full((300, 400, 3), 128, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    box = Box(label="cross", x=0.0, y=0.0, w=150.0, h=100.0)  # top-left of the portrait view
    thumb = np.asarray(_decode(thumbnail_jpeg(tmp_path / "turned.jpg", [box])), dtype=int)
    assert thumb.shape[:2] == (128, 96)
    assert _outline_at(thumb, 1, 20, label_colour("cross"))
    assert np.abs(thumb[100, 80] - 128).max() < 12


def test_markdown_shows_each_row_side_by_side_as_data_uris(sample) -> None:
    coco = ls_to_coco(sample.export_path, sample.label_config_path).coco
    name = coco["images"][0]["file_name"]
    boxes = coco_boxes(coco, name)
    assert boxes and all(b["label"] in sample.classes for b in boxes)
    first, second = sample.image_paths[:2]
    md = preview_markdown(
        [
            ("incoming/demo/synth_00000.jpg", [Thumb(first, "small 224x224", boxes),
                                               Thumb(first, "large 640x640")]),
            ("incoming/demo/synth_00001.jpg", [Thumb(second, "small [fit]")]),
        ]
    )  # fmt: skip
    paragraphs = md.strip().split("\n\n")
    assert paragraphs[0] == r"**incoming/demo/synth\_00000.jpg**"
    found = IMAGE.findall(paragraphs[1])
    assert [alt for alt, _, _ in found] == ["small 224x224", "large 640x640"]
    assert paragraphs[1].count("\n") == 0  # one line: the two thumbnails sit side by side
    (third,) = IMAGE.findall(paragraphs[3])
    assert third[0] == third[2] == r"small \[fit\]"
    for _, uri, _ in [*found, third]:
        assert max(_decode(base64.b64decode(uri.split(",", 1)[1])).size) == THUMB_SIDE
    assert data_uri(b"\xff\xd8") == "data:image/jpeg;base64,/9g="
