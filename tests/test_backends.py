"""Protects stage-2 resizing: sizes per mode, CPU/DALI parity, lone failures, files on disk."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from PIL import Image

from pixelpipe.bench.stage2 import run_bench, synthetic_photos
from pixelpipe.imaging import resize_dali
from pixelpipe.imaging.backends import CpuBackend, get_backend
from pixelpipe.imaging.boxes import Box
from pixelpipe.imaging.decode import ImageError, encode_jpeg, load_rgb
from pixelpipe.imaging.geometry import plan
from pixelpipe.imaging.resize_cpu import VariantOutputs, finish, process_file, process_files
from pixelpipe.imaging.stage2 import Stage2Input, run_stage2, timing_stats
from pixelpipe.imaging.variants import Variant

VARIANTS = [
    Variant("large", 640, 640, "fit"),
    Variant("wide", 384, 256, "letterbox"),
    Variant("thumb", 224, 224, "stretch"),
    Variant("tiny", 160, 160, "fit"),
]
MIN_PSNR_DB = 35.0


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Photo-like JPEGs of several shapes (one smaller than a variant), a PNG and broken files."""
    folder = tmp_path_factory.mktemp("stage2-images")
    sizes = [(1280, 720), (720, 1280), (1024, 768), (300, 200)]
    photos = synthetic_photos(folder, sizes, seed=7)
    found = {f"{w}x{h}": p for (w, h), p in zip(sizes, photos, strict=True)}
    rgba = np.dstack([load_rgb(photos[2]), np.full((768, 1024), 128, np.uint8)])
    found["png"] = folder / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(found["png"])
    found["corrupt"] = folder / "corrupt.jpg"
    found["corrupt"].write_bytes(b"this is not an image at all\n" * 20)
    data = photos[0].read_bytes()
    found["truncated"] = folder / "truncated.jpg"
    found["truncated"].write_bytes(data[: len(data) // 2])
    return found


def _decode(jpeg: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(jpeg, colorspace="RGB")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def _good(paths: list[str]) -> list[VariantOutputs]:
    results = process_files(paths, VARIANTS)
    assert not [r for r in results if isinstance(r, ImageError)]
    return [r for r in results if isinstance(r, VariantOutputs)]


def test_cpu_outputs_have_each_variants_size_for_every_mode(images: dict[str, Path]) -> None:
    for key in ("1280x720", "720x1280", "300x200"):
        result = process_file(str(images[key]), VARIANTS)
        assert [o.variant.name for o in result.outputs] == [v.name for v in VARIANTS]
        for out in result.outputs:
            assert _decode(out.jpeg).shape == (out.variant.height, out.variant.width, 3)


def test_geometry_refers_to_the_original_source_not_the_reduced_decode(
    images: dict[str, Path],
) -> None:
    result = process_file(str(images["1024x768"]), [Variant("s", 160, 160, "fit")])
    (out,) = result.outputs
    assert (out.geometry.src_width, out.geometry.src_height) == (1024, 768)
    assert out.geometry == plan(1024, 768, out.variant)


def test_cpu_output_matches_a_full_resolution_resize(images: dict[str, Path]) -> None:
    full = load_rgb(images["1280x720"])
    for out in process_file(str(images["1280x720"]), VARIANTS).outputs:
        g = out.geometry
        size = (g.resized_width, g.resized_height)
        resized = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
        # Both sides through the same JPEG encoder, so only the resize path is compared.
        reference = _decode(encode_jpeg(finish(resized, g)))
        assert _psnr(_decode(out.jpeg), reference) >= MIN_PSNR_DB, out.variant.name


def test_letterbox_bars_are_black(images: dict[str, Path]) -> None:
    result = process_file(str(images["1280x720"]), [Variant("lb", 640, 640, "letterbox")])
    pixels = _decode(result.outputs[0].jpeg).astype(int)
    assert pixels[:130].mean() < 3 and pixels[-130:].mean() < 3  # pad_y is 140
    assert pixels[150:490].mean() > 30


def test_png_input_is_resized_like_a_jpeg(images: dict[str, Path]) -> None:
    result = process_file(str(images["png"]), VARIANTS)
    assert result.outputs[0].geometry.src_width == 1024
    for out in result.outputs:
        assert _decode(out.jpeg).shape == (out.variant.height, out.variant.width, 3)


def test_exif_rotated_jpeg_is_resized_upright(tmp_path: Path, images: dict[str, Path]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    path = tmp_path / "rotated.jpg"
    Image.open(images["1024x768"]).save(path, exif=exif.tobytes(), quality=90)
    (out,) = process_file(str(path), [Variant("s", 200, 100, "stretch")]).outputs
    assert (out.geometry.src_width, out.geometry.src_height) == (768, 1024)


def test_a_bad_file_fails_alone_on_the_cpu(images: dict[str, Path]) -> None:
    paths = [str(images[k]) for k in ("1280x720", "corrupt", "truncated", "1024x768")]
    results = process_files(paths, VARIANTS)
    assert isinstance(results[0], VariantOutputs) and isinstance(results[3], VariantOutputs)
    assert "not an image" in str(results[1])
    assert "truncated" in str(results[2])


def _require_dali() -> None:
    if resize_dali.available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("nvidia.dali must be importable in CI (pip install nvidia-dali-cuda120)")
    pytest.skip("nvidia.dali is not installed")


@pytest.fixture(scope="module")
def dali_cpu() -> resize_dali.DaliResizer:
    _require_dali()
    return resize_dali.DaliResizer(device="cpu", batch_size=4, num_threads=2)


def _assert_parity(cpu: list[VariantOutputs], dali: list[VariantOutputs | ImageError]) -> None:
    for ours, theirs in zip(cpu, dali, strict=True):
        assert isinstance(theirs, VariantOutputs), theirs
        for a, b in zip(ours.outputs, theirs.outputs, strict=True):
            assert a.geometry == b.geometry
            pixels_a, pixels_b = _decode(a.jpeg), _decode(b.jpeg)
            assert pixels_a.shape == pixels_b.shape == (a.variant.height, a.variant.width, 3)
            assert _psnr(pixels_a, pixels_b) >= MIN_PSNR_DB, (ours.path, a.variant.name)


def test_dali_on_cpu_matches_the_cpu_backend(
    images: dict[str, Path], dali_cpu: resize_dali.DaliResizer
) -> None:
    paths = [str(images[k]) for k in ("1280x720", "720x1280", "1024x768", "300x200", "png")]
    _assert_parity(_good(paths), dali_cpu.process(paths, VARIANTS))


def test_a_bad_file_fails_alone_in_dali(
    images: dict[str, Path], dali_cpu: resize_dali.DaliResizer
) -> None:
    paths = [str(images[k]) for k in ("1280x720", "corrupt", "truncated", "1024x768")]
    results = dali_cpu.process_batch(paths, VARIANTS)
    assert isinstance(results[0], VariantOutputs) and isinstance(results[3], VariantOutputs)
    assert "not an image" in str(results[1])
    assert "truncated" in str(results[2])


def test_gpu_mixed_decode_matches_the_cpu_backend(images: dict[str, Path]) -> None:
    _require_dali()
    if not resize_dali.cuda_available():
        pytest.skip("needs a CUDA GPU")
    gpu = resize_dali.DaliResizer(device="gpu", batch_size=4)
    paths = [str(images[k]) for k in ("1280x720", "720x1280", "1024x768", "300x200")]
    _assert_parity(_good(paths), gpu.process(paths, VARIANTS))


def test_auto_backend_is_dali_on_a_gpu_and_cpu_otherwise() -> None:
    backend = get_backend("auto", workers=1)
    expected = "dali-gpu" if resize_dali.cuda_available() else "cpu"
    assert backend.name == expected
    with pytest.raises(ValueError, match="unknown resize backend"):
        get_backend("vulkan")


def test_run_stage2_writes_variants_with_boxes_and_reports_failures(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    box = Box(label="cat", x=0, y=0, w=1280, h=360)  # top half of the 1280x720 image
    inputs = [
        Stage2Input("s3://raw/a.jpg", str(images["1280x720"]), "b-0001/cats/a__c0.jpg", [box]),
        Stage2Input("s3://raw/bad.jpg", str(images["corrupt"]), "b-0001/cats/bad__c0.jpg"),
        Stage2Input("s3://raw/c.png", str(images["png"]), "b-0001/dogs/c__c0.jpg"),
    ]
    with CpuBackend(workers=2) as backend:  # the spawn pool path
        results = run_stage2(inputs, VARIANTS, tmp_path, backend, quality=85)
    failed = [r for r in results if not r.ok]
    assert [(r.source_uri, "not an image" in (r.reason or "")) for r in failed] == [
        ("s3://raw/bad.jpg", True)
    ]
    ok = [r for r in results if r.ok]
    assert len(ok) == 2 * len(VARIANTS)
    for r in ok:
        written = (tmp_path / (r.rel_path or "")).read_bytes()
        # named by its bytes, so no later run can overwrite it with others
        stem = r.rel_key.removesuffix(".jpg")
        assert r.rel_path == f"{r.variant_name}/{stem}-{(r.sha256 or '')[:12]}.jpg"
        assert hashlib.sha256(written).hexdigest() == r.sha256 and len(written) == r.bytes
        assert Image.open(io.BytesIO(written)).size == (r.width, r.height)
    large = next(r for r in ok if r.source_uri == "s3://raw/a.jpg" and r.variant_name == "large")
    assert large.geometry is not None and large.geometry["crop_x"] == 249
    assert large.boxes == [Box(label="cat", x=0.0, y=0.0, w=640.0, h=320.0)]
    stats = timing_stats(results)
    assert stats["large"]["files"] == 2 and stats["_failed"]["files"] == 1


def test_run_stage2_refuses_keys_that_escape_the_output_folder(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    inputs = [Stage2Input("s3://raw/a.jpg", str(images["1280x720"]), "../escape.jpg")]
    with pytest.raises(ValueError, match="rel_key"):
        run_stage2(inputs, VARIANTS, tmp_path, "cpu", workers=1)


def test_bench_writes_a_csv_a_plot_and_ratio_columns(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    uploaded: list[Path] = []

    def upload(folder: Path) -> float:
        uploaded.append(folder)
        return 0.5

    paths = [images["1280x720"], images["1024x768"]]
    rows = run_bench(paths, (1, 2), repeats=1, workers=1, out_dir=tmp_path, upload=upload)
    assert [r["variant_count"] for r in rows] == [1, 2]
    assert rows[0]["cost_vs_1"] == 1.0 and rows[1]["speedup_vs_naive"] > 0
    assert rows[1]["upload_mb_s"] == pytest.approx(rows[1]["bytes_written"] / 1e6 / 0.5)
    assert len(uploaded) == 2
    assert (tmp_path / "stage2.csv").read_text().startswith("backend,")
    assert (tmp_path / "stage2.png").stat().st_size > 0


def test_run_stage2_on_dali_writes_the_same_files_and_isolates_failures(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    _require_dali()
    inputs = [
        Stage2Input("s3://raw/a.jpg", str(images["1280x720"]), "a.jpg"),
        Stage2Input("s3://raw/bad.jpg", str(images["truncated"]), "bad.jpg"),
        Stage2Input("s3://raw/d.jpg", str(images["1024x768"]), "d.jpg"),
    ]
    with get_backend("dali-cpu", workers=2) as backend:
        results = run_stage2(inputs, VARIANTS, tmp_path, backend)
    assert [r.source_uri for r in results if not r.ok] == ["s3://raw/bad.jpg"]
    ok = [r for r in results if r.ok]
    assert len(ok) == 2 * len(VARIANTS)
    for r in ok:
        written = (tmp_path / (r.rel_path or "")).read_bytes()
        assert hashlib.sha256(written).hexdigest() == r.sha256
        assert _decode(written).shape == (r.height, r.width, 3)
