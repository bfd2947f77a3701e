"""Train the detector (or the image classifier): one process, or each process of a torchrun job.

One process (what `launch` does for nodes * nproc_per_node == 1), from Python:

    from pixelpipe.training.config import TrainConfig
    from pixelpipe.training.train import run_training
    from pixelpipe.settings import load_settings
    result = run_training(TrainConfig(variant="small", model="small", epochs=10), load_settings())

From a shell, with the config as JSON (every TrainConfig field; unset ones take defaults):

    echo '{"variant": "small", "model": "tiny", "epochs": 3}' > train.json
    python -m pixelpipe.training.train --config train.json --result result.json

Two processes on this machine (CPU: gloo; GPU: NCCL, one process per GPU):

    torchrun --standalone --nproc-per-node 2 -m pixelpipe.training.train \\
        --config train.json --result result.json

Several machines: see pixelpipe/training/launch.py. Under torchrun every process stages the
dataset (a file lock makes that happen once per machine), trains its DistributedSampler shard
under DDP and all-reduces validation counts; rank 0 alone talks to MLflow, then broadcasts the
result, which local rank 0 of every machine writes to --result.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pixelpipe.settings import Settings, load_settings
from pixelpipe.training.config import TrainConfig, resolve_device, resolve_loader
from pixelpipe.training.dataset import (
    DatasetIndex,
    TrainData,
    cap_samples,
    index_samples,
    read_index,
    split_samples,
    stage_dataset,
)
from pixelpipe.training.distributed import DistInfo, all_max, all_sum, init_distributed
from pixelpipe.training.loaders import Batches, LoaderSpec
from pixelpipe.training.metrics import EpochMetrics, TrainResult, final_metrics
from pixelpipe.training.model import count_parameters
from pixelpipe.training.tasks import Task, TaskData, get_task
from pixelpipe.training.tracking import finish_tracking, start_tracking

__all__ = ["DistInfo", "EpochMetrics", "TrainResult", "main", "run_training"]

log = logging.getLogger("pixelpipe.training")
WARMUP_FRACTION = 0.05
GRAD_CLIP = 10.0


# --- one epoch -------------------------------------------------------------------------------
@dataclass
class _Totals:
    loss: float = 0.0
    images: int = 0
    wait: float = 0.0
    busy: float = 0.0


def _timed(batches: Batches, totals: _Totals) -> Iterator[tuple[torch.Tensor, Any]]:
    """Yield batches, adding the time spent blocked on the loader to totals.wait."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        totals.wait += time.perf_counter() - started
        yield batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # so GPU time counts as compute, not as the next wait


def _autocast(device: torch.device, amp: bool) -> Any:
    enabled = amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    amp: bool,
    step: Callable[[nn.Module, torch.Tensor, Any], torch.Tensor],
) -> _Totals:
    """One pass over this process's shard; returns local sums (loss, images, wait, busy)."""
    model.train()
    totals = _Totals()
    loss_sum = torch.zeros((), device=device)
    for images, targets in _timed(batches, totals):
        started = time.perf_counter()
        with _autocast(device, amp):
            loss = step(model, images, targets)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # loss.backward(), which torch leaves unannotated
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(images)
        totals.images += len(images)
        _sync(device)
        totals.busy += time.perf_counter() - started
    totals.loss = float(loss_sum)
    return totals


# --- setup -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Linear warm-up over the first steps, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _load_data(config: TrainConfig, settings: Settings) -> TrainData:
    index = read_index(config.index_uri(settings), settings)
    started = time.perf_counter()
    if config.synthetic_data:
        samples = cap_samples(index_samples(index, settings), config.max_images)
    else:
        samples = stage_dataset(index, settings, max_images=config.max_images).samples
    train, val = split_samples(samples, config.val_fraction)
    return TrainData(index, train, val, time.perf_counter() - started)


