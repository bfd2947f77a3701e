"""Benchmark stage 2: images/s for 1..5 variants against a naive Pillow baseline, CSV + plot."""

from __future__ import annotations

import io
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pixelpipe.bench.publish import write_csv
from pixelpipe.imaging.backends import CpuBackend, DaliBackend, get_backend
from pixelpipe.imaging.geometry import PAD_VALUE, plan
from pixelpipe.imaging.stage2 import Stage2Input, run_stage2
from pixelpipe.imaging.variants import Variant

_SIDES: dict[int, tuple[int, ...]] = {
    1: (640,),
    2: (224, 640),
    3: (224, 384, 640),
    5: (160, 224, 384, 512, 640),
}
Upload = Callable[[Path], float]
# A small mix: two camera-sized photos, then typical web/stage-1 sizes.
DEFAULT_MIX: tuple[tuple[int, int], ...] = (
    (4000, 3000),
    (3000, 4000),
    (1920, 1080),
    (1280, 720),
    (1280, 960),
    (1024, 768),
    (800, 600),
    (720, 1280),
)


def variant_set(count: int) -> list[Variant]:
    """The fixed square fit-mode variant set benchmarked for a given variant count."""
    if count not in _SIDES:
        raise ValueError(f"no fixed variant set of {count}; choose from {sorted(_SIDES)}")
    return [Variant(f"s{side}", side, side, "fit") for side in _SIDES[count]]


