"""FT3 on the real stack: Label Studio export -> COCO per variant through Stages 1-2, late labels,
COCO -> Label Studio, and manifests that reference every artifact with its annotation_format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import unique_prefix

from pixelpipe import manifests as mf
from pixelpipe import settings as settings_mod
from pixelpipe.datagen import generate
from pixelpipe.pipeline import poll
from pixelpipe.settings import Settings
from pixelpipe.uploads import upload_dataset

SIZES = "sq:128x128,box:160x160:letterbox"


@pytest.fixture
def two_variants(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("NORMALIZE_SIZES", SIZES)
    settings_mod.get_settings.cache_clear()
    yield settings.model_copy(update={"normalize_sizes": SIZES})
    settings_mod.get_settings.cache_clear()


def _latest(s3, settings: Settings, asset: str) -> dict:
    uri = mf.latest_manifest_uri(s3, settings.artifacts_bucket, asset, "all")
    doc = mf.read_json(s3, uri)
    mf.validate_against_schema("annotation_manifest", doc)
    return doc


def _boxes_by_file(coco: dict) -> dict[str, list[tuple[int, list[float]]]]:
    out: dict[str, list] = {im["file_name"]: [] for im in coco["images"]}
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    for ann in coco["annotations"]:
        out[names[ann["image_id"]]].append((ann["category_id"], ann["bbox"]))
    return {k: sorted(v) for k, v in out.items()}


def _load_with_pycocotools(s3, uri: str, tmp: Path) -> dict:
    from pycocotools.coco import COCO

    doc = mf.read_json(s3, uri)
    path = tmp / (uri.rsplit("/", 1)[-1])
    path.write_text(json.dumps(doc))
    loaded = COCO(str(path))
    assert len(loaded.getImgIds()) == len(doc["images"])
    assert len(loaded.getAnnIds()) == len(doc["annotations"])
    return doc


def test_ft3_late_labels_match_labels_known_up_front(
    two_variants: Settings, s3, tmp_path: Path
) -> None:
    settings = two_variants
    prefix = unique_prefix(settings, "ft3")
    data = tmp_path / "data"
    generate(data, 4, seed=11)
    images_only = tmp_path / "images-only"
    (images_only / "images").mkdir(parents=True)
    for p in (data / "images").iterdir():
        (images_only / "images" / p.name).write_bytes(p.read_bytes())

    # 1. images first, no labels yet: processed, but nothing to train on
    upload_dataset(images_only, settings, prefix)
    (run,) = poll(settings.model_copy(update={"raw_prefix": prefix}), prefix, echo=print)
    assert run.success
    partition = run.partition
    stage2_uri = run.metadata["normalized_images"]["manifest_uri"]

    # 2. the Label Studio export arrives later: COCO per variant by projection alone
    upload_dataset(data, settings, prefix)  # same images (unchanged ETags) + the export
    assert poll(settings.model_copy(update={"raw_prefix": prefix}), prefix, echo=print) == []
    raw = _latest(s3, settings, "raw_annotations")
    formats = {(a["role"], a["annotation_format"]) for a in raw["artifacts"]}
    assert ("source", "label_studio_json") in formats and ("converted", "coco") in formats
    coco_manifest = _latest(s3, settings, "coco_annotations")
    late = {
        a["variant"]: _load_with_pycocotools(s3, a["uri"], tmp_path)
        for a in coco_manifest["artifacts"]
        if a["role"] == "converted" and a["partition"] == partition
    }
    assert set(late) == {"sq", "box"}
    assert all(a["annotation_format"] == "coco" for a in coco_manifest["artifacts"])
    assert all(late[v]["annotations"] for v in late)

    # 3. the same partition re-run now that labels exist: boxes move with the pixels directly
    from pipeline_helpers import instance

    from pixelpipe.definitions import build_definitions

    inst = instance(settings)
    rerun = (
        build_definitions(settings)
        .resolve_job_def("ingest_job")
        .execute_in_process(partition_key=partition, instance=inst)
    )
    assert rerun.success
    uri = mf.latest_manifest_uri(s3, settings.normalized_bucket, "normalized_images", partition)
    assert uri != stage2_uri  # boxes changed, so a new manifest
    direct: dict[str, dict[str, list]] = {"sq": {}, "box": {}}
    cat_id = {c["name"]: c["id"] for c in late["sq"]["categories"]}
    for item in mf.read_json(s3, uri)["items"]:
        key = item["output_uri"].split("/", 3)[3]
        direct[item["variant_name"]][key] = sorted(
            (cat_id[b["label"]], [b["x"], b["y"], b["w"], b["h"]]) for b in item["boxes"]
        )
    for variant, coco in late.items():
        projected = _boxes_by_file(coco)
        assert set(projected) == set(direct[variant])
        for key, boxes in projected.items():
            assert len(boxes) == len(direct[variant][key]), key
            for (cat_a, a), (cat_b, b) in zip(boxes, direct[variant][key], strict=True):
                assert cat_a == cat_b
                assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 0.5, (key, a, b)

    # letterboxed variant: boxes carry the padding offset (never inside the pad bars)
    box_items = [i for i in mf.read_json(s3, uri)["items"] if i["variant_name"] == "box"]
    for item in box_items:
        g = item["geometry"]
        for b in item["boxes"]:
            assert b["x"] >= g["pad_x"] - 0.5 and b["y"] >= g["pad_y"] - 0.5

    # 4. a dataset index per variant that training reads directly
    index = mf.read_json(s3, f"s3://{settings.artifacts_bucket}/datasets/sq/index.json")
    mf.validate_against_schema("dataset_index", index)  # the one document stages pass on
    assert index["variant"] == "sq" and index["bucket"] == settings.normalized_bucket
    entry = next(p for p in index["partitions"] if p["partition"] == partition)
    assert entry["coco_uri"].endswith(f"coco/sq/{partition}.json") and index["digest"]
    from pixelpipe.training.dataset import read_index, stage_dataset

    staged = stage_dataset(
        read_index(f"s3://{settings.artifacts_bucket}/datasets/sq/index.json", settings), settings
    )
    ours = [s for s in staged.samples if f"/{partition}/" in s.key]
    assert len(ours) == len(late["sq"]["images"])
    assert all(Path(s.path).is_file() for s in ours)
    labelled = {
        im["file_name"]
        for im in late["sq"]["images"]
        if any(a["image_id"] == im["id"] for a in late["sq"]["annotations"])
    }
    assert {s.key for s in ours if len(s.labels) > 0} == labelled

    # 5. COCO -> Label Studio for human review
    out = tmp_path / "ls_import.json"
    coco_uri = next(
        a["uri"]
        for a in coco_manifest["artifacts"]
        if a["variant"] == "sq" and a["partition"] == partition
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pixelpipe", "convert", "coco-to-ls", coco_uri, str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    tasks = json.loads(out.read_text())
    assert len(tasks) == len(late["sq"]["images"])
    assert all(
        t["data"]["image"].startswith(f"s3://{settings.normalized_bucket}/sq/") for t in tasks
    )
    assert sum(len(t["predictions"][0]["result"]) for t in tasks) == len(late["sq"]["annotations"])
    config = out.with_suffix(".label_config.xml").read_text()
    assert "<RectangleLabels" in config and "<Choices" in config


def test_cli_ls_to_coco_counts_other_result_types(tmp_path: Path) -> None:
    data = tmp_path / "d"
    generate(data, 2, seed=5)
    export = json.loads((data / "annotations" / "export.json").read_text())
    result = export[0]["annotations"][0]["result"]
    result.append(
        {
            "type": "polygonlabels",
            "from_name": "poly",
            "to_name": "image",
            "original_width": 640,
            "original_height": 480,
            "value": {"points": [[1, 1], [5, 5], [1, 5]], "polygonlabels": ["circle"]},
        }
    )
    result.append(
        {
            "type": "keypointlabels",
            "from_name": "kp",
            "to_name": "image",
            "original_width": 640,
            "original_height": 480,
            "value": {"x": 5, "y": 5, "width": 1, "keypointlabels": ["circle"]},
        }
    )
    (data / "annotations" / "export.json").write_text(json.dumps(export))
    out = tmp_path / "coco.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixelpipe",
            "convert",
            "ls-to-coco",
            str(data / "annotations" / "export.json"),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "polygonlabels" in proc.stdout and "keypointlabels" in proc.stdout
    coco = json.loads(out.read_text())
    boxes = sum(len(t["annotations"][0]["result"]) for t in export) - 2
    assert len(coco["annotations"]) == boxes


def test_annotation_refreshes_do_only_new_work(two_variants: Settings, s3, tmp_path: Path) -> None:
    """A refresh with nothing new remakes no COCO; a changed export is the only one converted,
    its images are resolved in its own prefix only, and only its partition is rebuilt."""
    from pipeline_helpers import instance, materializations

    from pixelpipe.definitions import build_definitions

    settings = two_variants
    prefix = unique_prefix(settings, "incr")
    data = tmp_path / "data"
    generate(data, 3, seed=21)
    upload_dataset(data, settings, prefix)
    # the refreshes run with the settings the first run had (assets read them from the
    # definitions' SettingsResource, and the raw prefix is part of a conversion's identity)
    scoped = settings.model_copy(update={"raw_prefix": prefix})
    (run,) = poll(scoped, prefix, echo=print)
    assert run.success
    job = build_definitions(scoped).resolve_job_def("annotations_job")
    inst = instance(settings)

    again = materializations(job.execute_in_process(instance=inst))
    assert again["coco_annotations"]["partitions_rebuilt"] == 0
    assert again["coco_annotations"]["partitions_reused"] >= 1
    assert again["raw_annotations"]["exports_converted"] == 0
    assert again["raw_annotations"]["raw_prefixes_listed"] == "none"

    export_path = data / "annotations" / "export.json"
    export = json.loads(export_path.read_text())
    export[0]["annotations"][0]["result"][0]["value"]["x"] += 5.0  # a person moves one box
    export_path.write_text(json.dumps(export))
    upload_dataset(data, settings, prefix)
    relabelled = materializations(job.execute_in_process(instance=inst))
    assert relabelled["raw_annotations"]["exports_converted"] == 1
    assert relabelled["raw_annotations"]["raw_prefixes_listed"] == prefix
    assert relabelled["coco_annotations"]["partitions_rebuilt"] == 1
    # the rebuilt partition is previewed: its images in every variant, COCO boxes drawn
    preview = relabelled["coco_annotations"]["preview"]
    assert preview.count("data:image/jpeg;base64,") == 2 * len(settings.variants)
    assert again["coco_annotations"]["preview"] == "_no partition changed_"
