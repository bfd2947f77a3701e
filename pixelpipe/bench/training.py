"""Benchmark training (PT1): epoch time and images/s as the dataset grows, over instances.

One sweep trains on nested subsets of one prepared dataset (TrainConfig.max_images picks a
fixed, hash-ordered prefix, so the 1,000 images are among the 4,000), for every
(dataset size, instances, loader), `repeats` times with the same seed. Each point measures:

- the training epoch (wall time of the training pass, all instances; the steady epochs after
  the first, which pays for start-up), images/s and the share of step time spent waiting for
  data;
- the loader alone: the same training loader iterated with no model (pixelpipe.bench.
  loader_only), images/s; training images/s over it says how much of the loader's speed the
  model leaves unused;
- on CUDA, GPU utilisation (mean) and memory (peak) from nvidia-smi;
- scaling efficiency = images/s(n) / (n * images/s(1)) at the same dataset size.

With images_per_node, weak-scaling rows follow: each instance gets a shard of that many
images (n instances train on n * images_per_node), so ideally the epoch time stays flat.

Instances here are processes on this machine (one torchrun job each, even for one), CPU
threads cores // max(instances) each, so one instance uses the share it owns in the largest
job. Where instances outnumber the cores they share them, and the row says so: such scaling
measures contention, not what separate nodes would do. Real nodes run the same job with the
rendezvous settings of pixelpipe/training/launch.py.
"""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelpipe.bench.loader_only import measure_loader
from pixelpipe.bench.publish import write_csv
from pixelpipe.settings import Settings
from pixelpipe.training.config import (
    Device,
    LoaderName,
    ModelName,
    TaskName,
    TrainConfig,
    local_cpu_count,
    resolve_device,
    validate_launch,
)
from pixelpipe.training.dataset import read_index
from pixelpipe.training.launch import launch_torchrun
from pixelpipe.training.train import TrainResult

GPU_POLL_SECONDS = 0.5
Echo = Callable[[str], None]


class GpuSampler:
    """GPU utilisation (mean) and memory used (peak, MiB) over all GPUs; None without one."""

    QUERY = "--query-gpu=utilization.gpu,memory.used"

    def __init__(self) -> None:
        self.util: list[float] = []
        self.memory: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        query = ["nvidia-smi", self.QUERY, "--format=csv,noheader,nounits"]
        while not self._stop.wait(GPU_POLL_SECONDS):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                rows = [[float(v) for v in line.split(",")] for line in out.splitlines() if line]
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            if rows:
                self.util.append(statistics.mean(r[0] for r in rows))
                self.memory.append(sum(r[1] for r in rows))

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.util) if self.util else None

    @property
    def peak_memory(self) -> float | None:
        return max(self.memory) if self.memory else None


@dataclass(frozen=True)
class Sweep:
    """What one bench run covers."""

    images: tuple[int, ...]
    instances: tuple[int, ...] = (1, 2)
    loaders: tuple[LoaderName, ...] = ("auto",)
    epochs: int = 2
    repeats: int = 3
    images_per_node: int | None = None
    task: TaskName = "detection"
    model: ModelName = "tiny"
    batch_size: int = 16
    num_workers: int = 1
    device: Device = "auto"
    seed: int = 0

    @property
    def largest(self) -> int:
        """The most images any point trains on: the size the prepared set needs."""
        weak = (self.images_per_node or 0) * max(self.instances)
        return max(max(self.images), weak)

    def points(self) -> list[tuple[str, int, int, LoaderName]]:
        """(scaling, dataset images, instances, loader) in run order, smallest data first."""
        out = [("strong", size, n, loader) for size in sorted(set(self.images))
               for n in self.instances for loader in self.loaders]  # fmt: skip
        if self.images_per_node:
            out += [("weak", self.images_per_node * n, n, loader)
                    for n in self.instances for loader in self.loaders]  # fmt: skip
        return out


