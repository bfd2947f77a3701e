"""Tiny JPEG thumbnails of output images, boxes drawn, as markdown the Dagster UI displays.

What dagster-webserver 1.13 shows (read from its UI code, proven by tests/test_browser.py):
`MetadataValue.md` goes through react-markdown 8 and rehype-sanitize with `data` added to the
allowed `src` protocols, and no image URL transform, so `![alt](data:image/jpeg;base64,...)`
renders; so do http(s) links the browser can fetch (the UI's CSP has no img-src rule), while
`s3://` cannot. On the asset page a markdown value under 1,000 characters renders inline;
longer ones (any real thumbnail as a data URI) behind a "[Show Markdown]" button that opens
them in a dialog. Data URIs are used here: they need no credentials, never expire and go
wherever the event log goes; a few KB each keeps that log light.
"""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from pixelpipe.imaging.boxes import Box

THUMB_SIDE = 128  # longest side of a thumbnail, pixels
THUMB_QUALITY = 70  # JPEG quality: 2-4 KB for a 128 px thumbnail of a datagen image
_ORIENTATION = 0x0112
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


@dataclass(frozen=True)
class Thumb:
    """One image to show: a local file, its caption and (optionally) boxes in its own pixels."""

    path: Path
    caption: str
    boxes: Sequence[Box] = field(default_factory=tuple)


def label_colour(label: str) -> tuple[int, int, int]:
    """A stable RGB colour per label (the same label is the same colour in every preview)."""
    return _PALETTE[zlib.crc32(label.encode()) % len(_PALETTE)]


def thumbnail_jpeg(
    path: Path | str,
    boxes: Sequence[Box] = (),
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> bytes:
    """JPEG bytes of the image shrunk to fit max_side, EXIF orientation applied, boxes drawn.

    Boxes are in the pixels of the image as displayed (after EXIF orientation), as everywhere
    in pixelpipe; each is outlined in its label's colour.
    """
    with Image.open(path) as src:
        turned = src.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
        full_w, full_h = src.size[::-1] if turned else src.size
        src.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2..1/8 scale directly
        image = ImageOps.exif_transpose(src).convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if boxes:
        _draw(image, boxes, image.width / full_w, image.height / full_h)
    out = io.BytesIO()
    # 4:4:4 chroma: 4:2:0 washes thin coloured outlines out; it costs ~1 KB per thumbnail
    image.save(out, "JPEG", quality=quality, optimize=True, subsampling=0)
    return out.getvalue()


def _draw(image: Image.Image, boxes: Sequence[Box], sx: float, sy: float) -> None:
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 64))  # 1 px lines vanish in 4:2:0 chroma
    for box in boxes:
        x0, y0 = box["x"] * sx, box["y"] * sy
        x1, y1 = (box["x"] + box["w"]) * sx, (box["y"] + box["h"]) * sy
        pen.rectangle(
            [round(x0), round(y0), max(round(x0), round(x1) - 1), max(round(y0), round(y1) - 1)],
            outline=label_colour(box["label"]),
            width=width,
        )


def data_uri(jpeg: bytes) -> str:
    """A `data:image/jpeg;base64,...` URI of JPEG bytes."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _text(value: str) -> str:
    """Text safe inside markdown alt text, titles and bold runs."""
    out = value.replace("\\", "/").replace('"', "'").replace("\n", " ")
    for char in "[]*_`<>":
        out = out.replace(char, "\\" + char)
    return out


def preview_markdown(
    rows: Sequence[tuple[str, Sequence[Thumb]]],
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> str:
    """Markdown with one paragraph per row: its title in bold, then its thumbnails side by side.

    A row is (title, thumbs), e.g. one stage-2 source with a Thumb per variant, or one raw image
    with its stage-1 copies. Each thumbnail is `![caption](data:image/jpeg;base64,... "caption")`.
    """
    parts = []
    for title, thumbs in rows:
        images = " ".join(
            f"![{_text(t.caption)}]({data_uri(thumbnail_jpeg(t.path, t.boxes, max_side, quality))}"
            f' "{_text(t.caption)}")'
            for t in thumbs
        )
        parts.append(f"**{_text(title)}**\n\n{images}")
    return "\n\n".join(parts) + "\n"


def coco_boxes(coco: Mapping[str, Any], file_name: str) -> list[Box]:
    """The boxes a COCO document holds for the image named file_name, labelled by category."""
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    ids = {im["id"] for im in coco.get("images", []) if im.get("file_name") == file_name}
    return [
        Box(label=names.get(a["category_id"], "?"), x=a["bbox"][0], y=a["bbox"][1],
            w=a["bbox"][2], h=a["bbox"][3])
        for a in coco.get("annotations", [])
        if a["image_id"] in ids
    ]  # fmt: skip
