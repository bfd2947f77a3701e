"""Typed training configuration and the checks a launch must pass before anything starts."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pixelpipe.settings import Settings

ModelName = Literal["tiny", "small", "resnet18", "resnet50"]
Device = Literal["auto", "cpu", "cuda"]
LoaderName = Literal["auto", "torch", "dali"]
TaskName = Literal["detection", "classification"]
MLFLOW_PROBE_TIMEOUT = 3.0


class LaunchError(ValueError):
    """A launch that must not start; each line names the field, its value and what was expected."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("cannot start training:\n  " + "\n  ".join(problems))


class TrainConfig(BaseModel):
    """Everything one training run needs; the same JSON drives every torchrun process."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        None,
        description="dataset index: s3://BUCKET/datasets/VARIANT/index.json or a local path; "
        "empty = s3://ARTIFACTS_BUCKET/datasets/<variant>/index.json",
    )
    variant: str = Field("small", min_length=1, description="size variant the index describes")
    task: TaskName = Field(
        "detection", description="detection (boxes, the default) | classification (image labels)"
    )
    # defaults chosen on datagen's scenes on a 2-core CPU: they learn there in a few minutes
    model: ModelName = Field(
        "tiny", description="model preset: tiny | small (CPU) | resnet18 | resnet50 (GPU)"
    )
    epochs: int = Field(30, description="passes over the training split (>= 1)")
    batch_size: int = Field(16, description="images per step per process (>= 1)")
    lr: float = Field(4e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    seed: int = Field(0, description="seed for weights, shuffling and augmentation")
    nodes: int = Field(1, ge=1, description="machines taking part")
    nproc_per_node: int = Field(1, ge=1, description="processes per machine (one per GPU)")
    node_rank: int = Field(0, ge=0, description="this machine's rank, 0..nodes-1")
    rdzv_endpoint: str = Field("127.0.0.1:29500", description="HOST:PORT of the rendezvous")
    rdzv_id: str = Field("pixelpipe", min_length=1, description="job id shared by all nodes")
    device: Device = Field("auto", description="auto | cpu | cuda")
    loader: LoaderName = Field(
        "auto", description="auto (DALI on GPU, torch on CPU) | torch | dali"
    )
    num_workers: int = Field(2, ge=0, le=64, description="torch DataLoader workers / DALI threads")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of raw images held out")
    threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="fallback score threshold; each class gets its own, chosen on validation",
    )
    max_images: int | None = Field(None, ge=1, description="use at most this many images")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    synthetic_data: bool = Field(
        False, description="random in-memory batches instead of images (compute-only baseline)"
    )
    track: bool = Field(True, description="log to MLflow and register the model")
    run_name: str | None = Field(None, description="MLflow run name")

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    def index_uri(self, settings: Settings) -> str:
        """Where this run's dataset index lives."""
        if self.dataset:
            return self.dataset
        return f"s3://{settings.artifacts_bucket}/datasets/{self.variant}/index.json"

    def write(self, path: Path) -> Path:
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> TrainConfig:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def cuda_device_count() -> int:
    """GPUs torch can use here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(config: TrainConfig) -> Literal["cpu", "cuda"]:
    """auto picks CUDA when a GPU is visible."""
    if config.device == "auto":
        return "cuda" if cuda_device_count() > 0 else "cpu"
    return config.device


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def resolve_loader(config: TrainConfig, device: str) -> Literal["torch", "dali"]:
    """auto: DALI on GPU when it imports, torch otherwise."""
    if config.loader == "auto":
        return "dali" if device == "cuda" and dali_available() else "torch"
    return config.loader


def local_cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _static_problems(config: TrainConfig) -> list[str]:
    problems: list[str] = []
    if config.epochs < 1:
        problems.append(f"epochs={config.epochs}: expected at least 1")
    if config.batch_size < 1:
        problems.append(f"batch_size={config.batch_size}: expected at least 1")
    if config.node_rank >= config.nodes:
        problems.append(
            f"node_rank={config.node_rank}: expected 0..{config.nodes - 1} for nodes={config.nodes}"
        )
    if config.loader == "dali" and not dali_available():
        problems.append("loader='dali': nvidia.dali does not import here; use 'torch' or 'auto'")
    return problems


def _device_problems(config: TrainConfig) -> list[str]:
    gpus = cuda_device_count()
    if config.device == "cuda" and gpus == 0:
        return ["device='cuda': no CUDA GPU is visible here; use 'cpu' or 'auto'"]
    device = resolve_device(config)
    if device == "cuda" and config.nproc_per_node > gpus:
        return [
            f"nproc_per_node={config.nproc_per_node}: expected at most {gpus}, "
            f"the number of GPUs on this machine (device={device})"
        ]
    cores = local_cpu_count()
    if device == "cpu" and config.nproc_per_node > cores:
        return [
            f"nproc_per_node={config.nproc_per_node}: expected at most {cores}, "
            f"the number of CPU cores on this machine (device=cpu)"
        ]
    return []


def mlflow_problem(uri: str, timeout: float = MLFLOW_PROBE_TIMEOUT) -> str | None:
    """None if the MLflow server answers its health check, else what went wrong."""
    if not uri.startswith(("http://", "https://")):
        return None  # file: or database stores need no server
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return None
            reason = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc))
    return f"MLFLOW_TRACKING_URI={uri!r}: expected a reachable MLflow server ({reason})"


def _dataset_problems(config: TrainConfig, settings: Settings) -> list[str]:
    from pixelpipe.training.dataset import DatasetError, known_variants, read_index

    uri = config.index_uri(settings)
    try:
        index = read_index(uri, settings)
    except DatasetError as exc:
        if config.dataset:
            return [f"dataset={uri!r}: {exc}"]
        known = known_variants(settings)
        listing = ", ".join(known) if known else "none yet (run stage 2 and the dataset index)"
        return [f"variant={config.variant!r}: no dataset index at {uri}; known variants: {listing}"]
    problems: list[str] = []
    if index.variant != config.variant:
        problems.append(
            f"variant={config.variant!r}: the dataset index at {uri} is for "
            f"variant {index.variant!r}; expected them to match"
        )
    if index.images < 1 or not index.partitions:
        problems.append(
            f"dataset={uri!r}: the dataset is empty (0 images); expected at least one "
            "normalized partition with images"
        )
    return problems


def validate_launch(config: TrainConfig, settings: Settings) -> None:
    """Raise LaunchError listing every reason this run cannot start; return quietly if it can."""
    problems = _static_problems(config) + _device_problems(config)
    if config.track:
        problem = mlflow_problem(settings.mlflow_tracking_uri)
        if problem:
            problems.append(problem)
    problems += _dataset_problems(config, settings)
    if problems:
        raise LaunchError(problems)
