"""The human-in-the-loop cycle with a real Label Studio 1.23 server (its own venv, started here on
loopback): a project with our label config; the Label Studio import that batch_predictions wrote
for the batch (a tiny detector's boxes on the raw images, RectangleLabels pre-annotations over
their class thresholds, s3://RAW_BUCKET references) imported through its API, the images
reachable as presigned URLs of the test stack's SeaweedFS; the predictions on the tasks as Label
Studio parsed them; each one accepted in Label Studio's own labeling page (chromium: the image
loads, the predicted regions are listed, Submit); the project exported in Label Studio's JSON
format under ANNOTATIONS_PREFIX; and raw_annotations / coco_annotations taking that export with
the boxes that were predicted (within 0.5 px), in raw pixels and projected into every variant.
Every file in the cycle is written by the real tool: no fakes. (SeaweedFS answers CORS for any
origin; a real bucket needs a CORS rule for Label Studio's origin.)"""

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import chromium, screenshot
from mlflow.tracking import MlflowClient
from test_batch_predictions import register_tiny_detector, run_batch_predictions

from pixelpipe import manifests as mf
from pixelpipe.annotations.project import variant_coco
from pixelpipe.annotations.refs import ref_path
from pixelpipe.datagen import generate
from pixelpipe.devstack.label_studio import LabelStudioClient, LabelStudioInfo, LabelStudioServer
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.preview import coco_boxes
from pixelpipe.pipeline import instance_for, poll
from pixelpipe.serving.predictions import threshold_of
from pixelpipe.serving.registry import promote
from pixelpipe.settings import Settings
from pixelpipe.uploads import upload_dataset

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.5  # px
RAW_COCO = "annotations/raw/coco.json"


@dataclass
class Ingested:
    """A labelled batch through the pipeline: its prefix, partition and the COCO it produced."""

    settings: Settings
    prefix: str
    partition: str
    raw_coco: dict[str, Any]  # the batch's images only
    variant_coco: dict[str, dict[str, Any]]  # variant -> COCO of the batch's partition
    label_config: str


@dataclass
class Predictions:
    """A Label Studio predictions file and what the pipeline must make of it once accepted."""

    tasks: list[dict[str, Any]]
    raw_boxes: dict[str, list[Box]]  # raw key -> predicted boxes, raw pixels
    variant_boxes: dict[str, dict[str, list[Box]]]  # variant -> normalized key -> boxes
    model_version: str


def _latest_annotation_manifest(s3: Any, settings: Settings, asset: str) -> dict[str, Any]:
    return mf.read_json(s3, mf.latest_manifest_uri(s3, settings.artifacts_bucket, asset, "all"))


def _variant_cocos(s3: Any, settings: Settings, partition: str) -> dict[str, dict[str, Any]]:
    manifest = _latest_annotation_manifest(s3, settings, "coco_annotations")
    return {
        a["variant"]: mf.read_json(s3, a["uri"])
        for a in manifest["artifacts"]
        if a["role"] == "converted" and a["partition"] == partition
    }


def _boxes_by_file(coco: dict[str, Any]) -> dict[str, list[Box]]:
    return {im["file_name"]: coco_boxes(coco, im["file_name"]) for im in coco["images"]}


