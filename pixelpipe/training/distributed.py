"""This process's place in a torchrun job, joining it, and sums and maxima over its ranks."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (torchrun's RANK / LOCAL_RANK / WORLD_SIZE)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        env = os.environ
        return cls(
            int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))
        )


def init_distributed(info: DistInfo, device: str) -> bool:
    """Join the torchrun job (gloo on CPU, NCCL on GPU); False when running alone."""
    if info.world_size <= 1 or dist.is_initialized():
        return False
    if device == "cuda":
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=dt.timedelta(minutes=10))
    return True


def all_sum(values: list[float], enabled: bool) -> list[float]:
    """Element-wise sums over every rank (values unchanged when not distributed)."""
    if not enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value: float, enabled: bool) -> float:
    """The largest value over every rank (value unchanged when not distributed)."""
    if not enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])
