"""One ResNet-style CNN family sized by width and depth, with a multi-label head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Block = Literal["basic", "bottleneck"]
Stem = Literal["small", "imagenet"]


@dataclass(frozen=True)
class ModelSpec:
    """Stage widths and block counts; 'small' stem = 3x3/2 conv, 'imagenet' = 7x7/2 + max-pool."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    block: Block = "basic"
    stem: Stem = "small"


PRESETS: dict[str, ModelSpec] = {
    # ~0.1 M parameters: seconds per epoch on a laptop CPU at 64x64, for tests
    "tiny": ModelSpec((16, 32, 64), (1, 1, 1)),
    # ~1.2 M: a real CPU model
    "small": ModelSpec((32, 64, 128, 256), (1, 1, 1, 1)),
    # ResNet-18 / ResNet-50 scale (11 M / 23 M parameters) for GPUs
    "resnet18": ModelSpec((64, 128, 256, 512), (2, 2, 2, 2), "basic", "imagenet"),
    "resnet50": ModelSpec((64, 128, 256, 512), (3, 4, 6, 3), "bottleneck", "imagenet"),
}
BOTTLENECK_EXPANSION = 4


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.out_channels = width
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3),
        )
        self.shortcut = _shortcut(cin, width, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.shortcut(x))
        return out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand, plus a shortcut."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * BOTTLENECK_EXPANSION
        self.out_channels = out
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(width, out, 1),
        )
        self.shortcut = _shortcut(cin, out, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.shortcut(x))
        return out


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


def _stem(spec: ModelSpec) -> tuple[nn.Module, int]:
    width = spec.widths[0]
    if spec.stem == "imagenet":
        layers = [*_conv_bn(3, width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    else:
        layers = [*_conv_bn(3, width, 3, 2), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), width


class ResNet(nn.Module):
    """Stem, residual stages (the first keeps resolution, each later one halves it), head.

    The head returns one logit per label; train with BCEWithLogitsLoss (multi-label).
    """

    def __init__(self, spec: ModelSpec, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.stem, channels = _stem(spec)
        block_type = BasicBlock if spec.block == "basic" else Bottleneck
        stages: list[nn.Module] = []
        for i, (width, depth) in enumerate(zip(spec.widths, spec.depths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                block = block_type(channels, width, 2 if (i > 0 and j == 0) else 1)
                channels = block.out_channels
                blocks.append(block)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # average + max pooling: small objects still register in a multi-label presence task
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(2 * channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            # each residual branch starts as identity: deep nets train from the first step
            if isinstance(m, BasicBlock | Bottleneck):
                last_bn = m.body[-1]
                assert isinstance(last_bn, nn.BatchNorm2d)
                nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        pooled = torch.cat([self.avg_pool(x), self.max_pool(x)], dim=1)
        logits: torch.Tensor = self.head(torch.flatten(pooled, 1))
        return logits


def build_model(name: str, num_classes: int) -> ResNet:
    """A preset by name (tiny | small | resnet18 | resnet50)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(PRESETS)}")
    return ResNet(PRESETS[name], num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
