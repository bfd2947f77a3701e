"""A CenterNet-style detector on the ResNet trunk: heatmap + size + offset at stride 4."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixelpipe.training.model import PRESETS, BasicBlock, Bottleneck, ModelSpec, _stem

OUTPUT_STRIDE = 4
HEAD_WIDTH = {"tiny": 48, "small": 64, "resnet18": 128, "resnet50": 128}
PRIOR = 0.1  # initial heatmap probability: focal loss starts near its steady state
MAX_DETECTIONS = 100
PROPOSALS = 32  # class-agnostic centre peaks per image that the crop classifier names
CROP = 32  # crop side in pixels: every proposal is seen at one scale
CONTEXT = 1.3  # crop side = longer box side x this (a little background around the shape)


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
        self.crop_classifier = CropClassifier(num_classes, CROP_WIDTH.get(spec.widths[0], 32))
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

    def forward(
        self, x: torch.Tensor, crop_boxes: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Dense output; with crop_boxes (N x M x 4, [x, y, w, h] in input pixels) also the
        crop classifier's N x M x classes logits (training calls it this way, so DDP sees
        every parameter used in forward)."""
        dense = self.dense(x)
        if crop_boxes is None:
            return dense
        return dense, self.classify(x, crop_boxes)

    def classify(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """N x M x classes logits for square crops around N x M boxes of the input batch."""
        n, m = boxes.shape[0], boxes.shape[1]
        crops = crop_images(x, boxes, CROP)
        logits: torch.Tensor = self.crop_classifier(crops)
        return logits.view(n, m, -1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """N x (classes + 4) x H/4 x W/4: heatmap logits and box channels."""
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


class CropClassifier(nn.Module):
    """A small CNN naming the shape in one CROP x CROP crop (scale is normalised by the crop)."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv(3, w), _strided(w, 2 * w), _conv(2 * w, 2 * w),
            _strided(2 * w, 4 * w), _conv(4 * w, 4 * w), _strided(4 * w, 8 * w),
        )  # fmt: skip
        self.fc = nn.Linear(16 * w, num_classes)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = self.body(crops)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        logits: torch.Tensor = self.fc(pooled)
        return logits


CROP_WIDTH = {16: 24, 32: 32, 64: 48}


def _strided(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def crop_images(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N*M) x C x size x size square crops (side CONTEXT x the longer box side) by bilinear
    sampling; boxes are N x M x 4 [x, y, w, h] in input pixels. Traceable."""
    n, c, height, width = x.shape
    m = boxes.shape[1]
    cx = boxes[..., 0] + boxes[..., 2] / 2
    cy = boxes[..., 1] + boxes[..., 3] / 2
    side = torch.maximum(boxes[..., 2], boxes[..., 3]).clamp(min=4.0) * CONTEXT
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size * 2 - 1
    gx = (cx[..., None] + steps * side[..., None] / 2) / width * 2 - 1  # N x M x size
    gy = (cy[..., None] + steps * side[..., None] / 2) / height * 2 - 1
    grid = torch.stack(
        [gx[:, :, None, :].expand(n, m, size, size), gy[:, :, :, None].expand(n, m, size, size)],
        dim=-1,
    ).reshape(n, m * size, size, 2)
    sampled = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", align_corners=False)
    return sampled.view(n, c, m, size, size).permute(0, 2, 1, 3, 4).reshape(n * m, c, size, size)


def _peaks(heat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k 3x3 local maxima of N x C x h x w: (scores N x k, flat indices N x k)."""
    n = heat.shape[0]
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    return torch.topk(peaks.reshape(n, -1), min(k, peaks[0].numel()))


def _boxes_at(output: torch.Tensor, num_classes: int, cell: torch.Tensor) -> torch.Tensor:
    """N x k x 4 [x, y, w, h] in input pixels from the box channels at flat cells."""
    n, _, h, w = output.shape
    k = cell.shape[1]
    box = output[:, num_classes:].float().reshape(n, 4, h * w)
    got = torch.gather(box, 2, cell.unsqueeze(1).expand(n, 4, k))
    ys = torch.div(cell, w, rounding_mode="floor").float()
    xs = (cell % w).float()
    bw = torch.exp(got[:, 0].clamp(max=8.0)) * OUTPUT_STRIDE
    bh = torch.exp(got[:, 1].clamp(max=8.0)) * OUTPUT_STRIDE
    cx = (xs + got[:, 2]) * OUTPUT_STRIDE
    cy = (ys + got[:, 3]) * OUTPUT_STRIDE
    return torch.stack([cx - bw / 2, cy - bh / 2, bw, bh], dim=2)


def decode(output: torch.Tensor, num_classes: int, k: int = MAX_DETECTIONS) -> torch.Tensor:
    """N x K x 6 detections [x, y, width, height, score, class] from the heatmap alone.

    Peaks are heatmap cells that equal their 3x3 max-pool (CenterNet's NMS); traceable.
    """
    heat = torch.sigmoid(output[:, :num_classes].float())
    h, w = heat.shape[-2:]
    scores, index = _peaks(heat, k)
    classes = torch.div(index, h * w, rounding_mode="floor")
    boxes = _boxes_at(output, num_classes, index % (h * w))
    return torch.cat([boxes, scores.unsqueeze(2), classes.float().unsqueeze(2)], dim=2)


def detect(
    net: CenterNet, x: torch.Tensor, dense: torch.Tensor, k: int = MAX_DETECTIONS
) -> torch.Tensor:
    """N x K x 6 detections: class-agnostic centre proposals, each named by the crop classifier.

    score = objectness (the best class heatmap at the centre) x the crop's class probability;
    each proposal may appear once per class, so mAP sees the second-best reading too.
    """
    c = net.num_classes
    objectness = torch.sigmoid(dense[:, :c].float()).amax(dim=1, keepdim=True)
    obj, cell = _peaks(objectness, PROPOSALS)
    boxes = _boxes_at(dense, c, cell)
    probs = torch.softmax(net.classify(x, boxes).float(), dim=2)  # N x P x C
    n, p = probs.shape[0], probs.shape[1]
    scores, index = torch.topk((obj.unsqueeze(2) * probs).reshape(n, p * c), min(k, p * c))
    proposal = torch.div(index, c, rounding_mode="floor")
    picked = torch.gather(boxes, 1, proposal.unsqueeze(2).expand(n, proposal.shape[1], 4))
    classes = (index % c).float()
    return torch.cat([picked, scores.unsqueeze(2), classes.unsqueeze(2)], dim=2)


class DetectorExport(nn.Module):
    """What is exported: the network plus decoding, so a TorchScript file goes image -> boxes."""

    def __init__(self, net: CenterNet, k: int = MAX_DETECTIONS) -> None:
        super().__init__()
        self.net = net
        self.k = k
        self.num_classes = net.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return detect(self.net, x, self.net.dense(x), self.k)


def build_detector(name: str, num_classes: int) -> CenterNet:
    """A detector preset by trunk name (tiny | small | resnet18 | resnet50)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(PRESETS)}")
    return CenterNet(PRESETS[name], num_classes, HEAD_WIDTH[name])
