"""Validate a training config, then run it in-process or as a torchrun job (1 to N machines).

`launch(config, settings)` checks everything first (`validate_launch`), then:
- nodes * nproc_per_node == 1: trains in this process;
- otherwise: runs `torchrun ... -m pixelpipe.training.train --config C.json --result R.json`
  and returns the result that rank 0 broadcast (local rank 0 of this machine wrote it).

One machine, K processes (CPU: K <= cores, gloo; GPU: K <= GPUs, NCCL): `--standalone`
rendezvous on a free local port, so concurrent jobs never collide.

Several machines: run the same launch on every machine, with the same `nodes`, `rdzv_id`
and `rdzv_endpoint` (HOST:PORT of a machine all can reach, usually node 0's), and each its own
`node_rank`. The command each machine runs (1, 2, 4 or 8 instances; K = GPUs per instance):

    torchrun --nnodes N --nproc-per-node K --node-rank R \\
        --rdzv-backend c10d --rdzv-endpoint node0.internal:29500 --rdzv-id pixelpipe-run-42 \\
        -m pixelpipe.training.train --config train.json --result result.json

    N=1: the one machine (or simply nproc_per_node=K with nodes=1: standalone);
    N=2: machines R=0 and R=1;  N=4: R=0..3;  N=8: R=0..7.

The world size is N*K; each process trains its DistributedSampler shard, gradients are
all-reduced by DDP, and rank 0 alone logs to MLflow. Every machine stages the dataset onto
its own NVME_ROOT. The same code runs as separate processes on one machine, which is how the
tests and `pixelpipe.bench.training` exercise it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pixelpipe.settings import Settings
from pixelpipe.training.config import TrainConfig, validate_launch
from pixelpipe.training.train import TrainResult, run_training

LOG_TAIL_CHARS = 4000


class TrainingFailed(RuntimeError):
    """A torchrun job exited non-zero; the message ends with the tail of its log."""


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, so child processes read exactly these."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def torchrun_command(config: TrainConfig, config_path: Path, result_path: Path) -> list[str]:
    """The torchrun invocation for this machine (standalone when there is one machine)."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if config.nodes == 1:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        cmd += [
            "--nnodes", str(config.nodes),
            "--node-rank", str(config.node_rank),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", config.rdzv_endpoint,
            "--rdzv-id", config.rdzv_id,
        ]  # fmt: skip
    cmd += ["--nproc-per-node", str(config.nproc_per_node)]
    return cmd + [
        "-m", "pixelpipe.training.train",
        "--config", str(config_path),
        "--result", str(result_path),
    ]  # fmt: skip


def launch(
    config: TrainConfig,
    settings: Settings,
    *,
    timeout: float | None = None,
    log_path: Path | None = None,
) -> TrainResult:
    """Validate (LaunchError lists every problem), then train; TrainingFailed if torchrun fails."""
    validate_launch(config, settings)
    if config.world_size == 1:
        return run_training(config, settings)
    return launch_torchrun(config, settings, timeout=timeout, log_path=log_path)


def launch_torchrun(
    config: TrainConfig,
    settings: Settings,
    *,
    extra_env: dict[str, str] | None = None,
    timeout: float | None = None,
    log_path: Path | None = None,
) -> TrainResult:
    """Run this machine's part of the job under torchrun (even for one process), unvalidated."""
    with tempfile.TemporaryDirectory(prefix="pixelpipe-train-") as tmp:
        work = Path(tmp)
        config_path = config.write(work / "config.json")
        result_path = work / "result.json"
        log = log_path or work / "torchrun.log"
        env = {**os.environ, **settings_env(settings), **(extra_env or {})}
        with open(log, "wb") as out:
            proc = subprocess.run(
                torchrun_command(config, config_path, result_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                check=False,
            )
        if proc.returncode != 0 or not result_path.is_file():
            tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            raise TrainingFailed(f"torchrun exited with {proc.returncode}; log tail:\n{tail}")
        return TrainResult.from_dict(json.loads(result_path.read_text()))
