"""The training loader alone: each process iterates its training shard with no model (images/s).

The same pieces training uses (dataset index -> staged images -> nested max_images subset ->
hash split -> the task's training loader for this rank's shard), so the number says how fast
data could arrive if the model cost nothing. One pass over the shard, counted from the first
batch on (that one waits for the workers to start, as training's first epoch does; a pass of
one batch counts whole).

    python -m pixelpipe.bench.loader_only --config train.json --result loader-0.json

`measure_loader` starts one such process per instance (RANK / WORLD_SIZE as torchrun sets
them; no process group is needed, since each shard is chosen by rank) and adds them up:
images/s = all counted images / the slowest process's counted seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pixelpipe.settings import Settings, load_settings
from pixelpipe.training.config import TrainConfig, resolve_device, resolve_loader
from pixelpipe.training.dataset import read_index, split_samples, stage_dataset
from pixelpipe.training.launch import LOG_TAIL_CHARS, TrainingFailed, settings_env
from pixelpipe.training.tasks import get_task
from pixelpipe.training.train import DistInfo, loader_spec, seed_everything


def one_pass(config: TrainConfig, settings: Settings, info: DistInfo) -> dict[str, Any]:
    """Iterate this process's training shard once; images and seconds after the first batch."""
    import torch

    seed_everything(config.seed)
    index = read_index(config.index_uri(settings), settings)
    staged = stage_dataset(index, settings, max_images=config.max_images)
    train, _ = split_samples(staged.samples, config.val_fraction)
    device = resolve_device(config)
    loader = resolve_loader(config, device)
    spec = loader_spec(config, index, info, device)
    batches = get_task(config.task).batches(loader, train, len(index.labels), spec, True)
    batches.set_epoch(0)
    sizes: list[int] = []
    started = first = time.perf_counter()
    for x, _ in batches:
        if not sizes:
            if device == "cuda":
                torch.cuda.synchronize()
            first = time.perf_counter()
        sizes.append(len(x))
    if device == "cuda":
        torch.cuda.synchronize()
    ended = time.perf_counter()
    if len(sizes) > 1:
        images, seconds = sum(sizes[1:]), ended - first
    else:
        images, seconds = sum(sizes), ended - started
    return {"rank": info.rank, "images": images, "seconds": seconds, "batches": len(sizes),
            "loader": loader}  # fmt: skip


def measure_loader(
    config: TrainConfig, settings: Settings, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one loader process per instance at once; all images over the slowest one's time."""
    n = config.nproc_per_node
    with tempfile.TemporaryDirectory(prefix="pixelpipe-loader-") as tmp:
        work = Path(tmp)
        config_path = config.write(work / "config.json")
        base = {**os.environ, **settings_env(settings), **(extra_env or {})}
        procs = []
        for rank in range(n):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n)}
            log = (work / f"loader-{rank}.log").open("wb")
            cmd = [sys.executable, "-m", "pixelpipe.bench.loader_only", "--config",
                   str(config_path), "--result", str(work / f"loader-{rank}.json")]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            procs.append((proc, log))
        for proc, log in procs:
            proc.wait()
            log.close()
        parts = []
        for rank, (proc, _) in enumerate(procs):
            path = work / f"loader-{rank}.json"
            if proc.returncode != 0 or not path.is_file():
                tail = (work / f"loader-{rank}.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
                raise TrainingFailed(f"loader rank {rank} exited {proc.returncode}; log:\n{tail}")
            parts.append(json.loads(path.read_text()))
    images = sum(p["images"] for p in parts)
    seconds = max(p["seconds"] for p in parts)
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "loader": parts[0]["loader"],
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m pixelpipe.bench.loader_only --config CONFIG.json --result RESULT.json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    found = one_pass(TrainConfig.read(args.config), load_settings(), DistInfo.from_env())
    args.result.write_text(json.dumps(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