def _steady(result: TrainResult) -> dict[str, float]:
    """Per-run numbers from the epochs after the first (which pays for start-up)."""
    epochs = result.epochs[1:] or result.epochs
    return {
        "epoch_s": statistics.median(e.train_seconds for e in epochs),
        "epoch_with_val_s": statistics.median(e.epoch_seconds for e in epochs),
        "images_per_s": statistics.median(e.images_per_s for e in epochs),
        "data_wait_fraction": statistics.median(e.data_wait_fraction for e in epochs),
    }


def _spread(name: str, values: Sequence[float]) -> dict[str, float]:
    return {
        f"{name}_median": round(statistics.median(values), 4),
        f"{name}_min": round(min(values), 4),
        f"{name}_max": round(max(values), 4),
    }


def _measure(
    settings: Settings, config: TrainConfig, repeats: int, threads: int | None
) -> dict[str, Any]:
    """Train and iterate the loader `repeats` times with the same seed; medians and ranges."""
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    runs: list[dict[str, float]] = []
    loader_rates: list[float] = []
    util: list[float] = []
    memory: list[float] = []
    result: TrainResult | None = None
    for _ in range(repeats):
        with GpuSampler() as sampler:
            result = launch_torchrun(config, settings, extra_env=env)
        runs.append(_steady(result))
        if sampler.mean is not None and sampler.peak_memory is not None:
            util.append(sampler.mean)
            memory.append(sampler.peak_memory)
        loader_rates.append(measure_loader(config, settings, env)["images_per_s"])
    assert result is not None
    row: dict[str, Any] = {
        "loader": result.loader,
        "device": result.device,
        "train_images": result.train_images,
        "images_per_node": round(result.train_images / config.nproc_per_node, 1),
    }
    for key in ("epoch_s", "images_per_s", "data_wait_fraction"):
        row.update(_spread(key, [r[key] for r in runs]))
    with_val = statistics.median(r["epoch_with_val_s"] for r in runs)
    row["epoch_with_val_s_median"] = round(with_val, 4)
    row.update(_spread("loader_images_per_s", loader_rates))
    loader_median = row["loader_images_per_s_median"]
    row["training_vs_loader"] = (
        round(row["images_per_s_median"] / loader_median, 3) if loader_median else ""
    )
    row["gpu_util_pct"] = round(statistics.mean(util), 1) if util else ""
    row["gpu_mem_mib"] = round(max(memory)) if memory else ""
    return row