def run_bench(
    image_paths: Sequence[str | Path],
    variant_counts: Sequence[int] = (1, 2, 3, 5),
    repeats: int = 3,
    workers: int | None = None,
    backend: str = "cpu",
    out_dir: str | Path = "bench-out/stage2",
    quality: int = 90,
    naive: bool = True,
    naive_repeats: int | None = None,
    upload: Upload | None = None,
    warmups: int = 2,
) -> list[dict[str, Any]]:
    """Time our backend and the naive baseline per variant count; write stage2.csv and stage2.png.

    upload, when given, is called with the folder of the last repeat's outputs and returns the
    seconds it took; the row then carries upload_mb_s (bytes written / those seconds).
    Each variant count gets `warmups` untimed passes first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [str(p) for p in image_paths]
    rows: list[dict[str, Any]] = []
    engine = get_backend(backend, workers)
    try:
        engine.warm_up()
        for count in variant_counts:
            row = _bench_count(engine, paths, count, repeats, out, quality, upload, warmups)
            if naive:
                row.update(_bench_naive(paths, count, naive_repeats or repeats, out, quality))
            rows.append(row)
    finally:
        engine.close()
    _add_ratios(rows)
    write_csv(out / "stage2.csv", rows)
    plot(rows, out / "stage2.png")
    return rows


def _bench_count(
    engine: CpuBackend | DaliBackend,
    paths: list[str],
    count: int,
    repeats: int,
    out: Path,
    quality: int,
    upload: Upload | None,
    warmups: int,
) -> dict[str, Any]:
    variants = variant_set(count)
    seconds, write_rates = [], []
    work = out / f"ours-{count}"
    written = 0
    for _ in range(warmups):  # DALI builds a graph per variant set and grows its buffers
        _time_ours(engine, paths, variants, work, quality)
    for _ in range(repeats):
        elapsed, written, write_s = _time_ours(engine, paths, variants, work, quality)
        seconds.append(elapsed)
        write_rates.append(written / 1e6 / write_s if write_s > 0 else 0.0)
    row: dict[str, Any] = {
        "backend": engine.name,
        "workers": engine.workers,
        "variant_count": count,
        "variants": ",".join(v.spec() for v in variants),
        "images": len(paths),
        "repeats": repeats,
        "bytes_written": written,
        "write_mb_s_median": statistics.median(write_rates),
        **_spread("seconds", seconds),
        **_spread("images_per_s", [len(paths) / s for s in seconds]),
    }
    if upload is not None:
        upload_s = upload(work)
        row["upload_seconds"] = upload_s
        row["upload_mb_s"] = written / 1e6 / upload_s if upload_s > 0 else None
    return row


def _time_ours(
    engine: CpuBackend | DaliBackend,
    paths: list[str],
    variants: list[Variant],
    work: Path,
    quality: int,
) -> tuple[float, int, float]:
    """(wall seconds, bytes written, seconds spent writing) for one pass over the image set."""
    shutil.rmtree(work, ignore_errors=True)
    inputs = [Stage2Input(p, p, f"{i:05d}.jpg") for i, p in enumerate(paths)]
    start = time.perf_counter()
    results = run_stage2(inputs, variants, work, engine, quality)
    elapsed = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"benchmark image failed: {failed[0].source_uri}: {failed[0].reason}")
    return elapsed, sum(r.bytes for r in results), sum(r.write_seconds for r in results)


def _bench_naive(
    paths: list[str], count: int, repeats: int, out: Path, quality: int
) -> dict[str, Any]:
    variants = variant_set(count)
    work = out / f"naive-{count}"
    seconds = []
    for _ in range(repeats):
        shutil.rmtree(work, ignore_errors=True)
        start = time.perf_counter()
        naive_pass(paths, variants, work, quality)
        seconds.append(time.perf_counter() - start)
    return {
        **_spread("naive_seconds", seconds),
        "naive_images_per_s_median": len(paths) / statistics.median(seconds),
    }


def naive_pass(paths: Sequence[str], variants: Sequence[Variant], work: Path, quality: int) -> None:
    """The baseline: for every variant open and fully decode the file again, resize, encode."""
    for i, path in enumerate(paths):
        for variant in variants:
            dest = work / variant.name / f"{i:05d}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(naive_variant(path, variant, quality))


def naive_variant(path: str, variant: Variant, quality: int) -> bytes:
    """One variant the straightforward Pillow way (full decode, bicubic resize, crop/pad)."""
    with Image.open(path) as opened:
        im = ImageOps.exif_transpose(opened).convert("RGB")
    geom = plan(im.width, im.height, variant)
    im = im.resize((geom.resized_width, geom.resized_height), Image.Resampling.BICUBIC)
    if geom.mode == "fit":
        im = im.crop(
            (geom.crop_x, geom.crop_y, geom.crop_x + geom.width, geom.crop_y + geom.height)
        )
    elif geom.mode == "letterbox":
        canvas = Image.new("RGB", (geom.width, geom.height), (PAD_VALUE,) * 3)
        canvas.paste(im, (geom.pad_x, geom.pad_y))
        im = canvas
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def _spread(name: str, values: Sequence[float]) -> dict[str, float]:
    return {
        f"{name}_median": statistics.median(values),
        f"{name}_min": min(values),
        f"{name}_max": max(values),
    }


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup_vs_naive per row, and cost_vs_1 = seconds(k) / seconds(1 variant)."""
    base = next((r["seconds_median"] for r in rows if r["variant_count"] == 1), None)
    for row in rows:
        naive_s = row.get("naive_seconds_median")
        row["speedup_vs_naive"] = naive_s / row["seconds_median"] if naive_s else None
        row["cost_vs_1"] = row["seconds_median"] / base if base else None


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """images/s (median, min-max bars) vs variant count for ours and naive; cost vs 1 variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["variant_count"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _errorbar(left, rows, counts, "images_per_s", rows[0]["backend"] if rows else "ours")
    if rows and "naive_seconds_median" in rows[0]:
        naive_rate = [[r["images"] / r[f"naive_seconds_{k}"] for r in rows] for k in _BOUNDS]
        left.errorbar(counts, naive_rate[0], yerr=_yerr(naive_rate), marker="s", label="naive")
    left.set(xlabel="variants per image", ylabel="images / s", title="Stage 2 throughput")
    left.legend()
    right.plot(counts, [r["cost_vs_1"] or 0 for r in rows], marker="o")
    right.axhline(1.25, linestyle="--", color="grey", label="1.25x goal")
    right.set(xlabel="variants per image", ylabel="time / time(1 variant)", title="Marginal cost")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# median first, then the bounds of the spread (rate = images / seconds, so min<->max swap).
_BOUNDS = ("median", "max", "min")


def _errorbar(ax: Any, rows: list[dict[str, Any]], counts: list[int], key: str, label: str) -> None:
    rate = [[r[f"{key}_{k}"] for r in rows] for k in ("median", "min", "max")]
    ax.errorbar(counts, rate[0], yerr=_yerr(rate), marker="o", label=label)


def _yerr(rate: list[list[float]]) -> np.ndarray:
    median, low, high = (np.asarray(r) for r in rate)
    return np.vstack([median - low, high - median])


def synthetic_photos(
    out_dir: str | Path, sizes: Sequence[tuple[int, int]], seed: int = 0, quality: int = 92
) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields plus fine grain, so file sizes are realistic)."""
    import cv2
    import simplejpeg

    rng = np.random.default_rng(seed)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height) in enumerate(sizes):
        image = np.zeros((height, width, 3), np.float32)
        for cells, weight in ((4, 90.0), (32, 40.0), (256, 15.0)):
            coarse = rng.normal(0, weight, (cells * height // width + 2, cells + 2, 3))
            layer = cv2.resize(coarse.astype(np.float32), (width, height))
            image += np.asarray(layer, np.float32)  # cv2 types its result as any-depth
        image += rng.normal(0, 4, image.shape).astype(np.float32)
        rgb = np.clip(image + 128, 0, 255).astype(np.uint8)
        path = folder / f"synthetic-{i:03d}-{width}x{height}.jpg"
        path.write_bytes(simplejpeg.encode_jpeg(rgb, quality=quality, colorsubsampling="420"))
        paths.append(path)
    return paths
