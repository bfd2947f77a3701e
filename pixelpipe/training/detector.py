"""A CenterNet-style detector on the ResNet trunk: heatmap + size + offset at stride 4."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixelpipe.training.model import PRESETS, BasicBlock, Bottleneck, ModelSpec, _stem

OUTPUT_STRIDE = 4
# Detection trunks start at stride 4 (7x7/2 conv + max-pool): every stage feeds the stride-4
# output, and the compute goes to resolution where small shapes need it, not to a stride-2 stage.
DETECTOR_PRESETS: dict[str, ModelSpec] = {
    "tiny": ModelSpec((16, 32, 64, 128), (1, 1, 1, 1), "basic", "imagenet"),
    "small": ModelSpec((32, 64, 128, 256), (1, 1, 1, 1), "basic", "imagenet"),
    "resnet18": PRESETS["resnet18"],
    "resnet50": PRESETS["resnet50"],
}
HEAD_WIDTH = {"tiny": 24, "small": 48, "resnet18": 64, "resnet50": 128}
PRIOR = 0.1  # initial heatmap probability: focal loss starts near its steady state
MAX_DETECTIONS = 100


def _conv(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CenterNet(nn.Module):
    """Trunk -> top-down feature merge to stride 4 -> per-class heatmap and 4 box channels.

    forward() returns N x (classes + 4) x H/4 x W/4: heatmap logits, then log width, log
    height (in output cells) and the sub-cell x, y offset of each box centre.
    """

    def __init__(self, spec: ModelSpec, num_classes: int, head_width: int = 64) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.stem, channels = _stem(spec)
        stride = 4 if spec.stem == "imagenet" else 2
        block_type = BasicBlock if spec.block == "basic" else Bottleneck
        stages: list[nn.Module] = []
        laterals: list[nn.Module] = []
        self.first_level = -1
        for i, (width, depth) in enumerate(zip(spec.widths, spec.depths, strict=True)):
            blocks: list[nn.Module] = []
            if i > 0:
                stride *= 2
            for j in range(depth):
                block = block_type(channels, width, 2 if (i > 0 and j == 0) else 1)
                channels = block.out_channels
                blocks.append(block)
            stages.append(nn.Sequential(*blocks))
            if stride >= OUTPUT_STRIDE:
                if self.first_level < 0:
                    if stride != OUTPUT_STRIDE:
                        raise ValueError("the trunk has no stride-4 stage to detect on")
                    self.first_level = i
                laterals.append(nn.Conv2d(channels, head_width, 1))
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(laterals)
        self.smooth = _conv(head_width, head_width)
        self.heatmap = nn.Sequential(
            _conv(head_width, head_width), nn.Conv2d(head_width, num_classes, 1)
        )
        self.box = nn.Sequential(_conv(head_width, head_width), nn.Conv2d(head_width, 4, 1))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock | Bottleneck):
                last_bn = m.body[-1]
                assert isinstance(last_bn, nn.BatchNorm2d)
                nn.init.zeros_(last_bn.weight)
        last = self.heatmap[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.normal_(last.weight, std=0.01)
        nn.init.constant_(last.bias, -math.log((1 - PRIOR) / PRIOR))
        box = self.box[-1]
        assert isinstance(box, nn.Conv2d)
        nn.init.normal_(box.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        feats: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= self.first_level:
                feats.append(x)
        merged = self.laterals[-1](feats[-1])
        for level in range(len(feats) - 2, -1, -1):
            lateral = self.laterals[level](feats[level])
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
        merged = self.smooth(merged)
        return torch.cat([self.heatmap(merged), self.box(merged)], dim=1)


def decode(output: torch.Tensor, num_classes: int, k: int = MAX_DETECTIONS) -> torch.Tensor:
    """N x K x 6 detections [x, y, width, height, score, class] in input pixels, best first.

    Peaks are heatmap cells that equal their 3x3 max-pool (CenterNet's NMS); traceable.
    """
    heat = torch.sigmoid(output[:, :num_classes].float())
    n, c, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    k = min(k, c * h * w)
    scores, index = torch.topk(peaks.reshape(n, -1), k)
    classes = torch.div(index, h * w, rounding_mode="floor")
    cell = index % (h * w)
    ys = torch.div(cell, w, rounding_mode="floor").float()
    xs = (cell % w).float()
    box = output[:, num_classes:].float().reshape(n, 4, h * w)
    gathered = torch.gather(box, 2, cell.unsqueeze(1).expand(n, 4, k))
    bw = torch.exp(gathered[:, 0].clamp(max=8.0)) * OUTPUT_STRIDE
    bh = torch.exp(gathered[:, 1].clamp(max=8.0)) * OUTPUT_STRIDE
    cx = (xs + gathered[:, 2]) * OUTPUT_STRIDE
    cy = (ys + gathered[:, 3]) * OUTPUT_STRIDE
    return torch.stack([cx - bw / 2, cy - bh / 2, bw, bh, scores, classes.float()], dim=2)


class DetectorExport(nn.Module):
    """What is exported: the network plus decoding, so a TorchScript file goes image -> boxes."""

    def __init__(self, net: CenterNet, k: int = MAX_DETECTIONS) -> None:
        super().__init__()
        self.net = net
        self.k = k
        self.num_classes = net.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decode(self.net(x), self.num_classes, self.k)


def build_detector(name: str, num_classes: int) -> CenterNet:
    """A detector preset by trunk name (tiny | small | resnet18 | resnet50)."""
    if name not in DETECTOR_PRESETS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(DETECTOR_PRESETS)}")
    return CenterNet(DETECTOR_PRESETS[name], num_classes, HEAD_WIDTH[name])