def check_sweep(sweep: Sweep, settings: Settings, variant: str) -> tuple[TrainConfig, int | None]:
    """The base config and CPU threads per instance; LaunchError / ValueError say what is wrong."""
    base = TrainConfig(
        variant=variant,
        task=sweep.task,
        model=sweep.model,
        epochs=sweep.epochs,
        batch_size=sweep.batch_size,
        num_workers=sweep.num_workers,
        device=sweep.device,
        loader=sweep.loaders[0],
        track=False,
        seed=sweep.seed,
        nproc_per_node=max(sweep.instances),
    )
    cpu = resolve_device(base) == "cpu"
    cores = local_cpu_count()
    # on CPU more instances than cores may share them (the rows say so); GPUs cannot be shared
    checked = base.model_copy(update={"nproc_per_node": min(max(sweep.instances), cores)})
    validate_launch(checked if cpu else base, settings)
    for loader in sweep.loaders[1:]:
        validate_launch(base.model_copy(update={"loader": loader, "nproc_per_node": 1}), settings)
    available = read_index(base.index_uri(settings), settings).images
    too_big = sorted({s for s in sweep.images if s > available} | (
        {sweep.largest} if sweep.largest > available else set()))  # fmt: skip
    if too_big:
        raise ValueError(
            f"dataset sizes {too_big}: expected at most {available}, the images of variant "
            f"{variant!r}"
        )
    small = [s for s in sweep.images if s < 2 * max(sweep.instances)]
    if small:
        raise ValueError(
            f"--images {small}: expected at least {2 * max(sweep.instances)} "
            f"(two per instance, so every instance has a training shard)"
        )
    threads = max(1, cores // max(sweep.instances)) if cpu else None
    return base, threads


def run_sweep(
    settings: Settings,
    variant: str,
    sweep: Sweep,
    out_dir: str | Path,
    echo: Echo = print,
) -> list[dict[str, Any]]:
    """Every point of the sweep as a row; writes training.csv, growth.csv and the plots."""
    from pixelpipe.bench.training_plots import plot_all

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base, threads = check_sweep(sweep, settings, variant)
    cores = local_cpu_count()
    if resolve_device(base) == "cpu" and max(sweep.instances) * (threads or 1) > cores:
        echo(
            f"note: {cores} CPU cores here; instances above {cores} share them, so their rows "
            "show contention for cores, not what separate nodes would do"
        )
    rows: list[dict[str, Any]] = []
    for scaling, size, n, loader in sweep.points():
        config = base.model_copy(update={"nproc_per_node": n, "max_images": size, "loader": loader})
        row: dict[str, Any] = {"scaling": scaling, "images": size, "instances": n}
        row.update(_measure(settings, config, sweep.repeats, threads))
        shared = resolve_device(base) == "cpu" and n * (threads or 1) > cores
        row.update({
            "task": sweep.task, "model": sweep.model, "batch_size": sweep.batch_size,
            "epochs": sweep.epochs, "repeats": sweep.repeats, "seed": sweep.seed,
            "threads_per_instance": threads or "", "cpu_cores": cores,
            "shares_cores": f"{n} instances on {cores} cores" if shared else "",
        })  # fmt: skip
        rows.append(row)
        echo(
            f"{scaling} {size} images x {n} instance(s), {row['loader']}: epoch "
            f"{row['epoch_s_median']:.2f} s, {row['images_per_s_median']:.1f} images/s, "
            f"loader alone {row['loader_images_per_s_median']:.1f} images/s"
        )
    add_scaling(rows)
    write_csv(out / "training.csv", rows)
    growth_rows = growth(rows)
    if growth_rows:
        write_csv(out / "growth.csv", growth_rows)
    plot_all(rows, out)
    return rows


def add_scaling(rows: list[dict[str, Any]]) -> None:
    """scaling_efficiency = images/s(n) / (n * images/s(1)) at the same size (weak: per node)."""

    def group(row: dict[str, Any]) -> tuple[Any, ...]:
        size = row["images"] // row["instances"] if row["scaling"] == "weak" else row["images"]
        return row["scaling"], size, row["loader"]

    ones = {group(r): r["images_per_s_median"] for r in rows if r["instances"] == 1}
    for row in rows:
        one = ones.get(group(row))
        row["scaling_efficiency"] = (
            round(row["images_per_s_median"] / (row["instances"] * one), 3) if one else ""
        )


def growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch-time growth per doubling of the dataset, 2**slope of log2(time) on log2(images)."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r["instances"], r["loader"]) for r in rows if r["scaling"] == "strong"})
    for n, loader in keys:
        sel = sorted(
            (r["images"], r["epoch_s_median"])
            for r in rows
            if (r["scaling"], r["instances"], r["loader"]) == ("strong", n, loader)
        )
        if len(sel) < 2 or any(t <= 0 for _, t in sel):
            continue
        xs = [math.log2(s) for s, _ in sel]
        ys = [math.log2(t) for _, t in sel]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        out.append({
            "instances": n, "loader": loader, "sizes": "/".join(str(s) for s, _ in sel),
            "epoch_growth_per_doubling": round(2**slope, 3),
        })  # fmt: skip
    return out


def mlflow_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The headline numbers of every row (and the growth per doubling) as MLflow metrics."""
    metrics: dict[str, float] = {}
    for r in rows:
        name = f"{r['scaling']}.{r['images']}img.{r['instances']}inst.{r['loader']}"
        for key in ("epoch_s_median", "images_per_s_median", "loader_images_per_s_median",
                    "data_wait_fraction_median", "scaling_efficiency"):  # fmt: skip
            if isinstance(r.get(key), int | float):
                metrics[f"{name}.{key}"] = float(r[key])
    for g in growth(rows):
        metrics[f"growth.{g['instances']}inst.{g['loader']}"] = g["epoch_growth_per_doubling"]
    return metrics
