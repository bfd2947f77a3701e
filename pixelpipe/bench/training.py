"""Benchmark training: epoch time, images/s, data-wait share and scaling over instances.

For each size variant (a dataset index in S3) and each instance count, the bench trains
`repeats` times on the real images and, in the same run, on random in-memory tensors of the
same shapes (synthetic: the compute-only baseline, no loading). Every run is a fresh
torchrun job (one process per instance, even for one), so runs are alike and isolated.

Instances here are processes on this machine: on CPU each gets cores // max(instances)
threads, so one instance uses the share of the machine that it would own in the largest
job, and scaling efficiency = images/s(n) / (n * images/s(1)). Real multi-node training runs
the same code, one torchrun per machine (see pixelpipe/training/launch.py); there each
instance brings its own cores/GPU and the same efficiency column applies.

    python -m pixelpipe.bench.training --sizes small --instances 1,2 --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pixelpipe.settings import Settings, load_settings
from pixelpipe.training.config import (
    ModelName,
    TaskName,
    TrainConfig,
    local_cpu_count,
    resolve_device,
    validate_launch,
)
from pixelpipe.training.launch import launch_torchrun
from pixelpipe.training.train import TrainResult

GPU_POLL_SECONDS = 0.5
Publish = Callable[[Path], None]


class GpuSampler:
    """Average GPU utilisation (nvidia-smi, all GPUs) while running; None without a GPU."""

    def __init__(self) -> None:
        self.samples: list[float] = []
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
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(GPU_POLL_SECONDS):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                values = [float(v) for v in out.split() if v.strip()]
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            if values:
                self.samples.append(statistics.mean(values))

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def _steady(result: TrainResult) -> dict[str, float]:
    """Per-run numbers from the epochs after the first (which pays for start-up)."""
    epochs = result.epochs[1:] or result.epochs
    return {
        "epoch_s": statistics.median(e.train_seconds for e in epochs),
        "images_per_s": statistics.median(e.images_per_s for e in epochs),
        "data_wait_fraction": statistics.median(e.data_wait_fraction for e in epochs),
    }


def _spread(name: str, values: Sequence[float]) -> dict[str, float]:
    return {
        f"{name}_median": statistics.median(values),
        f"{name}_min": min(values),
        f"{name}_max": max(values),
    }


def _one_setting(
    settings: Settings, config: TrainConfig, repeats: int, threads: int | None
) -> dict[str, Any]:
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    runs: list[dict[str, float]] = []
    gpu: list[float] = []
    result: TrainResult | None = None
    for repeat in range(repeats):
        with GpuSampler() as sampler:
            result = launch_torchrun(
                config.model_copy(update={"seed": config.seed + repeat}), settings, extra_env=env
            )
        runs.append(_steady(result))
        if sampler.mean is not None:
            gpu.append(sampler.mean)
    assert result is not None
    row: dict[str, Any] = {
        "device": result.device,
        "loader": result.loader,
        "train_images": result.train_images,
        "threads_per_instance": threads or "",
    }
    for key in ("epoch_s", "images_per_s", "data_wait_fraction"):
        row.update(_spread(key, [r[key] for r in runs]))
    row["gpu_util_pct"] = round(statistics.mean(gpu), 1) if gpu else ""
    return row


def run_bench(
    settings: Settings,
    sizes: Sequence[str] = ("small",),
    instances: Sequence[int] = (1, 2),
    epochs: int = 3,
    repeats: int = 3,
    out_dir: str | Path = "bench-out/training",
    loader: str = "auto",
    *,
    model: ModelName = "small",
    task: TaskName = "detection",
    batch_size: int = 64,
    num_workers: int = 1,
    max_images: int | None = None,
    device: str = "auto",
    publish: Publish | None = None,
) -> list[dict[str, Any]]:
    """Benchmark every (size, instances, real|synthetic); write training.csv and training.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        base = TrainConfig(
            variant=size,
            task=task,
            model=model,
            epochs=epochs,
            batch_size=batch_size,
            num_workers=num_workers,
            max_images=max_images,
            device=device,  # type: ignore[arg-type]
            loader=loader,  # type: ignore[arg-type]
            track=False,
            nproc_per_node=max(instances),
        )
        validate_launch(base, settings)  # the largest job must fit before any run starts
        cpu = resolve_device(base) == "cpu"
        threads = max(1, local_cpu_count() // max(instances)) if cpu else None
        for n in instances:
            for data in ("real", "synthetic"):
                config = base.model_copy(
                    update={"nproc_per_node": n, "synthetic_data": data == "synthetic"}
                )
                row = {"variant": size, "task": task, "model": model, "data": data, "instances": n}
                row.update(_one_setting(settings, config, repeats, threads))
                row["repeats"], row["epochs"], row["batch_size"] = repeats, epochs, batch_size
                rows.append(row)
    _add_scaling(rows)
    write_csv(rows, out / "training.csv")
    plot(rows, out / "training.png")
    if publish is not None:
        publish(out)
    return rows


def _add_scaling(rows: list[dict[str, Any]]) -> None:
    """scaling_efficiency = images/s(n) / (n * images/s(1)) within each variant and data kind."""
    for row in rows:
        one = next(
            (
                r["images_per_s_median"]
                for r in rows
                if (r["variant"], r["data"], r["instances"]) == (row["variant"], row["data"], 1)
            ),
            None,
        )
        row["scaling_efficiency"] = (
            round(row["images_per_s_median"] / (row["instances"] * one), 3) if one else ""
        )


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """images/s (median, min-max bars) and data-wait share vs instances, per variant and data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    groups = sorted({(r["variant"], r["data"]) for r in rows})
    for variant, data in groups:
        sel = [r for r in rows if (r["variant"], r["data"]) == (variant, data)]
        xs = [r["instances"] for r in sel]
        med = [r["images_per_s_median"] for r in sel]
        err = [
            [m - r["images_per_s_min"] for m, r in zip(med, sel, strict=True)],
            [r["images_per_s_max"] - m for m, r in zip(med, sel, strict=True)],
        ]
        style = "--" if data == "synthetic" else "-"
        left.errorbar(xs, med, yerr=err, marker="o", linestyle=style, label=f"{variant} {data}")
        if data == "real":
            waits = [r["data_wait_fraction_median"] for r in sel]
            right.plot(xs, waits, marker="o", label=variant)
    ticks = sorted({r["instances"] for r in rows})
    left.set_xticks(ticks)
    right.set_xticks(ticks)
    left.set(xlabel="instances", ylabel="images / s (all instances)", title="Training throughput")
    left.legend()
    right.set(xlabel="instances", ylabel="share of step time", title="Waiting for data (real)")
    right.set_ylim(0, 1)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """python -m pixelpipe.bench.training [--sizes small,medium] [--instances 1,2] ..."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--sizes", default="small")
    parser.add_argument("--instances", default="1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench-out/training")
    parser.add_argument("--loader", default="auto", choices=["auto", "torch", "dali"])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    rows = run_bench(
        load_settings(),
        sizes=args.sizes.split(","),
        instances=[int(n) for n in args.instances.split(",")],
        epochs=args.epochs,
        repeats=args.repeats,
        out_dir=args.out,
        loader=args.loader,
        model=args.model,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_images=args.max_images,
        device=args.device,
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
