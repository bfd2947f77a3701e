"""The scenes datagen draws: noisy or gradient backgrounds and the shapes that are the classes."""

from __future__ import annotations

import cv2
import numpy as np

from pixelpipe.imaging.boxes import Box

# Fixed order: this is the category list (category ids 1..N follow it, see annotations/coco.py).
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
BG_GRID = 8
COLOURS_RGB: tuple[tuple[int, int, int], ...] = (
    (225, 35, 35),
    (35, 190, 60),
    (40, 80, 235),
    (245, 215, 30),
    (215, 45, 215),
    (250, 250, 250),
    (15, 15, 15),
)
SHAPE_FRACTION = (0.08, 0.30)
MAX_SHAPES = 4
_SHIFT = 4  # cv2 sub-pixel bits: vertices are drawn at 1/16 px precision


# ---------------------------------------------------------------- backgrounds


def _smooth_noise(
    rng: np.random.Generator, width: int, height: int, cells: int, amp: float
) -> np.ndarray:
    """Colour noise with about `cells` blobs along the long side, at width x height (float32)."""
    gh = max(2, cells * height // max(width, height))
    gw = max(2, cells * width // max(width, height))
    small = rng.uniform(-amp, amp, size=(gh, gw, 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Noise or gradient background, built on a grid 1/8 the size and upscaled once as uint8.

    Doing the arithmetic on the small grid keeps a 4000x3000 background cheap; the cubic
    upscale of the fine noise gives texture a few pixels across.
    """
    sw, sh = max(2, width // BG_GRID), max(2, height // BG_GRID)
    if rng.random() < 0.5:
        base = rng.uniform(70, 180, size=3).astype(np.float32)
        layer = base + _smooth_noise(rng, sw, sh, int(rng.integers(4, 12)), 45.0)
    else:
        layer = _gradient(rng, sw, sh)
    texture = rng.uniform(-18, 18, size=(sh, sw, 3)).astype(np.float32)
    small = np.clip(layer + texture, 0, 255).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    c0, c1 = rng.uniform(50, 200, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx / width * np.cos(angle) + yy / height * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 + (c1 - c0) * t[..., None]


# ---------------------------------------------------------------- shapes


def _unit_polygon(label: str, angle: float) -> np.ndarray:
    """Vertices of a shape of radius 1 around the origin, rotated by angle (radians)."""
    if label == "square":
        theta = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif label == "triangle":
        theta = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif label == "star":
        theta = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    elif label == "cross":
        a = 1 / 3
        pts = np.array(
            [
                (-a, -1),
                (a, -1),
                (a, -a),
                (1, -a),
                (1, a),
                (a, a),
                (a, 1),
                (-a, 1),
                (-a, a),
                (-1, a),
                (-1, -a),
                (-a, -a),
            ],
            dtype=np.float64,
        )
    else:
        raise ValueError(f"no polygon for {label!r}")
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T


def draw_shapes(rng: np.random.Generator, image: np.ndarray) -> list[Box]:
    height, width = image.shape[:2]
    short = min(width, height)
    boxes: list[Box] = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        radius = rng.uniform(*SHAPE_FRACTION) * short / 2
        colour = COLOURS_RGB[int(rng.integers(len(COLOURS_RGB)))]
        pts = (
            None if label == "circle" else _unit_polygon(label, rng.uniform(0, 2 * np.pi)) * radius
        )
        lo, hi = (
            (np.array([-radius, -radius]), np.array([radius, radius]))
            if pts is None
            else (
                pts.min(axis=0),
                pts.max(axis=0),
            )
        )
        centre = _place(rng, lo, hi, width, height, boxes)
        if centre is None:
            continue
        _fill(image, label, centre, radius, pts, colour[::-1])
        x0, y0 = centre + lo
        w, h = hi - lo
        boxes.append(
            Box(
                label=label,
                x=round(float(x0), 3),
                y=round(float(y0), 3),
                w=round(float(w), 3),
                h=round(float(h), 3),
            )
        )
    return boxes


def _place(
    rng: np.random.Generator,
    lo: np.ndarray,
    hi: np.ndarray,
    width: int,
    height: int,
    boxes: list[Box],
) -> np.ndarray | None:
    """A centre that keeps the shape inside the image and clear of the boxes drawn so far."""
    margin = 2.0
    for _ in range(30):
        cx = rng.uniform(margin - lo[0], width - margin - hi[0])
        cy = rng.uniform(margin - lo[1], height - margin - hi[1])
        x0, y0, x1, y1 = cx + lo[0], cy + lo[1], cx + hi[0], cy + hi[1]
        if all(
            x1 < b["x"] or b["x"] + b["w"] < x0 or y1 < b["y"] or b["y"] + b["h"] < y0
            for b in boxes
        ):
            return np.array([cx, cy])
    return None


def _fill(
    image: np.ndarray,
    label: str,
    centre: np.ndarray,
    radius: float,
    pts: np.ndarray | None,
    colour_bgr: tuple[int, int, int],
) -> None:
    scale = 1 << _SHIFT
    if pts is None:
        c = (int(round(centre[0] * scale)), int(round(centre[1] * scale)))
        cv2.circle(image, c, int(round(radius * scale)), colour_bgr, -1, cv2.LINE_AA, _SHIFT)
        return
    poly = np.round((pts + centre) * scale).astype(np.int32)
    cv2.fillPoly(image, [poly], colour_bgr, cv2.LINE_AA, _SHIFT)
