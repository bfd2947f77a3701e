"""Detection batches: images with their boxes (flipped with the image) as CenterNet targets."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from pixelpipe.training.centernet import make_targets
from pixelpipe.training.loaders import (
    LoaderSpec,
    _drop_last,
    data_loader,
    decode_image,
    normalize,
    to_input_size,
)

DetTargets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Boxes = npt.NDArray[np.float32]  # M x 5 [x, y, width, height, class index]


def boxes_array(boxes: Sequence[Sequence[float]]) -> Boxes:
    """M x 5 float32 [x, y, width, height, class index] (0 x 5 when there are none)."""
    return np.asarray(boxes, np.float32).reshape(-1, 5)


def flip_boxes(boxes: Boxes, width: int) -> Boxes:
    """Boxes of a horizontally mirrored image of the given width."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 0] - boxes[:, 2]
    return out


def rot90_boxes(boxes: Boxes, size: int) -> Boxes:
    """Boxes of a square size x size image turned 90 degrees as np.rot90 turns it."""
    out = boxes.copy()
    out[:, 0] = boxes[:, 1]
    out[:, 1] = size - boxes[:, 0] - boxes[:, 2]
    out[:, 2] = boxes[:, 3]
    out[:, 3] = boxes[:, 2]
    return out


def augment(chw: torch.Tensor, boxes: Boxes, width: int, height: int) -> tuple[torch.Tensor, Boxes]:
    """A random mirror, and on square inputs a random quarter turn, applied to image and boxes.

    Shape classes do not depend on orientation, so the eight symmetries of a square are free
    extra training data.
    """
    if torch.rand(()) < 0.5:
        chw, boxes = chw.flip(2), flip_boxes(boxes, width)
    if width == height:
        for _ in range(int(torch.randint(0, 4, ()))):
            chw = torch.rot90(chw, 1, dims=(1, 2))
            boxes = rot90_boxes(boxes, width)
    return chw.contiguous(), boxes


class DetectionFiles(Dataset[tuple[torch.Tensor, int | DetTargets]]):
    """Input-sized uint8 CHW images; training items carry targets, validation items their index."""

    def __init__(
        self,
        paths: Sequence[str],
        boxes: Sequence[Boxes],
        classes: int,
        spec: LoaderSpec,
        train: bool,
    ) -> None:
        self.paths, self.boxes = list(paths), list(boxes)
        self.classes, self.spec, self.train = classes, spec, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | DetTargets]:
        s = self.spec
        rgb = decode_image(Path(self.paths[i]).read_bytes())
        rgb = to_input_size(rgb, s.width, s.height, s.mode)
        chw = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        if not self.train:
            return chw, i
        chw, boxes = augment(chw, self.boxes[i], s.width, s.height)
        heat, reg, weight = make_targets(boxes, self.classes, s.width, s.height)
        return chw, (torch.from_numpy(heat), torch.from_numpy(reg), torch.from_numpy(weight))


class DetectionBatches:
    """torch DataLoader over DetectionFiles: (images, (heat, reg, weight)) or (images, indices)."""

    def __init__(
        self,
        paths: Sequence[str],
        boxes: Sequence[Boxes],
        classes: int,
        spec: LoaderSpec,
        train: bool,
    ) -> None:
        self.spec = spec
        files = DetectionFiles(paths, boxes, classes, spec, train)
        self.loader, self.sampler = data_loader(files, len(paths), spec, train)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        device = self.spec.torch_device
        for images, targets in self.loader:
            x = normalize(images.to(device, non_blocking=True), self.spec.mean, self.spec.std)
            if isinstance(targets, list | tuple):
                targets = tuple(t.to(device, non_blocking=True) for t in targets)
            yield x, targets


class DaliDetectionBatches:
    """The DALI reader + decoder for images; each image's flip comes back so boxes follow it."""

    def __init__(
        self,
        paths: Sequence[str],
        boxes: Sequence[Boxes],
        classes: int,
        spec: LoaderSpec,
        train: bool,
    ) -> None:
        from pixelpipe.training.loaders import DaliBatches

        self.spec, self.train, self.classes = spec, train, classes
        self.boxes = list(boxes)
        index_targets = np.arange(len(paths), dtype=np.float32).reshape(-1, 1)
        self.inner = DaliBatches(paths, index_targets, spec, train, return_mirror=train)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        s = self.spec
        for images, index, mirror in self.inner.iter_with_mirror():
            rows = index.view(-1).long().cpu().tolist()
            if not self.train:
                yield images, torch.tensor(rows)
                continue
            flips = mirror.view(-1).cpu().tolist()
            parts = [
                make_targets(
                    flip_boxes(self.boxes[r], s.width) if f else self.boxes[r],
                    self.classes,
                    s.width,
                    s.height,
                )
                for r, f in zip(rows, flips, strict=True)
            ]
            targets = tuple(
                torch.from_numpy(np.stack([p[k] for p in parts])).to(images.device)
                for k in range(3)
            )
            yield images, targets


def make_detection_batches(
    kind: str,
    paths: Sequence[str],
    boxes: Sequence[Boxes],
    classes: int,
    spec: LoaderSpec,
    train: bool,
) -> Any:
    """A detection loader by name: 'torch' or 'dali'."""
    if kind == "torch":
        return DetectionBatches(paths, boxes, classes, spec, train)
    if kind == "dali":
        return DaliDetectionBatches(paths, boxes, classes, spec, train)
    if kind == "synthetic":
        return SyntheticDetectionBatches(len(paths), classes, spec, train)
    raise ValueError(f"unknown loader {kind!r}; expected torch, dali or synthetic")


class SyntheticDetectionBatches:
    """Random in-memory batches with one box each: the compute-only baseline."""

    POOL = 4

    def __init__(self, samples: int, classes: int, spec: LoaderSpec, train: bool) -> None:
        per_rank = math.ceil(samples / spec.world_size)
        drop = train and _drop_last(samples // spec.world_size, spec.batch_size)
        self._steps = per_rank // spec.batch_size if drop else math.ceil(per_rank / spec.batch_size)
        gen = torch.Generator().manual_seed(spec.seed + spec.rank)
        device = spec.torch_device
        box = np.array([[spec.width / 4, spec.height / 4, spec.width / 3, spec.height / 3, 0]])
        heat, reg, weight = (
            torch.from_numpy(a) for a in make_targets(box, classes, spec.width, spec.height)
        )
        n = spec.batch_size
        targets = tuple(
            t.unsqueeze(0).expand(n, *t.shape).contiguous().to(device) for t in (heat, reg, weight)
        )
        self.pool = [
            (torch.randn((n, 3, spec.height, spec.width), generator=gen).to(device), targets)
            for _ in range(self.POOL)
        ]

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        del epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        for step in range(self._steps):
            yield self.pool[step % self.POOL]
