"""Protects Label Studio <-> COCO conversion: image refs map to raw keys, rectangles survive the
round trip within 0.01 percentage points, other result types are counted, rotated boxes become
their envelope, category ids follow the stable rule, and every COCO written loads in pycocotools."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO

from pixelpipe.annotations.coco import (
    boxes_from_coco,
    categories,
    category_order,
    coco_from_boxes,
    validate_coco,
)
from pixelpipe.annotations.labelstudio import (
    config_label_names,
    label_config_from_export,
    ls_to_coco,
    rectangle_config,
)
from pixelpipe.annotations.ls_import import coco_to_ls
from pixelpipe.annotations.refs import RefError, RefIndex, resolve_ref
from pixelpipe.datagen import CLASSES, generate

BUCKET, PREFIX = "raw", "shapes/2024"
TOL_PP = 0.01


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    return generate(tmp_path_factory.mktemp("sample"), 5, seed=3)


def _load_with_pycocotools(doc: dict[str, Any], path: Path) -> COCO:
    path.write_text(json.dumps(doc))
    return COCO(str(path))


def _rect(x: float, y: float, w: float, h: float, label: str, size=(200, 100), **extra) -> dict:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}
    value.update(extra)
    return {
        "id": f"r{label}{x}",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": value,
    }


def _task(task_id: int, ref: str, results: list[dict], **annotation: Any) -> dict:
    ann = {
        "id": task_id,
        "result": results,
        "was_cancelled": False,
        "created_at": "2024-01-01T00:00:00Z",
    }
    ann.update(annotation)
    return {"id": task_id, "data": {"image": ref}, "annotations": [ann]}


# ---------------------------------------------------------------- refs


@pytest.mark.parametrize(
    ("ref", "key"),
    [
        ("/data/local-files/?d=images/a.jpg", "shapes/2024/images/a.jpg"),
        ("/data/local-files/?d=images%2Fmy%20pic.jpg", "shapes/2024/images/my pic.jpg"),
        ("/data/local-files/?d=shapes/2024/a.jpg", "shapes/2024/a.jpg"),
        ("http://ls:8080/data/local-files/?d=b.png", "shapes/2024/b.png"),
        ("/data/upload/7/0a1b2c3d-cat.jpg", "shapes/2024/cat.jpg"),
        ("/data/upload/7/cat%20two.jpg", "shapes/2024/cat two.jpg"),
        ("s3://raw/shapes/2024/a.jpg", "shapes/2024/a.jpg"),
        ("gs://raw/other/z.jpg", "other/z.jpg"),
        (
            "https://raw.s3.us-east-1.amazonaws.com/shapes/a%20b.jpg?X-Amz-Signature=f00",
            "shapes/a b.jpg",
        ),
        ("http://localhost:8333/raw/shapes/x.png?X-Amz-Expires=60", "shapes/x.png"),
        ("https://storage.googleapis.com/raw/y.jpg?X-Goog-Signature=1", "y.jpg"),
        ("a.jpg", "shapes/2024/a.jpg"),
        ("sub/a.jpg", "shapes/2024/sub/a.jpg"),
    ],
)
def test_every_label_studio_ref_form_resolves_to_a_raw_key(ref: str, key: str) -> None:
    assert resolve_ref(ref, BUCKET, PREFIX) == key


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("s3://elsewhere/a.jpg", "not the raw bucket"),
        ("https://cdn.example.com/a.jpg", "names no bucket"),
        ("/home/me/a.jpg", "absolute filesystem path"),
        ("data:image/png;base64,AAAA", "data: URI"),
        ("", "empty"),
        ("/data/local-files/?d=../../etc/passwd", "names no file inside"),
        ("/data/local-files/?x=1", "no d= path"),
        ("ftp://host/a.jpg", "unsupported scheme"),
    ],
)
def test_unresolvable_refs_raise_ref_error_with_a_reason(ref: str, reason: str) -> None:
    with pytest.raises(RefError) as err:
        resolve_ref(ref, BUCKET, PREFIX)
    assert reason in err.value.reason


def test_ref_index_tries_exact_then_relative_path_then_unique_basename() -> None:
    keys = [
        "shapes/2024/a.jpg",
        "shapes/2024/sub/b.jpg",
        "shapes/2024/x/c.jpg",
        "shapes/2024/y/c.jpg",
    ]
    index = RefIndex(keys, BUCKET, PREFIX)

    assert index.resolve("s3://raw/shapes/2024/a.jpg") == "shapes/2024/a.jpg"
    assert index.resolve("/data/local-files/?d=images/a.jpg") == "shapes/2024/a.jpg"
    assert index.resolve("/data/local-files/?d=export/sub/b.jpg") == "shapes/2024/sub/b.jpg"
    assert index.resolve("/data/upload/1/deadbeef-b.jpg") == "shapes/2024/sub/b.jpg"
    with pytest.raises(RefError, match="shapes/2024/x/c.jpg, shapes/2024/y/c.jpg"):
        index.resolve("/data/local-files/?d=c.jpg")
    with pytest.raises(RefError, match="no raw object named 'd.jpg'"):
        index.resolve("d.jpg")
    with pytest.raises(RefError, match="no object"):
        index.resolve("s3://raw/shapes/2024/b.jpg")


# ---------------------------------------------------------------- COCO helpers


def test_category_ids_follow_config_order_then_sorted_extras() -> None:
    names = category_order(["star", "circle"], ["zigzag", "circle", "blob"])

    assert [(c["id"], c["name"]) for c in categories(names)] == [
        (1, "star"),
        (2, "circle"),
        (3, "blob"),
        (4, "zigzag"),
    ]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 5]), "non-positive"),
        (lambda d: d["annotations"][0].update(bbox=[190, 0, 50, 5]), "outside"),
        (lambda d: d["annotations"][0].update(category_id=99), "unknown category"),
        (lambda d: d["annotations"][0].update(image_id=99), "unknown image"),
        (lambda d: d["images"].append(dict(d["images"][0])), "not unique"),
        (lambda d: d["images"][0].update(width=0), "positive integer"),
        (lambda d: d.pop("categories"), "categories"),
    ],
)
def test_validate_coco_names_the_problem(mutate, reason: str) -> None:
    doc = coco_from_boxes(
        {"a.jpg": [{"label": "circle", "x": 1.5, "y": 2.0, "w": 10.25, "h": 5.0}]},
        {"a.jpg": (200, 100)},
        ["circle"],
    )
    validate_coco(doc)
    mutate(doc)
    with pytest.raises(ValueError, match=reason):
        validate_coco(doc)


def test_coco_from_boxes_round_trips_through_pycocotools(tmp_path: Path) -> None:
    boxes = {
        "a.jpg": [{"label": "star", "x": 1.5, "y": 2.25, "w": 10.125, "h": 5.0}],
        "b.png": [],
    }
    doc = coco_from_boxes(boxes, {"a.jpg": (200, 100), "b.png": (64, 48)}, ["circle", "star"])
    coco = _load_with_pycocotools(doc, tmp_path / "c.json")

    assert boxes_from_coco(doc) == boxes
    assert coco.loadAnns(coco.getAnnIds())[0]["bbox"] == [1.5, 2.25, 10.125, 5.0]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "star"]


# ---------------------------------------------------------------- LS -> COCO


def test_datagen_export_converts_with_stable_ids_refs_and_pixel_boxes(
    sample, tmp_path: Path
) -> None:
    tasks = json.loads(sample.export_path.read_text())
    result = ls_to_coco(sample.export_path, sample.label_config_path.read_text())
    coco = _load_with_pycocotools(result.coco, tmp_path / "coco.json")

    assert result.category_names == list(CLASSES)
    assert [c["id"] for c in result.coco["categories"]] == list(range(1, len(CLASSES) + 1))
    assert len(coco.getAnnIds()) == sample.boxes
    assert result.skipped == {}
    first = result.coco["images"][0]
    assert first["ls_ref"] == tasks[0]["data"]["image"]
    assert first["file_name"] == "images/synth_00000.jpg"
    assert (first["width"], first["height"]) == (640, 480)
    for task in tasks:
        boxes = result.boxes_by_ref[task["data"]["image"]]
        for box, res in zip(boxes, task["annotations"][0]["result"], strict=True):
            v, width = res["value"], res["original_width"]
            assert box["label"] == v["rectanglelabels"][0]
            assert box["x"] == pytest.approx(v["x"] * width / 100, abs=1e-9)
            assert box["w"] == pytest.approx(v["width"] * width / 100, abs=1e-9)


def test_ls_to_coco_to_ls_round_trip_keeps_boxes_within_a_hundredth_of_a_point(sample) -> None:
    tasks = json.loads(sample.export_path.read_text())
    result = ls_to_coco(sample.export_path, str(sample.label_config_path))
    back, _ = coco_to_ls(result.coco, image_url=lambda name: f"/data/local-files/?d={name}")

    assert [t["data"]["image"] for t in back] == [t["data"]["image"] for t in tasks]
    for original, returned in zip(tasks, back, strict=True):
        before = original["annotations"][0]["result"]
        after = returned["predictions"][0]["result"]
        assert len(before) == len(after)
        for a, b in zip(before, after, strict=True):
            assert a["value"]["rectanglelabels"] == b["value"]["rectanglelabels"]
            for key in ("x", "y", "width", "height"):
                assert abs(a["value"][key] - b["value"][key]) < TOL_PP


def test_polygons_keypoints_and_choices_are_counted_and_rectangles_converted(
    tmp_path: Path,
) -> None:
    polygon = {
        "type": "polygonlabels",
        "from_name": "poly",
        "to_name": "image",
        "original_width": 200,
        "original_height": 100,
        "value": {"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": ["circle"]},
    }
    keypoint = {**polygon, "type": "keypointlabels", "from_name": "kp", "value": {"x": 1, "y": 1}}
    choice = {
        "type": "choices",
        "from_name": "class",
        "to_name": "image",
        "value": {"choices": ["x"]},
    }
    tasks = [
        _task(1, "a.jpg", [_rect(10, 20, 30, 40, "circle"), polygon, keypoint, keypoint, choice]),
        _task(2, "b.jpg", [polygon, _rect(0, 0, 50, 50, "star")]),
    ]
    config = rectangle_config(["circle", "star"])
    result = ls_to_coco(tasks, config)
    _load_with_pycocotools(result.coco, tmp_path / "c.json")

    assert result.skipped == {"choices": 1, "keypointlabels": 2, "polygonlabels": 2}
    assert result.boxes_by_ref == {
        "a.jpg": [{"label": "circle", "x": 20.0, "y": 20.0, "w": 60.0, "h": 40.0}],
        "b.jpg": [{"label": "star", "x": 0.0, "y": 0.0, "w": 100.0, "h": 50.0}],
    }


def test_rotated_box_becomes_its_axis_aligned_envelope() -> None:
    # 200x100 image; box at (100, 10) px, 40x30 px, turned 90 degrees clockwise about (100, 10):
    # corners (100,10), (100,50), (70,10), (70,50) -> envelope x 70, y 10, w 30, h 40.
    rotated = _rect(50, 10, 20, 30, "square", rotation=90)
    result = ls_to_coco([_task(1, "r.jpg", [rotated])], rectangle_config(["square"]))

    (box,) = result.boxes_by_ref["r.jpg"]
    assert (box["x"], box["y"], box["w"], box["h"]) == pytest.approx((70, 10, 30, 40))


def test_rotated_box_leaving_the_image_is_clipped_to_it() -> None:
    # Turned 180 degrees about its top-left corner (20, 20) px the box would span x 0..20.
    rotated = _rect(10, 20, 15, 10, "square", rotation=180)
    result = ls_to_coco([_task(1, "r.jpg", [rotated])], rectangle_config(["square"]))

    (box,) = result.boxes_by_ref["r.jpg"]
    assert (box["x"], box["y"], box["w"], box["h"]) == pytest.approx((0, 10, 20, 10))


def test_latest_live_annotation_counts_and_cancelled_ones_never() -> None:
    task = _task(1, "a.jpg", [_rect(0, 0, 10, 10, "circle")], created_at="2024-01-01T00:00:00Z")
    task["annotations"] += [
        {"id": 2, "result": [_rect(5, 5, 10, 10, "star")], "created_at": "2024-02-01T00:00:00Z"},
        {
            "id": 3,
            "result": [_rect(9, 9, 9, 9, "star")],
            "created_at": "2024-03-01T00:00:00Z",
            "was_cancelled": True,
        },
    ]
    result = ls_to_coco([task], rectangle_config(["circle", "star"]))

    assert [b["label"] for b in result.boxes_by_ref["a.jpg"]] == ["star"]
    assert result.boxes_by_ref["a.jpg"][0]["x"] == pytest.approx(10.0)
    assert len(result.coco["images"]) == 1


def test_config_from_export_uses_the_export_names_and_sorted_labels() -> None:
    tasks = [_task(1, "a.jpg", [_rect(0, 0, 10, 10, "star"), _rect(50, 50, 10, 10, "circle")])]
    config = label_config_from_export(tasks)
    result = ls_to_coco(tasks)

    assert config_label_names(config) == ["circle", "star"]
    assert '<RectangleLabels name="label" toName="image">' in config
    assert result.category_names == ["circle", "star"]
    assert len(result.coco["annotations"]) == 2


def test_unknown_labels_go_after_config_labels_and_unsized_tasks_are_listed() -> None:
    tasks = [
        _task(1, "a.jpg", [_rect(0, 0, 10, 10, "zigzag"), _rect(50, 50, 10, 10, "circle")]),
        {"id": 2, "data": {"image": "empty.jpg"}, "annotations": []},
    ]
    result = ls_to_coco(tasks, rectangle_config(["star", "circle"]))

    assert result.category_names == ["star", "circle", "zigzag"]
    assert result.unsized_refs == ["empty.jpg"]
    validate_coco(result.coco)


# ---------------------------------------------------------------- COCO -> LS


def test_coco_to_ls_writes_predictions_and_a_choices_control(tmp_path: Path) -> None:
    doc = coco_from_boxes(
        {"a.jpg": [{"label": "star", "x": 20.0, "y": 10.0, "w": 40.0, "h": 30.0}], "b.jpg": []},
        {"a.jpg": (200, 100), "b.jpg": (50, 50)},
        ["circle", "star"],
    )
    scored = copy.deepcopy(doc)
    scored["annotations"][0]["score"] = 0.75
    _load_with_pycocotools(scored, tmp_path / "scored.json")
    tasks, config = coco_to_ls(scored, image_url=lambda name: f"s3://raw/shapes/{name}")

    assert [t["data"]["image"] for t in tasks] == ["s3://raw/shapes/a.jpg", "s3://raw/shapes/b.jpg"]
    prediction = tasks[0]["predictions"][0]
    assert prediction["model_version"] == "pixelpipe"
    assert prediction["score"] == pytest.approx(0.75)
    (region,) = prediction["result"]
    assert (region["from_name"], region["to_name"], region["type"]) == (
        "label",
        "image",
        "rectanglelabels",
    )
    assert region["value"]["rectanglelabels"] == ["star"]
    assert [region["value"][k] for k in ("x", "y", "width", "height")] == pytest.approx(
        [10, 10, 20, 30]
    )
    assert region["score"] == pytest.approx(0.75)
    assert tasks[1]["predictions"][0]["result"] == []
    assert '<RectangleLabels name="label" toName="image">' in config
    assert '<Choices name="class" toName="image" choice="multiple"' in config
    assert '<Choice value="circle" />' in config and '<Choice value="star" />' in config


def test_coco_to_ls_output_imports_back_to_the_same_coco(tmp_path: Path) -> None:
    doc = coco_from_boxes(
        {"a.jpg": [{"label": "circle", "x": 20.5, "y": 10.25, "w": 40.0, "h": 30.0}]},
        {"a.jpg": (200, 100)},
        ["circle", "star"],
    )
    tasks, config = coco_to_ls(doc, image_url=lambda name: name)
    as_export = [
        {
            "id": i,
            "data": t["data"],
            "annotations": [{"id": i, "result": t["predictions"][0]["result"]}],
        }
        for i, t in enumerate(tasks, 1)
    ]
    result = ls_to_coco(as_export, config)
    _load_with_pycocotools(result.coco, tmp_path / "back.json")

    assert result.category_names == ["circle", "star"]
    assert boxes_from_coco(result.coco)["a.jpg"][0] == pytest.approx(
        boxes_from_coco(doc)["a.jpg"][0]
    )
