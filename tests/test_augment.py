"""Protects augmentation: specs fail clearly, seeds reproduce pixels, and records move boxes.

The central promise is that boxes arriving after an image was augmented can be projected through
its TransformRecord and land where albumentations would have put them (within 0.5 px).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixelpipe.imaging.augment import (
    DEFAULT_SPEC,
    TransformRecord,
    augment,
    load_spec,
    project_boxes,
    seed_for,
    spec_digest,
)
from pixelpipe.imaging.boxes import Box

IMAGE = np.random.default_rng(7).integers(0, 256, (60, 80, 3), dtype=np.uint8)
HEIGHT, WIDTH = IMAGE.shape[:2]
TOLERANCE = 0.5


def _boxes(seed: int, count: int = 5) -> list[Box]:
    rng = np.random.default_rng(seed)
    return [
        Box(
            label=f"obj{i}",
            x=float(rng.uniform(0, WIDTH - 12)),
            y=float(rng.uniform(0, HEIGHT - 12)),
            w=float(rng.uniform(4, 30)),
            h=float(rng.uniform(4, 30)),
        )
        for i in range(count)
    ]


def _assert_same_boxes(direct: list[Box], projected: list[Box]) -> None:
    assert [b["label"] for b in direct] == [b["label"] for b in projected]
    for a, b in zip(direct, projected, strict=True):
        for key in ("x", "y", "w", "h"):
            assert abs(a[key] - b[key]) <= TOLERANCE, (a, b)  # type: ignore[literal-required]


# ---------------------------------------------------------------- specs


def test_default_spec_when_nothing_given() -> None:
    assert load_spec(None) == DEFAULT_SPEC
    assert {"HorizontalFlip", "Affine"} <= {item["name"] for item in DEFAULT_SPEC}


def test_inline_json_list_and_object_forms() -> None:
    as_list = load_spec('[{"name": "VerticalFlip", "p": 0.3}]')
    as_object = load_spec('{"transforms": [{"name": "VerticalFlip", "p": 0.3}]}')
    assert as_list == as_object == [{"name": "VerticalFlip", "p": 0.3}]


def test_spec_files(tmp_path: Path) -> None:
    yaml_path = tmp_path / "aug.yaml"
    yaml_path.write_text("transforms:\n  - name: HorizontalFlip\n    p: 1.0\n  - name: Blur\n")
    json_path = tmp_path / "aug.json"
    json_path.write_text(json.dumps([{"name": "HorizontalFlip", "p": 1.0}, {"name": "Blur"}]))
    assert load_spec(str(yaml_path)) == load_spec(str(json_path))
    with pytest.raises(ValueError, match="cannot read"):
        load_spec(str(tmp_path / "missing.yml"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('[{"name": "NoSuchTransform"}]', "'NoSuchTransform' is not an albumentations transform"),
        ('[{"name": "Affine", "scale": "big"}]', "'Affine'.*scale"),
        ('[{"name": "HorizontalFlip", "colour": 3}]', "'HorizontalFlip': unknown argument.*colour"),
        ('[{"name": "ElasticTransform"}]', "'ElasticTransform'.*cannot record"),
        ('[{"name": "Affine", "border_mode": 4}]', "'Affine'.*reflecting border"),
        ('[{"name": "Affine", "rotate_method": "ellipse"}]', "rotate_method"),
        ('[{"name": "ToFloat"}]', "'ToFloat'.*uint8"),
        ('[{"name": "Compose"}]', "'Compose' is not an albumentations transform"),
        ("[1, 2]", "item 0"),
        ("[{", "not valid JSON"),
        ('{"steps": []}', "transforms"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_spec(spec)


def test_digest_and_seeds_are_stable() -> None:
    digest = spec_digest(DEFAULT_SPEC)
    assert digest == spec_digest(json.loads(json.dumps(DEFAULT_SPEC)))
    assert len(digest) == 16
    assert digest != spec_digest(list(reversed(DEFAULT_SPEC)))
    seed = seed_for("s3://bucket/a.jpg", 0, digest)
    assert seed == seed_for("s3://bucket/a.jpg", 0, digest)
    assert 0 <= seed < 2**32
    assert seed != seed_for("s3://bucket/a.jpg", 1, digest)
    assert seed != seed_for("s3://bucket/b.jpg", 0, digest)


# ---------------------------------------------------------------- determinism


def test_same_seed_same_pixels_different_seed_different_pixels() -> None:
    spec = load_spec(None)
    first = augment(IMAGE, spec, 1234)
    again = augment(IMAGE.copy(), spec, 1234)
    assert np.array_equal(first.image, again.image)
    assert first.record == again.record
    others = [augment(IMAGE, spec, seed).image for seed in range(8)]
    assert any(not np.array_equal(first.image, other) for other in others)


def test_transforms_draw_independent_randomness() -> None:
    spec = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}]
    applied = {tuple(augment(IMAGE, spec, seed).record.applied) for seed in range(40)}
    assert ("HorizontalFlip",) in applied and ("VerticalFlip",) in applied


def test_record_is_json_serialisable() -> None:
    record = augment(IMAGE, load_spec(None), 5).record
    data = json.loads(json.dumps(record.model_dump()))
    assert TransformRecord.model_validate(data) == record
    assert (data["input_width"], data["input_height"]) == (WIDTH, HEIGHT)
    assert np.asarray(data["matrix"]).shape == (3, 3)


# ---------------------------------------------------------------- boxes


def test_horizontal_flip_moves_boxes_and_records_the_mirror() -> None:
    box = Box(label="cat", x=10.0, y=5.0, w=20.0, h=15.0)
    result = augment(IMAGE, [{"name": "HorizontalFlip", "p": 1.0}], 0, [box])
    assert np.array_equal(result.image, IMAGE[:, ::-1])
    (moved,) = result.boxes
    assert moved["label"] == "cat"
    assert moved["x"] == pytest.approx(WIDTH - 10.0 - 20.0)
    assert (moved["y"], moved["w"], moved["h"]) == pytest.approx((5.0, 20.0, 15.0))
    _assert_same_boxes(result.boxes, project_boxes([box], result.record))


def test_vertical_flip_direct_and_projected_agree() -> None:
    boxes = _boxes(1)
    result = augment(IMAGE, [{"name": "VerticalFlip", "p": 1.0}], 0, boxes)
    assert np.array_equal(result.image, IMAGE[::-1])
    _assert_same_boxes(result.boxes, project_boxes(boxes, result.record.model_dump()))


@pytest.mark.parametrize("rotate", [0, 25])
def test_affine_direct_and_projected_agree(rotate: int) -> None:
    spec = [
        {
            "name": "Affine",
            "p": 1.0,
            "scale": [0.8, 1.2],
            "translate_percent": [-0.1, 0.1],
            "rotate": [-rotate, rotate],
        }
    ]
    for seed in range(10):
        boxes = _boxes(seed)
        result = augment(IMAGE, spec, seed, boxes)
        _assert_same_boxes(result.boxes, project_boxes(boxes, result.record))


GEOMETRIC_SPECS: dict[str, list[dict[str, Any]]] = {
    "rot90": [{"name": "RandomRotate90", "p": 1.0}],
    "d4": [{"name": "D4", "p": 1.0}],
    "transpose": [{"name": "Transpose", "p": 1.0}],
    "affine-fit-output": [{"name": "Affine", "p": 1.0, "rotate": [-30, 30], "fit_output": True}],
    "rotate-crop-border": [{"name": "Rotate", "p": 1.0, "limit": 20, "crop_border": True}],
    "resized-crop": [{"name": "RandomResizedCrop", "p": 1.0, "size": [40, 50]}],
    "crop": [{"name": "RandomCrop", "p": 1.0, "height": 40, "width": 50}],
    "pad": [{"name": "PadIfNeeded", "p": 1.0, "min_height": 90, "min_width": 100}],
    "resize": [{"name": "LongestMaxSize", "p": 1.0, "max_size": 50}],
    "crop-then-rotate": [
        {"name": "RandomCrop", "p": 1.0, "height": 45, "width": 60},
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Affine", "p": 1.0, "rotate": [-20, 20], "scale": [0.9, 1.1]},
    ],
    "default": DEFAULT_SPEC,
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC_SPECS))
def test_every_supported_geometry_projects_like_albumentations(name: str) -> None:
    spec = GEOMETRIC_SPECS[name]
    for seed in range(6):
        boxes = _boxes(100 + seed)
        result = augment(IMAGE, spec, seed, boxes)
        record = result.record
        assert result.image.shape[:2] == (record.output_height, record.output_width)
        _assert_same_boxes(result.boxes, project_boxes(boxes, record))


def test_boxes_pushed_out_of_the_image_are_dropped() -> None:
    spec = [{"name": "Affine", "p": 1.0, "translate_px": {"x": [40, 40], "y": [0, 0]}}]
    boxes = [Box(label="gone", x=50.0, y=5.0, w=10.0, h=10.0)]
    boxes.append(Box(label="kept", x=2.0, y=5.0, w=10.0, h=10.0))
    result = augment(IMAGE, spec, 0, boxes)
    assert [b["label"] for b in result.boxes] == ["kept"]
    assert result.boxes[0]["x"] == pytest.approx(42.0)
    _assert_same_boxes(result.boxes, project_boxes(boxes, result.record))