@pytest.fixture(scope="module")
def ingested(settings: Settings, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """Three small images with their datagen export through the sensor's batch and annotations."""
    prefix = f"{settings.raw_prefix}/ls-{secrets.token_hex(3)}"
    sample = generate(tmp_path_factory.mktemp("ls-data"), 3, seed=13, sizes=[(320, 240)])
    assert not upload_dataset(sample.out_dir, settings, prefix).failures
    (batch,) = poll(settings.model_copy(update={"raw_prefix": prefix}), prefix, echo=print)
    assert batch.success
    coco = mf.read_json(s3, f"s3://{settings.artifacts_bucket}/{RAW_COCO}")
    ours = [im for im in coco["images"] if im["file_name"].startswith(prefix + "/")]
    ids = {im["id"] for im in ours}
    anns = [a for a in coco["annotations"] if a["image_id"] in ids]
    raw = {**coco, "images": ours, "annotations": anns}
    assert len(ours) == 3 and raw["annotations"]
    return Ingested(
        settings,
        prefix,
        batch.partition,
        raw,
        _variant_cocos(s3, settings, batch.partition),
        sample.label_config_path.read_text(),
    )


def detector_predictions(ingested: Ingested, s3: Any) -> Predictions:
    """batch_predictions' Label Studio import for the batch, from a tiny detector as champion;
    what the pipeline must make of it: its boxes over threshold, and their variant projections."""
    settings = ingested.settings
    name = f"{settings.registered_model_name}-ls"
    scoped = settings.model_copy(update={"registered_model_name": name})
    register_tiny_detector(scoped, name)
    promote(MlflowClient(settings.mlflow_tracking_uri), name)
    meta = run_batch_predictions(scoped, instance_for(settings), ingested.partition)
    doc = mf.read_json(s3, meta["predictions_uri"])
    raw_boxes: dict[str, list[Box]] = {}
    for record in doc["predictions"]:
        raw_boxes[record["path"]] = [
            Box(label=d["label"], x=d["box"][0], y=d["box"][1], w=d["box"][2], h=d["box"][3])
            for d in record["detections"]
            if d["score"] > threshold_of(doc, d["label"])
        ]
    assert all(raw_boxes.values()), "every image needs a box to accept"
    uri = mf.latest_manifest_uri(s3, settings.normalized_bucket, "normalized_images",
                                 ingested.partition)  # fmt: skip
    stage2 = mf.read_json(s3, uri or "")
    stage1 = mf.read_json(s3, stage2["config"]["upstream"])
    stage1_by_uri = {i["output_uri"]: i for i in stage1["items"]}
    variant_boxes = {}
    for variant in ingested.variant_coco:
        items = [i for i in stage2["items"] if i["variant_name"] == variant]
        projected, _ = variant_coco(
            items, stage1_by_uri, raw_boxes, ingested.raw_coco["categories"]
        )
        variant_boxes[variant] = _boxes_by_file(projected)
    tasks = mf.read_json(s3, meta["label_studio_import_uri"])
    return Predictions(tasks, raw_boxes, variant_boxes, f"{name}/{meta['model_version']}")


@dataclass
class Project:
    """The Label Studio project the predictions went into."""

    info: LabelStudioInfo
    client: LabelStudioClient
    id: int
    imported: dict[str, Any]
    predictions: Predictions
    ingested: Ingested


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A Label Studio of this module's own, launched first: it starts while the pipeline runs.
    Its venv (.venv-label-studio/ in the repo) is installed here if scripts/test.sh did not."""
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"), ROOT / ".venv-label-studio")
    server.launch()
    try:
        yield server
    finally:
        server.stop()


def _reachable(tasks: list[dict[str, Any]], s3: Any) -> list[dict[str, Any]]:
    """s3:// image references as presigned URLs the browser (and Label Studio) can fetch."""
    out = []
    for task in tasks:
        bucket, key = mf.split_uri(task["data"]["image"])
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
        )
        out.append({**task, "data": {**task["data"], "image": url}})
    return out


@pytest.fixture(scope="module")
def project(
    label_studio: LabelStudioServer,
    ingested: Ingested,
    s3: Any,
) -> Iterator[Project]:
    """A project with our label config and the predictions imported through the API."""
    predictions = detector_predictions(ingested, s3)
    info = label_studio.ready()
    client = LabelStudioClient(info.url, info.token)
    created = client.create_project(f"pixelpipe {ingested.partition}", ingested.label_config)
    imported = client.import_tasks(created["id"], _reachable(predictions.tasks, s3))
    yield Project(info, client, created["id"], imported, predictions, ingested)
    client.close()


def _pixels(region: dict[str, Any]) -> Box:
    """A Label Studio rectangle (percent of the image) in pixels."""
    v, w, h = region["value"], region["original_width"], region["original_height"]
    return Box(label=v["rectanglelabels"][0], x=v["x"] * w / 100, y=v["y"] * h / 100,
               w=v["width"] * w / 100, h=v["height"] * h / 100)  # fmt: skip


def _assert_same_boxes(got: list[Box], want: list[Box], where: str) -> None:
    key = lambda b: (b["label"], round(b["x"]), round(b["y"]))  # noqa: E731
    assert len(got) == len(want), (where, got, want)
    for a, b in zip(sorted(got, key=key), sorted(want, key=key), strict=True):
        assert a["label"] == b["label"], (where, a, b)
        worst = max(abs(a[k] - b[k]) for k in ("x", "y", "w", "h"))
        assert worst <= TOLERANCE, (where, a, b)


def _key_of(task: dict[str, Any]) -> str:
    """The object key a task's presigned image URL names."""
    return ref_path(task["data"]["image"])


def test_imported_predictions_are_on_the_tasks_as_label_studio_parsed_them(
    project: Project,
) -> None:
    expected = project.predictions.raw_boxes
    assert project.imported["task_count"] == len(expected)
    assert project.imported["prediction_count"] == len(expected)
    tasks = project.client.tasks(project.id)
    assert sorted(_key_of(t) for t in tasks) == sorted(expected)
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == project.predictions.model_version
        assert task["annotations"] == []
        regions = prediction["result"]
        assert {(r["type"], r["from_name"], r["to_name"]) for r in regions} == {
            ("rectanglelabels", "label", "image")
        }
        _assert_same_boxes([_pixels(r) for r in regions], expected[_key_of(task)], _key_of(task))
    counts = project.client.project(project.id)
    assert counts["task_number"] == counts["total_predictions_number"] == len(expected)


