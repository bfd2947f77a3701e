"""Stage 3 training against the real S3 + MLflow stack: FT4 (params, metrics, model artifact in
S3, registered version aliased 'candidate', run FINISHED), that the model really learns
(macro-F1 well above a class-prior baseline), a two-process torchrun (gloo) run, the torch
and DALI loaders on CPU, and that the MLflow pyfunc agrees with the fast Predictor."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from pixelpipe.annotations.coco import categories, coco_annotation, coco_doc, coco_image
from pixelpipe.annotations.labelstudio import ls_to_coco
from pixelpipe.datagen import CLASSES, generate
from pixelpipe.imaging.boxes import Box, affine_boxes
from pixelpipe.imaging.decode import encode_jpeg
from pixelpipe.imaging.geometry import project_boxes
from pixelpipe.imaging.resize_cpu import process_file
from pixelpipe.imaging.variants import Variant
from pixelpipe.settings import Settings
from pixelpipe.training.config import TrainConfig, dali_available
from pixelpipe.training.dataset import read_index, split_samples, stage_dataset
from pixelpipe.training.launch import launch
from pixelpipe.training.loaders import LoaderSpec, decode_image, make_batches, normalize
from pixelpipe.training.mlflow_model import load_predictor, tracking_uri
from pixelpipe.training.train import TrainResult

pytestmark = pytest.mark.stack


# --- a dataset index like the one stage 2 publishes ------------------------------------------
@dataclass(frozen=True)
class VariantImage:
    """One normalized image: its JPEG bytes, the raw image it came from and its boxes."""

    name: str
    raw_key: str
    jpeg: bytes
    width: int
    height: int
    boxes: list[Box]


def render_variant_images(
    out_dir: Path, raw_images: int, size: int, copies: int = 1, seed: int = 0
) -> list[VariantImage]:
    """datagen -> Label Studio export -> COCO -> size x size 'fit' JPEGs; copy k>0 is mirrored."""
    summary = generate(out_dir, raw_images, seed)
    coco = ls_to_coco(summary.export_path, summary.label_config_path).coco
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes: dict[int, list[Box]] = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes.setdefault(ann["image_id"], []).append(
            Box(label=names[ann["category_id"]], x=x, y=y, w=w, h=h)
        )
    variant = Variant("train", size, size, "fit")
    out: list[VariantImage] = []
    for im in coco["images"]:
        path = out_dir / "images" / Path(im["file_name"]).name
        rendered = process_file(str(path), [variant], 90).outputs[0]
        placed = project_boxes(boxes.get(im["id"], []), rendered.geometry)
        stem = path.stem
        out.append(VariantImage(f"{stem}__c0.jpg", f"incoming/{path.name}", rendered.jpeg,
                                size, size, placed))  # fmt: skip
        for k in range(1, copies):
            out.append(_dihedral_copy(rendered.jpeg, placed, size, k, f"{stem}__c{k}.jpg",
                                      f"incoming/{path.name}"))  # fmt: skip
    return out


def _dihedral_copy(
    jpeg: bytes, boxes: list[Box], size: int, k: int, name: str, raw_key: str
) -> VariantImage:
    """Copy k of a square image: rotated k*90 degrees counter-clockwise, mirrored when k >= 4.

    Stands in for stage 1's augmented copies (the shapes' labels survive any of these).
    """
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    turn = [[0.0, 1.0, 0.0], [-1.0, 0.0, float(size)], [0.0, 0.0, 1.0]]
    for _ in range(k % 4):
        rgb = np.rot90(rgb)
        boxes = affine_boxes(boxes, turn, size, size)
    if k >= 4:
        rgb = rgb[:, ::-1]
        boxes = affine_boxes(boxes, [[-1.0, 0.0, float(size)], [0.0, 1.0, 0.0]], size, size)
    return VariantImage(name, raw_key, encode_jpeg(np.ascontiguousarray(rgb)), size, size, boxes)


def _polygon(label: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if label == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if label == "triangle":
        t = angle + np.arange(3) * 2 * np.pi / 3
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if label == "star":
        t = angle + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)
    arm = 0.3 * r  # cross: a plus sign of two bars
    pts = [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm), (arm, r),
           (-arm, r), (-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]  # fmt: skip
    c, s = np.cos(angle), np.sin(angle)
    return np.array([(cx + c * x - s * y, cy + s * x + c * y) for x, y in pts])


SHAPE_COLOURS: dict[str, np.ndarray] = {
    name: np.array(rgb)
    for name, rgb in zip(
        CLASSES,
        [(220, 40, 40), (40, 200, 60), (50, 80, 230), (235, 215, 40), (215, 50, 215)],
        strict=True,
    )
}


def render_shapes(count: int, size: int, seed: int) -> list[VariantImage]:
    """Fast, clearly learnable images: 1-3 shapes of CLASSES, one per quadrant, on grey noise.

    Each class also has its own colour. datagen's scenes (any colour, any size, occlusion)
    take a CNN thousands of images and steps to learn; this test is about the pipeline
    carrying labels, pixels, loss and metrics correctly, in seconds on two CPU cores.
    """
    rng = np.random.default_rng(seed)
    cell = size / 2
    out: list[VariantImage] = []
    for i in range(count):
        grey = rng.integers(70, 180)
        img = np.clip(grey + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        boxes: list[Box] = []
        picked = rng.choice(len(CLASSES), size=int(rng.integers(1, 4)), replace=False)
        cells = rng.permutation(4)[: len(picked)]  # one shape per quadrant: no occlusion
        for class_index, where in zip(picked, cells, strict=True):
            label = CLASSES[int(class_index)]
            r = rng.uniform(0.32, 0.45) * cell
            cx = (where % 2 + 0.5) * cell + rng.uniform(-1, 1) * (cell / 2 - r)
            cy = (where // 2 + 0.5) * cell + rng.uniform(-1, 1) * (cell / 2 - r)
            jitter = rng.integers(-25, 26, 3)
            colour = tuple(int(v) for v in np.clip(SHAPE_COLOURS[label] + jitter, 0, 255))
            if label == "circle":
                cv2.circle(img, (round(cx), round(cy)), round(r), colour, -1, cv2.LINE_AA)
            else:
                pts = _polygon(label, cx, cy, r, rng.uniform(0, 2 * np.pi))
                cv2.fillPoly(img, [np.round(pts).astype(np.int32)], colour, cv2.LINE_AA)
            boxes.append(Box(label=label, x=cx - r, y=cy - r, w=2 * r, h=2 * r))
        name = f"shape_{i:05d}.jpg"
        out.append(VariantImage(name, f"incoming/{name}", encode_jpeg(img), size, size, boxes))
    return out


def publish_dataset(
    settings: Settings,
    s3: Any,
    variant: str,
    images: Sequence[VariantImage],
    partitions: int = 2,
    mode: str = "fit",
) -> str:
    """Upload images, one COCO file per partition and the index; return the index URI."""
    cats = categories(CLASSES)
    cat_id = {c["name"]: c["id"] for c in cats}
    bucket, artifacts = settings.normalized_bucket, settings.artifacts_bucket
    entries: list[dict[str, Any]] = []
    for p in range(partitions):
        part = f"b-20261125T0000{p:02d}-{secrets.token_hex(5)}"
        doc_images, doc_anns = [], []
        for image_id, im in enumerate(images[p::partitions], 1):
            key = f"{variant}/{part}/{im.name}"
            s3.put_object(Bucket=bucket, Key=key, Body=im.jpeg, ContentType="image/jpeg")
            doc_images.append(coco_image(image_id, key, im.width, im.height, raw_key=im.raw_key))
            for box in im.boxes:
                ann = coco_annotation(len(doc_anns) + 1, image_id, cat_id[box["label"]], box)
                doc_anns.append(ann)
        coco_key = f"coco/{variant}/{part}.json"
        body = json.dumps(coco_doc(doc_images, doc_anns, cats)).encode()
        s3.put_object(Bucket=artifacts, Key=coco_key, Body=body)
        entries.append({
            "partition": part,
            "coco_uri": f"s3://{artifacts}/{coco_key}",
            "manifest_uri": f"s3://{bucket}/_manifests/normalized_images/{part}/manifest-x.json",
            "images": len(doc_images),
            "annotations": len(doc_anns),
        })  # fmt: skip
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    index = {
        "schema_version": 1,
        "variant": variant,
        "width": images[0].width,
        "height": images[0].height,
        "mode": mode,
        "bucket": bucket,
        "categories": [{"id": c["id"], "name": c["name"]} for c in cats],
        "partitions": entries,
        "images": sum(e["images"] for e in entries),
        "annotations": sum(e["annotations"] for e in entries),
        "digest": digest,
        "created_at": "2026-11-25T00:18:37+00:00",
    }
    index_key = f"datasets/{variant}/index.json"
    s3.put_object(Bucket=artifacts, Key=index_key, Body=json.dumps(index).encode())
    return f"s3://{artifacts}/{index_key}"


# --- fixtures --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    variant: str
    uri: str
    images: list[VariantImage]


@pytest.fixture(scope="module")
def scenes(settings: Settings, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """datagen scenes as stage 2 would publish them: 20 raw images x 2 copies at 64x64."""
    variant = f"t{secrets.token_hex(3)}-scenes"
    images = render_variant_images(tmp_path_factory.mktemp("gen"), 20, 64, copies=2, seed=3)
    return Published(variant, publish_dataset(settings, s3, variant, images), images)


@pytest.fixture(scope="module")
def shapes(settings: Settings, s3: Any) -> Published:
    variant = f"t{secrets.token_hex(3)}-shapes"
    images = render_shapes(240, 64, seed=0)
    return Published(variant, publish_dataset(settings, s3, variant, images), images)


@pytest.fixture(scope="module")
def tracked(settings: Settings, scenes: Published) -> TrainResult:
    """One tracked in-process run (FT4), shared by the MLflow and serving checks."""
    config = TrainConfig(
        variant=scenes.variant, model="tiny", epochs=2, batch_size=8, num_workers=0, device="cpu"
    )
    return launch(config, settings)


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


# --- FT4 -------------------------------------------------------------------------------------
def test_ft4_run_is_logged_registered_and_stored_in_s3(
    settings: Settings, s3: Any, scenes: Published, tracked: TrainResult
) -> None:
    client = _client(settings)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "tiny" and params["epochs"] == "2"
    assert params["dataset_uri"] == scenes.uri
    assert params["dataset_digest"] == tracked.dataset_digest
    assert params["code_version"]
    assert {"train_loss", "val_f1_macro", "images_per_s", "data_wait_fraction"} <= set(
        run.data.metrics
    )
    assert len(client.get_metric_history(tracked.run_id, "train_loss")) == 2
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == tracked.dataset_digest[:36]

    version = client.get_model_version_by_alias(settings.registered_model_name, "candidate")
    assert version.version == tracked.model_version
    assert version.source == tracked.model_uri and tracked.model_uri.startswith("models:/")

    experiment = run.info.experiment_id
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.artifacts_bucket, Prefix=f"mlflow/{experiment}/"
    )
    names = {Path(o["Key"]).name for page in pages for o in page.get("Contents", [])}
    assert {"model.pt", "preprocess.json", "MLmodel", "python_model.pkl"} <= names
    assert tracked.run_url and tracked.run_id in tracked.run_url


# --- it learns -------------------------------------------------------------------------------
def test_model_learns_well_beyond_the_class_prior_baseline(
    settings: Settings, shapes: Published
) -> None:
    config = TrainConfig(
        variant=shapes.variant,
        model="tiny",
        epochs=6,
        batch_size=32,
        lr=3e-3,
        num_workers=0,
        device="cpu",
        track=False,
    )
    result = launch(config, settings)
    f1, baseline = result.metrics["val_f1_macro"], result.metrics["baseline_f1_macro"]
    assert result.val_images >= 30
    assert f1 >= 0.8, result.metrics
    assert f1 >= baseline + 0.3, result.metrics
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss


# --- torchrun --------------------------------------------------------------------------------
def test_two_processes_under_torchrun_log_one_run(settings: Settings, scenes: Published) -> None:
    name = f"ddp-{secrets.token_hex(3)}"
    config = TrainConfig(
        variant=scenes.variant,
        model="tiny",
        epochs=1,
        batch_size=8,
        num_workers=0,
        device="cpu",
        nproc_per_node=2,
        run_name=name,
    )
    result = launch(config, settings)
    assert result.world_size == 2
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert [r.info.run_id for r in runs] == [result.run_id]  # rank 0 alone logged
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["world_size"] == "2"
    assert 0.0 <= result.metrics["val_f1_macro"] <= 1.0


# --- loaders ---------------------------------------------------------------------------------
def _dali_or_skip() -> None:
    if dali_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("nvidia.dali does not import, and CI must test the DALI loader")
    pytest.skip("nvidia.dali does not import here")


def test_staging_reuses_what_is_already_on_disk(settings: Settings, scenes: Published) -> None:
    index = read_index(scenes.uri, settings)
    first = stage_dataset(index, settings)
    assert first.root.is_relative_to(settings.nvme_root.resolve() / "train")
    assert first.root.name == index.digest[:12]
    Path(first.samples[0].path).unlink()
    assert stage_dataset(index, settings).downloaded == 1
    again = stage_dataset(index, settings)
    assert again.downloaded == 0
    assert all(Path(s.path).is_file() for s in again.samples)
    assert (
        stage_dataset(index, settings, max_images=10).samples
        == stage_dataset(index, settings, max_images=10).samples
    )


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_loader_yields_normalised_batches_on_cpu(
    settings: Settings, scenes: Published, kind: str
) -> None:
    if kind == "dali":
        _dali_or_skip()
    staged = stage_dataset(read_index(scenes.uri, settings), settings)
    assert len(staged.samples) == len(scenes.images)
    train, val = split_samples(staged.samples, 0.25)
    assert not {s.raw_key for s in train} & {s.raw_key for s in val}
    spec = LoaderSpec(64, 64, batch_size=8, num_workers=1, device="cpu")
    targets = staged.targets(val)
    batches = make_batches(kind, [s.path for s in val], targets, spec, train=False)
    images, labels = next(iter(batches))
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert torch.equal(labels, torch.from_numpy(targets[:8]))
    pixels = np.stack([decode_image(Path(s.path).read_bytes()) for s in val[:8]])
    expected = normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert float((images - expected).abs().mean()) < 0.05  # a JPEG decoder's rounding at most

    train_batches = make_batches(kind, [s.path for s in train], staged.targets(train), spec, True)
    seen = [x.shape[0] for x, _ in train_batches]
    assert len(seen) == len(train_batches) == len(train) // 8 and set(seen) == {8}


# --- serving ---------------------------------------------------------------------------------
def test_pyfunc_scores_base64_images_like_the_predictor(
    settings: Settings, scenes: Published, tracked: TrainResult, tmp_path: Path
) -> None:
    png = io.BytesIO()
    Image.open(io.BytesIO(scenes.images[0].jpeg)).resize((100, 80)).save(png, format="PNG")
    blobs = [scenes.images[1].jpeg, scenes.images[2].jpeg, png.getvalue()]
    frame = pd.DataFrame({"image": [base64.b64encode(b).decode() for b in blobs]})
    with tracking_uri(settings.mlflow_tracking_uri):
        served = mlflow.pyfunc.load_model(tracked.model_uri).predict(frame)
        local = mlflow.artifacts.download_artifacts(tracked.model_uri, dst_path=str(tmp_path))
    labels = list(CLASSES)
    assert list(served.columns) == [*labels, "labels"]
    direct = load_predictor(local).predict_images(blobs)
    for row, scores in zip(served.to_dict("records"), direct, strict=True):
        assert set(scores) == set(labels)
        assert all(0.0 <= v <= 1.0 for v in scores.values())
        assert [row[k] for k in labels] == pytest.approx([scores[k] for k in labels], abs=1e-6)
        assert list(row["labels"]) == [k for k in labels if scores[k] > 0.5]


# --- GPU -------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_training_with_the_default_loader(settings: Settings, scenes: Published) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    config = TrainConfig(variant=scenes.variant, model="tiny", epochs=2, batch_size=8, track=False)
    result = launch(config, settings)
    assert result.device == "cuda"
    assert result.loader == ("dali" if dali_available() else "torch")
    assert result.epochs[-1].images_per_s > 0
