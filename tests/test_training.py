"""Stage 3 training against the real S3 + MLflow stack: FT4 (params, metrics, model artifact in
S3, registered version aliased 'candidate', run FINISHED), that the model really learns
(macro-F1 well above a class-prior baseline), a two-process torchrun (gloo) run, the torch
and DALI loaders on CPU, and that the MLflow pyfunc agrees with the fast Predictor."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import secrets
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from training_helpers import Published, publish_dataset, render_variant_images

from pixelpipe.datagen import CLASSES
from pixelpipe.settings import Settings
from pixelpipe.training.config import TrainConfig, dali_available
from pixelpipe.training.dataset import read_index, split_samples, stage_dataset
from pixelpipe.training.launch import launch
from pixelpipe.training.loaders import LoaderSpec, decode_image, make_batches, normalize
from pixelpipe.training.mlflow_model import load_predictor, tracking_uri
from pixelpipe.training.train import TrainResult

pytestmark = pytest.mark.stack


# --- fixtures -------------------------------------------------------------------------------
LEARN_IMAGES = 400


@pytest.fixture(scope="module")
def scenes(settings: Settings, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """datagen scenes as stage 2 would publish them: 20 raw images x 2 copies at 64x64."""
    variant = f"t{secrets.token_hex(3)}-scenes"
    images = render_variant_images(tmp_path_factory.mktemp("gen"), 20, 64, copies=2, seed=3)
    return Published(variant, publish_dataset(settings, s3, variant, images), images)


@pytest.fixture(scope="module")
def detection_scenes(
    settings: Settings, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> Published:
    """datagen's scenes exactly as generated (1-4 shapes of 8-30% of the image, random colours,
    textured backgrounds, its four source sizes up to 4000x3000) in a 128x128 letterbox
    variant: LEARN_IMAGES raw images, one copy each."""
    variant = f"t{secrets.token_hex(3)}-detect"
    gen = tmp_path_factory.mktemp("detect")
    images = render_variant_images(gen, LEARN_IMAGES, 128, seed=11, mode="letterbox")
    uri = publish_dataset(settings, s3, variant, images, mode="letterbox")
    return Published(variant, uri, images)


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
    assert params["task"] == "detection"
    assert params["dataset_uri"] == scenes.uri
    assert params["dataset_digest"] == tracked.dataset_digest
    assert params["code_version"]
    logged = set(run.data.metrics)
    assert {"train_loss", "val_loss", "val_f1_macro", "val_map", "val_map50", "images_per_s",
            "data_wait_fraction", "baseline_f1_macro", "val_ap_circle"} <= logged  # fmt: skip
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
def test_detector_learns_datagen_scenes_with_the_default_settings(
    settings: Settings, detection_scenes: Published
) -> None:
    """The defaults of `pixelpipe train --variant V` (epochs, lr, batch size, model) on datagen's
    own scenes, CPU, fixed seed: held-out boxes and the image labels derived from them."""
    config = TrainConfig(variant=detection_scenes.variant, device="cpu", num_workers=1, track=False)
    assert config.task == "detection"
    result = launch(config, settings)
    m = result.metrics
    assert result.val_images >= 60, m
    assert m["val_map50"] >= 0.5, m
    assert m["val_f1_macro"] >= 0.85, m
    assert m["val_f1_macro"] >= m["baseline_f1_macro"] + 0.2, m
    assert 0.0 < m["val_map"] <= m["val_map50"], m
    assert set(result.thresholds) == set(CLASSES)
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    print(f"\ndetector on datagen scenes: {json.dumps({k: round(v, 3) for k, v in m.items()})}")


def test_image_classification_stays_available(settings: Settings, scenes: Published) -> None:
    config = TrainConfig(variant=scenes.variant, task="classification", model="tiny", epochs=2,
                         batch_size=8, num_workers=0, device="cpu", track=False)  # fmt: skip
    result = launch(config, settings)
    assert result.task == "classification"
    assert {"val_f1_macro", "baseline_f1_macro"} <= set(result.metrics)
    assert "val_map" not in result.metrics
    assert set(result.thresholds) == set(CLASSES)
    assert all(0.0 < t < 1.0 for t in result.thresholds.values())


def test_the_split_follows_image_content_not_keys(settings: Settings, scenes: Published) -> None:
    """Re-uploading the same images under another prefix keeps every image on its side, and
    copies of one raw image never straddle the split."""
    staged = stage_dataset(read_index(scenes.uri, settings), settings).samples
    moved = [dataclasses.replace(s, key=f"other/{s.key}", raw_key=f"elsewhere/{s.raw_key}")
             for s in staged]  # fmt: skip
    train, val = split_samples(staged, 0.25)
    train2, val2 = split_samples(moved, 0.25)
    assert {s.raw_sha256 for s in val} == {s.raw_sha256 for s in val2}
    assert not {s.raw_sha256 for s in train} & {s.raw_sha256 for s in val}
    assert all(s.raw_sha256 for s in staged)


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
    assert 0.0 <= result.metrics["val_map50"] <= 1.0


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


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_detection_loaders_carry_boxes_through_flips(
    settings: Settings, scenes: Published, kind: str
) -> None:
    if kind == "dali":
        _dali_or_skip()
    from pixelpipe.training.detector import OUTPUT_STRIDE
    from pixelpipe.training.tasks import get_task

    staged = stage_dataset(read_index(scenes.uri, settings), settings).samples
    spec = LoaderSpec(64, 64, batch_size=8, num_workers=1, device="cpu", seed=1)
    batches = get_task("detection").batches(kind, staged[:16], len(CLASSES), spec, True)
    seen = 0
    for images, (heat, reg, weight) in batches:
        assert images.shape == (8, 3, 64, 64) and heat.shape == (8, len(CLASSES), 16, 16)
        for i in range(len(images)):
            peaks = torch.nonzero(heat[i] == 1.0)
            sizes = sorted(
                (round(float(torch.exp(reg[i, 0, y, x])) * OUTPUT_STRIDE, 3),
                 round(float(torch.exp(reg[i, 1, y, x])) * OUTPUT_STRIDE, 3))
                for _, y, x in peaks.tolist()
            )  # fmt: skip
            assert weight[i].max() == 1.0 or not sizes
            matches = [s for s in staged if _sizes_match(s, sizes)]
            assert matches, f"image {i}: box sizes {sizes} belong to no sample"
            seen += 1
    assert seen == 16


def _sizes_match(sample: Any, sizes: list[tuple[float, float]]) -> bool:
    """The sample's box sizes, as given or turned a quarter (w and h swapped)."""
    mine = [(b[2], b[3]) for b in sample.boxes if b[2] >= 1 and b[3] >= 1]
    for turn in (False, True):
        want = sorted((round(h, 3), round(w, 3)) if turn else (round(w, 3), round(h, 3))
                      for w, h in mine)  # fmt: skip
        if len(want) == len(sizes) and all(
            abs(a[0] - b[0]) < 0.01 and abs(a[1] - b[1]) < 0.01
            for a, b in zip(want, sizes, strict=True)
        ):
            return True
    return False


# --- serving ---------------------------------------------------------------------------------
def test_pyfunc_returns_the_predictors_boxes_in_source_pixels(
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
    assert list(served.columns) == [*labels, "labels", "detections"]
    predictor = load_predictor(local)
    assert predictor.spec.task == "detection" and set(predictor.spec.thresholds) == set(labels)
    direct = predictor.detect(blobs)
    sizes = [(64, 64), (64, 64), (100, 80)]
    for row, dets, (w, h) in zip(served.to_dict("records"), direct, sizes, strict=True):
        assert json.loads(row["detections"]) == dets
        for d in dets:
            x, y, bw, bh = d["box"]
            assert x >= 0 and y >= 0 and x + bw <= w + 0.01 and y + bh <= h + 0.01
            assert d["label"] in labels and 0.05 <= d["score"] <= 1.0
        best = {k: max([d["score"] for d in dets if d["label"] == k], default=0.0) for k in labels}
        assert [row[k] for k in labels] == pytest.approx([best[k] for k in labels], abs=1e-6)
        assert list(row["labels"]) == predictor.over_threshold(best)


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