# --- the run ---------------------------------------------------------------------------------
def run_training(
    config: TrainConfig, settings: Settings, result_path: Path | None = None
) -> TrainResult:
    """Train, validate every epoch, and (rank 0, config.track) log + register in MLflow."""
    started = time.perf_counter()
    info = DistInfo.from_env()
    device_name = resolve_device(config)
    distributed = init_distributed(info, device_name)
    try:
        result = _run(config, settings, info, device_name, distributed, started)
        if distributed:
            box = [result.to_dict() if info.is_main else None]
            dist.broadcast_object_list(box, src=0)
            result = TrainResult.from_dict(box[0])  # type: ignore[arg-type]
    finally:
        if distributed:
            dist.destroy_process_group()
    if result_path is not None and info.local_rank == 0:
        tmp = Path(f"{result_path}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
        tmp.replace(result_path)
    return result


@dataclass
class _Trainer:
    """Everything one process trains with, built once per run."""

    config: TrainConfig
    model: nn.Module  # what steps run through: DDP-wrapped when distributed
    net: nn.Module  # the bare network: evaluation and export
    train_batches: Batches
    val_batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    distributed: bool
    task: Task
    data: TaskData
    thresholds: dict[str, float] = field(default_factory=dict)

    def epoch(self, epoch: int) -> EpochMetrics:
        """Train one epoch, then validate; numbers summed over all processes."""
        cfg, started = self.config, time.perf_counter()
        self.train_batches.set_epoch(epoch)
        totals = train_epoch(
            self.model,
            self.train_batches,
            self.optimizer,
            self.scheduler,
            self.device,
            cfg.amp,
            self.task.step,
        )
        wall = all_max(time.perf_counter() - started, self.distributed)
        loss, images, wait, busy = all_sum(
            [totals.loss, totals.images, totals.wait, totals.busy], self.distributed
        )
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss / max(1.0, images),
            images_per_s=images / wall if wall > 0 else 0.0,
            data_wait_fraction=wait / (wait + busy) if wait + busy > 0 else 0.0,
            train_seconds=wall,
            epoch_seconds=0.0,
            lr=float(self.optimizer.param_groups[0]["lr"]),
        )
        if not cfg.synthetic_data:
            self._validate(metrics)
        metrics.epoch_seconds = all_max(time.perf_counter() - started, self.distributed)
        return metrics

    def _validate(self, metrics: EpochMetrics) -> None:
        # the bare network: DDP's forward syncs buffers, a collective that ranks with
        # unequal validation shards could not all join
        found = self.task.validate(
            self.net, self.val_batches, self.data, self.device, self.config.amp
        )
        metrics.val_loss = found.loss
        values = dict(found.metrics)
        metrics.val_f1_macro = values.pop("val_f1_macro", None)
        metrics.val_map = values.pop("val_map", None)
        metrics.val_map50 = values.pop("val_map50", None)
        metrics.baseline_f1_macro = values.pop("baseline_f1_macro", None)
        metrics.extra = values
        self.thresholds = found.thresholds


def loader_spec(
    config: TrainConfig, index: DatasetIndex, info: DistInfo, device: str
) -> LoaderSpec:
    """What every loader of this process gets: the index's input size, the run's batching."""
    return LoaderSpec(
        width=index.width,
        height=index.height,
        mode=index.mode,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        device=device,
        device_id=info.local_rank,
        rank=info.rank,
        world_size=info.world_size,
        seed=config.seed,
    )


def _build(
    config: TrainConfig, data: TrainData, info: DistInfo, device_name: str, distributed: bool
) -> tuple[_Trainer, str]:
    cuda = device_name == "cuda"
    device = torch.device(device_name, info.local_rank) if cuda else torch.device(device_name)
    labels = data.index.labels
    task = get_task(config.task)
    loader = "synthetic" if config.synthetic_data else resolve_loader(config, device_name)
    spec = loader_spec(config, data.index, info, device_name)
    train_batches = task.batches(loader, data.train, len(labels), spec, True)
    val_batches = task.batches(loader, data.val, len(labels), spec, False)
    net = task.build(config.model, len(labels)).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # Module.to takes memory_format at run time; torch's overloads leave it out
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model: nn.Module = net
    if distributed:
        ids = [info.local_rank] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = _schedule(optimizer, config.epochs * max(1, len(train_batches)))
    task_data = TaskData(labels, data.train, data.val, distributed)
    trainer = _Trainer(
        config,
        model,
        net,
        train_batches,
        val_batches,
        optimizer,
        scheduler,
        device,
        distributed,
        task,
        task_data,
    )
    return trainer, loader


def _run(
    config: TrainConfig,
    settings: Settings,
    info: DistInfo,
    device_name: str,
    distributed: bool,
    started: float,
) -> TrainResult:
    seed_everything(config.seed)
    data = _load_data(config, settings)
    trainer, loader = _build(config, data, info, device_name, distributed)
    labels = data.index.labels
    tracker = start_tracking(config, settings, data, info, loader, device_name, trainer.net)
    try:
        epochs: list[EpochMetrics] = []
        for epoch in range(config.epochs):
            epochs.append(trainer.epoch(epoch))
            values = epochs[-1].values()
            if tracker is not None:
                tracker.log_metrics(values, epoch)
            if info.is_main:
                log.info("epoch %s", json.dumps({k: round(v, 4) for k, v in values.items()}))
        result = TrainResult(
            run_id=None,
            model_version=None,
            run_url=None,
            model_uri=None,
            metrics=final_metrics(epochs),
            epochs=epochs,
            labels=labels,
            task=config.task,
            thresholds=trainer.thresholds,
            dataset_uri=data.index.uri,
            dataset_digest=data.index.digest,
            world_size=info.world_size,
            device=device_name,
            loader=loader,
            model=config.model,
            num_parameters=count_parameters(trainer.net),
            train_images=len(data.train),
            val_images=len(data.val),
            stage_seconds=data.stage_seconds,
        )
        if tracker is not None:
            finish_tracking(tracker, config, data, trainer.net, result)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    result.total_seconds = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m pixelpipe.training.train --config CONFIG.json [--result RESULT.json]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig as JSON")
    parser.add_argument("--result", type=Path, default=None, help="where to write the result")
    args = parser.parse_args(argv)
    # torchrun stops the other workers with SIGTERM when one fails: unwind so rank 0 marks
    # its MLflow run FAILED instead of leaving it RUNNING
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run_training(TrainConfig.read(args.config), load_settings(), args.result)
    if DistInfo.from_env().is_main:
        print(json.dumps(result.metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