def _region_titles(page: Any, count: int, timeout: float = 30) -> list[str]:
    """The labels of the regions panel, once it lists `count` of them (it re-renders a while)."""
    deadline = time.monotonic() + timeout
    while True:
        found = page.locator(".lsf-outliner-item__title").all_inner_texts()
        titles = sorted(t.strip() for t in found)
        if (len(titles) == count and all(titles)) or time.monotonic() > deadline:
            return titles
        page.wait_for_timeout(250)


def test_a_person_accepts_each_prediction_in_the_labeling_page(project: Project) -> None:
    tasks = project.client.tasks(project.id)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{project.info.url}/user/login/")
        page.fill("input[name=email]", project.info.email)
        page.fill("input[name=password]", project.info.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url)
        for n, task in enumerate(tasks):
            page.goto(f"{project.info.url}/projects/{project.id}/data?task={task['id']}")
            # the image came from SeaweedFS through its presigned URL
            page.wait_for_function(
                "key => [...document.querySelectorAll('img')]"
                ".some(i => i.src.includes(key) && i.complete && i.naturalWidth > 0)",
                arg=_key_of(task).rsplit("/", 1)[1],
                timeout=60_000,
            )
            # the predicted regions, as the labeling page lists them once the image is drawn
            labels = sorted(b["label"] for b in project.predictions.raw_boxes[_key_of(task)])
            assert _region_titles(page, len(labels)) == labels, task["id"]
            screenshot(page, f"label-studio-task-{n}")
            page.get_by_role("button", name="Submit").click()
            page.wait_for_function(
                "url => fetch(url).then(r => r.json()).then(t => t.annotations.length === 1)",
                arg=f"{project.info.url}/api/tasks/{task['id']}",
                timeout=30_000,
            )
    for task in project.client.tasks(project.id):
        (annotation,) = task["annotations"]
        (prediction,) = task["predictions"]
        assert annotation["parent_prediction"] == prediction["id"]
        assert not annotation["was_cancelled"]
        assert all(r.get("origin") == "prediction" for r in annotation["result"])
        _assert_same_boxes(
            [_pixels(r) for r in annotation["result"]],
            [_pixels(r) for r in prediction["result"]],
            f"task {task['id']}",
        )


def test_the_export_becomes_the_pipelines_coco_with_the_predicted_boxes(
    project: Project, s3: Any
) -> None:
    ingested = project.ingested
    settings = ingested.settings
    export = project.client.export(project.id)
    assert len(export) == len(project.predictions.raw_boxes)
    assert all(len(t["annotations"]) == 1 for t in export), "accept every prediction first"
    # only Label Studio's export may label these images from now on
    sub = f"{settings.annotations_prefix}/{ingested.prefix}"
    for name in ("export.json", "label_config.xml"):
        s3.delete_object(Bucket=settings.raw_bucket, Key=f"{sub}/{name}")
    s3.put_object(Bucket=settings.raw_bucket, Key=f"{sub}/label-studio-export.json",
                  Body=json.dumps(export).encode(), ContentType="application/json")  # fmt: skip
    config = project.client.project(project.id)["label_config"]
    s3.put_object(Bucket=settings.raw_bucket, Key=f"{sub}/label_config.xml", Body=config.encode())

    scoped = settings.model_copy(update={"raw_prefix": ingested.prefix})
    assert poll(scoped, ingested.prefix, echo=print) == []  # no new images: annotations only
    raw = _latest_annotation_manifest(s3, settings, "raw_annotations")
    sources = [a for a in raw["artifacts"] if a["role"] == "source"]
    uri = f"s3://{settings.raw_bucket}/{sub}/label-studio-export.json"
    assert any(a["uri"] == uri and a["annotation_format"] == "label_studio_json" for a in sources)
    assert not [f for f in raw["failures"] if f["source_uri"].startswith(uri)]

    coco = _boxes_by_file(mf.read_json(s3, f"s3://{settings.artifacts_bucket}/{RAW_COCO}"))
    for key, boxes in project.predictions.raw_boxes.items():
        _assert_same_boxes(coco[key], boxes, key)
    after = _variant_cocos(s3, settings, ingested.partition)
    assert set(after) == set(project.predictions.variant_boxes)
    for variant, expected in project.predictions.variant_boxes.items():
        got = _boxes_by_file(after[variant])
        assert set(got) == set(expected)
        for key, boxes in expected.items():
            _assert_same_boxes(got[key], boxes, f"{variant} {key}")
