"""Protects variant geometry: sizes and offsets per mode, boxes that follow, manifest round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.geometry import (
    Geometry,
    inverse_matrix,
    matrix,
    needed_size,
    plan,
    project_boxes,
)
from pixelpipe.imaging.variants import Variant

FIT = Variant("sq", 640, 640, "fit")
LETTERBOX = Variant("lb", 640, 640, "letterbox")
STRETCH = Variant("st", 320, 240, "stretch")


def test_fit_scales_the_short_side_to_cover_and_centre_crops_the_long_one() -> None:
    g = plan(1280, 720, FIT)
    assert (g.resized_width, g.resized_height) == (1138, 640)
    assert (g.crop_x, g.crop_y, g.pad_x, g.pad_y) == (249, 0, 0, 0)
    assert (g.width, g.height) == (640, 640)
    assert g.scale_x == pytest.approx(1138 / 1280)
    assert g.scale_y == pytest.approx(640 / 720)


def test_fit_on_a_portrait_source_crops_top_and_bottom() -> None:
    g = plan(720, 1280, Variant("s", 224, 224, "fit"))
    assert (g.resized_width, g.resized_height) == (224, 398)
    assert (g.crop_x, g.crop_y) == (0, 87)


def test_fit_with_a_wide_target_on_a_square_source() -> None:
    g = plan(1000, 1000, Variant("w", 400, 100, "fit"))
    assert (g.resized_width, g.resized_height) == (400, 400)
    assert (g.crop_x, g.crop_y) == (0, 150)


def test_letterbox_fits_the_long_side_and_centres_with_padding() -> None:
    g = plan(1280, 720, LETTERBOX)
    assert (g.resized_width, g.resized_height) == (640, 360)
    assert (g.pad_x, g.pad_y, g.crop_x, g.crop_y) == (0, 140, 0, 0)
    assert (g.width, g.height) == (640, 640)


def test_stretch_scales_each_axis_on_its_own() -> None:
    g = plan(1000, 1000, STRETCH)
    assert (g.resized_width, g.resized_height, g.width, g.height) == (320, 240, 320, 240)
    assert (g.scale_x, g.scale_y) == (0.32, 0.24)
    assert (g.crop_x, g.crop_y, g.pad_x, g.pad_y) == (0, 0, 0, 0)


def test_small_sources_are_upscaled_to_the_target() -> None:
    g = plan(300, 200, FIT)
    assert (g.resized_width, g.resized_height) == (960, 640)


def test_non_positive_source_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan(0, 10, FIT)


sides = st.integers(min_value=1, max_value=5000)
targets = st.integers(min_value=1, max_value=1024)


@given(sides, sides, targets, targets)
def test_fit_always_covers_the_output_without_a_gap(sw: int, sh: int, tw: int, th: int) -> None:
    g = plan(sw, sh, Variant("v", tw, th, "fit"))
    assert g.resized_width >= tw and g.resized_height >= th
    assert 0 <= g.crop_x <= g.resized_width - tw
    assert 0 <= g.crop_y <= g.resized_height - th
    assert g.resized_width == tw or g.resized_height == th


@given(sides, sides, targets, targets)
def test_letterbox_always_fits_and_touches_two_edges(sw: int, sh: int, tw: int, th: int) -> None:
    g = plan(sw, sh, Variant("v", tw, th, "letterbox"))
    assert 1 <= g.resized_width <= tw and 1 <= g.resized_height <= th
    assert g.resized_width == tw or g.resized_height == th
    assert g.pad_x >= 0 and g.pad_x + g.resized_width <= tw
    assert g.pad_y >= 0 and g.pad_y + g.resized_height <= th


def test_matrix_maps_source_corners_onto_the_resized_image_in_output_coordinates() -> None:
    g = plan(1280, 720, FIT)
    m = np.asarray(matrix(g))
    assert m @ [0, 0, 1] == pytest.approx([-249, 0, 1])
    assert m @ [1280, 720, 1] == pytest.approx([1138 - 249, 640, 1])
    assert np.asarray(inverse_matrix(g)) @ m == pytest.approx(np.eye(3))


def test_a_box_through_the_fit_crop_is_scaled_shifted_and_clipped() -> None:
    g = plan(1280, 720, FIT)  # scale 0.889, crop_x 249
    inside = Box(label="cat", x=640, y=360, w=90, h=90)
    straddling = Box(label="dog", x=200, y=0, w=200, h=100)
    cropped_away = Box(label="bird", x=0, y=0, w=100, h=100)
    boxes = project_boxes([inside, straddling, cropped_away], g)
    assert [b["label"] for b in boxes] == ["cat", "dog"]
    cat, dog = boxes
    assert cat["x"] == pytest.approx(640 * 1138 / 1280 - 249)
    assert cat["y"] == pytest.approx(320)
    assert cat["w"] == pytest.approx(90 * 1138 / 1280)
    assert dog["x"] == 0.0  # clipped at the crop's left edge
    assert dog["w"] == pytest.approx(400 * 1138 / 1280 - 249)


def test_letterbox_padding_offset_is_carried_by_boxes() -> None:
    g = plan(1280, 720, LETTERBOX)  # scale 0.5, pad_y 140
    (box,) = project_boxes([Box(label="car", x=100, y=0, w=200, h=720)], g)
    assert (box["x"], box["y"], box["w"], box["h"]) == pytest.approx((50, 140, 100, 360))


def test_stretch_moves_boxes_with_independent_scales() -> None:
    g = plan(1000, 1000, STRETCH)
    (box,) = project_boxes([Box(label="x", x=500, y=500, w=100, h=100)], g)
    assert (box["x"], box["y"], box["w"], box["h"]) == pytest.approx((160, 120, 32, 24))


def test_boxes_shrunk_below_one_pixel_are_dropped() -> None:
    g = plan(4000, 4000, Variant("t", 100, 100, "fit"))
    assert project_boxes([Box(label="speck", x=10, y=10, w=20, h=20)], g) == []


def test_geometry_survives_a_json_round_trip() -> None:
    for variant in (FIT, LETTERBOX, STRETCH):
        g = plan(1333, 777, variant)
        data = json.loads(json.dumps(g.to_dict()))
        assert Geometry.from_dict(data) == g


def test_from_dict_refuses_an_unknown_mode() -> None:
    data = plan(100, 100, FIT).to_dict() | {"mode": "squash"}
    with pytest.raises(ValueError, match="squash"):
        Geometry.from_dict(data)


def test_needed_size_is_the_largest_resize_over_variants() -> None:
    geoms = [plan(4000, 3000, Variant(str(s), s, s, "fit")) for s in (224, 640)]
    assert needed_size(geoms) == (853, 640)
