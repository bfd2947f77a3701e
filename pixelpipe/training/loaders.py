"""Image preprocessing shared by training and serving, and batch loaders (torch, DALI, synthetic).

Every loader yields (images, targets) on the training device: images float32 NCHW,
normalised as (pixel / 255 - mean) / std, targets float32 multi-hot N x classes.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import simplejpeg
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from pixelpipe.imaging.decode import load_rgb
from pixelpipe.imaging.geometry import plan
from pixelpipe.imaging.resize_cpu import finish, plain_jpeg_size, resize
from pixelpipe.imaging.variants import Variant

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None

RGB = npt.NDArray[np.uint8]  # H x W x 3
Targets = npt.NDArray[np.float32]  # N x classes multi-hot (or N x 1 file positions)


# --- preprocessing ---------------------------------------------------------------------------
def decode_image(data: bytes) -> RGB:
    """Encoded bytes (JPEG, PNG, ...) -> upright HxWx3 uint8 RGB; ImageError if unusable."""
    if plain_jpeg_size(data) is not None:
        try:
            rgb: RGB = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            return rgb
        except ValueError:
            pass  # let load_rgb name the problem
    # load_rgb owns orientation, alpha and bit-depth rules; it reads files
    with tempfile.NamedTemporaryFile(dir=_SCRATCH, suffix=".img") as tmp:
        tmp.write(data)
        tmp.flush()
        return load_rgb(tmp.name)


def to_input_size(rgb: RGB, width: int, height: int, mode: str) -> RGB:
    """Resize (and crop or pad) to width x height exactly as stage 2 makes the variant."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    geom = plan(rgb.shape[1], rgb.shape[0], Variant("input", width, height, mode))  # type: ignore[arg-type]
    return np.ascontiguousarray(finish(resize(rgb, geom.resized_width, geom.resized_height), geom))


