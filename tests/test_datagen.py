"""Protects the synthetic sample set: learnable images, an export Label Studio's SDK converts, and
byte-for-byte determinism by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter import Converter
from PIL import Image

from pixelpipe.datagen import CLASSES, COLOURS_RGB, SIZES, generate

COUNT = 6


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("datagen")
    return generate(out, COUNT, seed=11)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_sdk_converts_the_export_with_one_box_per_drawn_shape(sample, tmp_path: Path) -> None:
    converter = Converter(
        config=str(sample.label_config_path), project_dir=str(tmp_path), download_resources=False
    )
    converter.convert(str(sample.export_path), str(tmp_path / "coco"), "COCO", is_dir=False)
    result = json.loads((tmp_path / "coco" / "result.json").read_text())

    assert len(result["annotations"]) == sample.boxes
    assert sample.boxes == sum(sample.per_class.values()) >= COUNT
    assert len(result["images"]) == COUNT
    assert sorted(c["name"] for c in result["categories"]) == sorted(CLASSES)


def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    generate(tmp_path / "a", 3, seed=5)
    generate(tmp_path / "b", 3, seed=5)
    generate(tmp_path / "c", 3, seed=6)

    first = _tree_bytes(tmp_path / "a")
    assert first == _tree_bytes(tmp_path / "b")
    assert (
        first["annotations/export.json"] != _tree_bytes(tmp_path / "c")["annotations/export.json"]
    )


def test_spawned_workers_write_the_same_bytes_as_one_process(tmp_path: Path) -> None:
    generate(tmp_path / "one", 3, seed=9, workers=1)
    generate(tmp_path / "two", 3, seed=9, workers=2)

    assert _tree_bytes(tmp_path / "one") == _tree_bytes(tmp_path / "two")


def test_sizes_round_robin_and_every_fifth_image_is_png(sample) -> None:
    for index, path in enumerate(sample.image_paths):
        with Image.open(path) as im:
            assert im.size == SIZES[index % len(SIZES)]
            assert im.format == ("PNG" if index % 5 == 4 else "JPEG")
        assert path.parent == sample.out_dir / "images"
    assert sample.per_format == {"jpg": 5, "png": 1}


def test_each_box_frames_a_drawn_shape_big_enough_to_classify(sample) -> None:
    tasks = json.loads(sample.export_path.read_text())
    palette = np.array(COLOURS_RGB, dtype=np.int32)
    for task, path in zip(tasks, sample.image_paths, strict=True):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
        height, width = pixels.shape[:2]
        for result in task["annotations"][0]["result"]:
            v = result["value"]
            x, y = v["x"] * width / 100, v["y"] * height / 100
            w, h = v["width"] * width / 100, v["height"] * height / 100
            assert min(x, y) >= 0 and x + w <= width and y + h <= height
            assert max(w, h) >= 0.08 * min(width, height) * 0.9
            # Every shape covers its own centre, so the centre pixel has a palette colour.
            centre = pixels[int(y + h / 2), int(x + w / 2)]
            assert np.abs(palette - centre).max(axis=1).min() <= 40


def test_export_is_shaped_like_a_label_studio_export(sample) -> None:
    tasks = json.loads(sample.export_path.read_text())
    task = tasks[1]
    result = task["annotations"][0]["result"][0]

    assert [t["id"] for t in tasks] == list(range(1, COUNT + 1))
    assert task["data"]["image"] == "/data/local-files/?d=images/synth_00001.jpg"
    assert {"created_at", "updated_at", "inner_id", "project", "predictions"} <= task.keys()
    assert result["type"] == "rectanglelabels"
    assert (result["from_name"], result["to_name"], result["origin"]) == (
        "label",
        "image",
        "manual",
    )
    assert (result["original_width"], result["original_height"]) == SIZES[1]
    assert result["image_rotation"] == 0 and result["value"]["rotation"] == 0
    assert result["value"]["rectanglelabels"][0] in CLASSES
    assert 0 < result["value"]["width"] < 100


def test_label_config_lists_the_classes_in_fixed_order(sample) -> None:
    config = sample.label_config_path.read_text()

    assert '<Image name="image" value="$image" />' in config
    assert '<RectangleLabels name="label" toName="image">' in config
    positions = [config.index(f'<Label value="{c}" />') for c in CLASSES]
    assert positions == sorted(positions)


def test_image_ref_template_sets_s3_references(tmp_path: Path) -> None:
    summary = generate(tmp_path, 1, seed=1, image_ref="s3://raw/prefix/{name}")
    tasks = json.loads(summary.export_path.read_text())

    assert tasks[0]["data"]["image"] == "s3://raw/prefix/synth_00000.jpg"