def normalize(
    images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> torch.Tensor:
    """uint8 NCHW -> float32 (x / 255 - mean) / std, on the tensor's own device."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def preprocess_images(
    blobs: Sequence[bytes],
    width: int,
    height: int,
    mode: str,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """The one serving preprocessing: decode, size like the variant, normalise -> float NCHW."""
    arrays = [to_input_size(decode_image(b), width, height, mode) for b in blobs]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return normalize(batch, mean, std)


# --- loaders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoaderSpec:
    """Shape, batching and placement shared by every loader of one run."""

    width: int
    height: int
    mode: str = "fit"
    batch_size: int = 32
    num_workers: int = 2
    device: str = "cpu"
    device_id: int = 0
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD

    @property
    def torch_device(self) -> torch.device:
        if self.device == "cuda":
            return torch.device(self.device, self.device_id)
        return torch.device(self.device)


class Batches(Protocol):
    """An epoch of (images, targets) batches on the training device."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def set_epoch(self, epoch: int) -> None: ...


def _drop_last(per_rank: int, batch_size: int) -> bool:
    # a full batch is always possible then; a lone last sample would break BatchNorm
    return per_rank >= batch_size


class ImageFiles(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Decoded, input-sized images as uint8 CHW tensors with multi-hot targets."""

    def __init__(
        self, paths: Sequence[str], targets: Targets, spec: LoaderSpec, train: bool
    ) -> None:
        self.paths = list(paths)
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.float32))
        self.width, self.height, self.mode = spec.width, spec.height, spec.mode
        self.train = train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = decode_image(Path(self.paths[i]).read_bytes())
        rgb = to_input_size(rgb, self.width, self.height, self.mode)
        if self.train and torch.rand(()) < 0.5:
            rgb = rgb[:, ::-1]
        chw = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        return chw, self.targets[i]


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # workers are the parallelism; nested cv2 threads oversubscribe cores


def data_loader(
    data: Dataset[Any], count: int, spec: LoaderSpec, train: bool
) -> tuple[DataLoader[Any], DistributedSampler[int] | None]:
    """The DataLoader every torch loader uses, and its DistributedSampler when there is one.

    Training shuffles (a DistributedSampler shard per rank under DDP, equal-sized so every rank
    steps together); validation takes a plain, unpadded shard per rank, so counts sum exactly.
    """
    sampler: Any = None
    dist_sampler: DistributedSampler[int] | None = None
    if train and spec.world_size > 1:
        dist_sampler = DistributedSampler(
            data, spec.world_size, spec.rank, shuffle=True, seed=spec.seed, drop_last=True
        )
        sampler, per_rank = dist_sampler, len(dist_sampler)
    elif train:
        gen = torch.Generator().manual_seed(spec.seed)
        sampler, per_rank = RandomSampler(data, generator=gen), count  # type: ignore[arg-type]
    else:
        data = Subset(data, list(range(spec.rank, count, spec.world_size)))
        per_rank = len(data)
    workers = spec.num_workers
    loader: DataLoader[Any] = DataLoader(
        data,
        batch_size=spec.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=spec.device == "cuda",
        drop_last=train and _drop_last(per_rank, spec.batch_size),
        persistent_workers=workers > 0,
        multiprocessing_context="spawn" if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader, dist_sampler


class TorchBatches:
    """torch DataLoader over ImageFiles (workers, pinned memory, DistributedSampler)."""

    def __init__(
        self, paths: Sequence[str], targets: Targets, spec: LoaderSpec, train: bool
    ) -> None:
        self.spec = spec
        files = ImageFiles(paths, targets, spec, train)
        self.loader, self.sampler = data_loader(files, len(paths), spec, train)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.spec.torch_device
        for images, targets in self.loader:
            # uint8 crosses PCIe (4x less than float); normalising happens on the device
            x = images.to(device, non_blocking=True)
            yield normalize(x, self.spec.mean, self.spec.std), targets.to(device, non_blocking=True)


class DaliBatches:
    """DALI pipeline: file reader -> decoder (mixed on GPU, cpu otherwise) -> flip + normalise.

    The reader's label is each file's position; targets are gathered on the torch side, which
    keeps multi-hot labels out of the pipeline.
    """

    READER = "reader"

    def __init__(
        self,
        paths: Sequence[str],
        targets: Targets,
        spec: LoaderSpec,
        train: bool,
        return_mirror: bool = False,
    ) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.spec = spec
        order = list(range(len(paths)))
        if train:
            # the reader's shuffle_after_epoch leaves epoch 0 in file order; start shuffled
            np.random.default_rng(spec.seed).shuffle(order)
            # equal shards, so every DDP rank takes the same number of steps (as
            # DistributedSampler(drop_last=True) does); at most world_size - 1 files sit out
            order = order[: len(order) - len(order) % spec.world_size]
        per_rank = math.ceil(len(order) / spec.world_size)
        drop = train and _drop_last(per_rank, spec.batch_size)
        self._steps = per_rank // spec.batch_size if drop else math.ceil(per_rank / spec.batch_size)
        self.targets = torch.from_numpy(np.asarray(targets, np.float32)).to(spec.torch_device)
        pipe = _dali_pipeline(
            files=[str(paths[i]) for i in order],
            labels=order,
            spec=spec,
            train=train,
            return_mirror=return_mirror,
        )
        pipe.build()
        self.outputs = ["images", "index"] + (["mirror"] if return_mirror else [])
        self.iterator = DALIGenericIterator(
            [pipe],
            self.outputs,
            reader_name=self.READER,
            last_batch_policy=LastBatchPolicy.DROP if drop else LastBatchPolicy.PARTIAL,
            auto_reset=True,
        )

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        del epoch  # the reader reshuffles itself after every epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.spec.torch_device
        for out in self.iterator:
            images = out[0]["images"].to(device, non_blocking=True)
            index = out[0]["index"].to(device).view(-1).long()
            yield images, self.targets[index]

    def iter_with_mirror(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images, file positions, 1 where the image was mirrored) per batch."""
        device = self.spec.torch_device
        for out in self.iterator:
            images = out[0]["images"].to(device, non_blocking=True)
            index = out[0]["index"].view(-1).long()
            mirror = out[0]["mirror"] if "mirror" in out[0] else torch.zeros_like(index)
            yield images, index, mirror.view(-1)


def _dali_pipeline(
    files: list[str], labels: list[int], spec: LoaderSpec, train: bool, return_mirror: bool = False
) -> Any:
    from nvidia.dali import fn, pipeline_def, types

    gpu = spec.device == "cuda"

    @pipeline_def(
        batch_size=spec.batch_size,
        num_threads=max(1, spec.num_workers),
        seed=spec.seed + spec.rank,
        prefetch_queue_depth=2,
    )
    def pipeline() -> Any:
        jpegs, index = fn.readers.file(
            files=files,
            labels=labels,
            shard_id=spec.rank,
            num_shards=spec.world_size,
            shuffle_after_epoch=train,
            seed=spec.seed,  # one shuffle for all ranks, so shards stay disjoint
            name=DaliBatches.READER,
        )
        images = fn.decoders.image(
            jpegs, device="mixed" if gpu else "cpu", output_type=types.DALIImageType.RGB
        )
        mirror = fn.random.coin_flip(probability=0.5) if train else 0
        # variant images already have the input size; the crop only guards stray ones
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.DALIDataType.FLOAT,
            output_layout="CHW",
            crop=(spec.height, spec.width),
            out_of_bounds_policy="pad",
            mean=[255.0 * m for m in spec.mean],
            std=[255.0 * s for s in spec.std],
            mirror=mirror,
        )
        if return_mirror:
            return images, (index.gpu() if gpu else index), mirror
        return images, (index.gpu() if gpu else index)

    # device_id at the call: None (CPU only) is what DALI wants here, though its stub says int
    return pipeline(device_id=spec.device_id if gpu else None)


class SyntheticBatches:
    """Random in-memory batches of the real shapes: the compute-only baseline, no I/O."""

    POOL = 4

    def __init__(self, samples: int, classes: int, spec: LoaderSpec, train: bool) -> None:
        per_rank = math.ceil(samples / spec.world_size)
        drop = train and _drop_last(samples // spec.world_size, spec.batch_size)
        self._steps = per_rank // spec.batch_size if drop else math.ceil(per_rank / spec.batch_size)
        gen = torch.Generator().manual_seed(spec.seed + spec.rank)
        shape = (spec.batch_size, 3, spec.height, spec.width)
        device = spec.torch_device
        self.pool = [
            (
                torch.randn(shape, generator=gen).to(device),
                (torch.rand((spec.batch_size, classes), generator=gen) < 0.4).float().to(device),
            )
            for _ in range(self.POOL)
        ]

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        del epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(self._steps):
            yield self.pool[step % self.POOL]


def make_batches(
    kind: str, paths: Sequence[str], targets: Targets, spec: LoaderSpec, train: bool
) -> Batches:
    """A loader by name: 'torch', 'dali' or 'synthetic' (paths only count for synthetic)."""
    if kind == "torch":
        return TorchBatches(paths, targets, spec, train)
    if kind == "dali":
        return DaliBatches(paths, targets, spec, train)
    if kind == "synthetic":
        return SyntheticBatches(len(paths), targets.shape[1], spec, train)
    raise ValueError(f"unknown loader {kind!r}; expected torch, dali or synthetic")
