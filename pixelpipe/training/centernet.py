"""CenterNet targets (elliptical Gaussian heatmaps, dense box regression) and the losses."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from pixelpipe.training.detector import OUTPUT_STRIDE

GAUSSIAN_ALPHA = 0.54  # sigma = alpha * box side / 6 (TTFNet): wider than CenterNet's radius
REGRESS_ABOVE = 0.3  # cells whose Gaussian value exceeds this regress the box, weighted by it
REG_WEIGHT = 1.0
CROP_WEIGHT = 1.0
JITTER = 0.15  # training crops: box centre moved and side scaled by up to this fraction


def make_targets(
    boxes: npt.NDArray[np.floating[Any]], num_classes: int, width: int, height: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Heatmap (C x h x w), box targets (4 x h x w) and regression weights (1 x h x w).

    boxes: M x 5 float [x, y, width, height, class index] in input pixels. Box targets per
    cell are log width, log height (in cells) and the offset from the cell to the box centre.
    """
    h, w = math.ceil(height / OUTPUT_STRIDE), math.ceil(width / OUTPUT_STRIDE)
    heat = np.zeros((num_classes, h, w), np.float32)
    reg = np.zeros((4, h, w), np.float32)
    weight = np.zeros((1, h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # larger boxes first, so a small box lying on a big one owns the cells it shares
    order = np.argsort(-(boxes[:, 2] * boxes[:, 3])) if len(boxes) else np.zeros(0, np.intp)
    for i in order:
        x, y, bw, bh, cls = boxes[i]
        if bw < 1 or bh < 1:
            continue
        cx, cy = (x + bw / 2) / OUTPUT_STRIDE, (y + bh / 2) / OUTPUT_STRIDE
        ix, iy = min(w - 1, max(0, int(cx))), min(h - 1, max(0, int(cy)))
        sx = max(GAUSSIAN_ALPHA * bw / OUTPUT_STRIDE / 6, 0.5)
        sy = max(GAUSSIAN_ALPHA * bh / OUTPUT_STRIDE / 6, 0.5)
        g = np.exp(-((xs - ix) ** 2 / (2 * sx * sx) + (ys - iy) ** 2 / (2 * sy * sy)))
        c = int(cls)
        np.maximum(heat[c], g, out=heat[c])
        heat[c, iy, ix] = 1.0
        region = g > REGRESS_ABOVE
        region[iy, ix] = True
        reg[0][region] = math.log(bw / OUTPUT_STRIDE)
        reg[1][region] = math.log(bh / OUTPUT_STRIDE)
        reg[2][region] = cx - xs[region]
        reg[3][region] = cy - ys[region]
        weight[0][region] = g[region]
        weight[0, iy, ix] = 1.0
    return heat, reg, weight


def focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), per positive cell."""
    logits = logits.float()
    p = torch.sigmoid(logits)
    pos = heat.eq(1).float()
    pos_loss = F.logsigmoid(logits) * (1 - p) ** 2 * pos
    neg_loss = F.logsigmoid(-logits) * p**2 * (1 - heat) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def box_loss(pred: torch.Tensor, reg: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted L1 of the 4 box channels over the cells near each centre."""
    l1 = (pred.float() - reg).abs().sum(dim=1, keepdim=True)
    return (l1 * weight).sum() / weight.sum().clamp(min=1e-6)


def detection_loss(
    output: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Focal heatmap loss + weighted box regression for one batch."""
    c = heat.shape[1]
    return focal_loss(output[:, :c], heat) + REG_WEIGHT * box_loss(output[:, c:], reg, weight)


def boxes_from_targets(heat: torch.Tensor, reg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's true boxes read back from its targets: (N x M x 4 [x, y, w, h] in input
    pixels, N x M class indices with -1 for padding). Exact: targets store them losslessly."""
    n = heat.shape[0]
    found = torch.nonzero(heat == 1.0)  # rows (image, class, y, x)
    counts = torch.bincount(found[:, 0], minlength=n) if len(found) else torch.zeros(n)
    m = max(1, int(counts.max())) if len(found) else 1
    boxes = torch.zeros(n, m, 4, device=heat.device)
    classes = torch.full((n, m), -1, dtype=torch.long, device=heat.device)
    slot = torch.zeros(n, dtype=torch.long)
    for image, cls, y, x in found.tolist():
        j = int(slot[image])
        slot[image] += 1
        lw, lh, ox, oy = reg[image, :, y, x].tolist()
        w, h = math.exp(lw) * OUTPUT_STRIDE, math.exp(lh) * OUTPUT_STRIDE
        cx, cy = (x + ox) * OUTPUT_STRIDE, (y + oy) * OUTPUT_STRIDE
        boxes[image, j] = torch.tensor([cx - w / 2, cy - h / 2, w, h])
        classes[image, j] = cls
    return boxes, classes


def jitter(boxes: torch.Tensor, amount: float = JITTER) -> torch.Tensor:
    """Boxes moved and resized a little at random, as proposals are at test time."""
    side = torch.maximum(boxes[..., 2], boxes[..., 3]).unsqueeze(-1)
    shift = (torch.rand(boxes.shape[:-1] + (2,), device=boxes.device) * 2 - 1) * amount * side
    scale = torch.exp((torch.rand(boxes.shape[:-1] + (1,), device=boxes.device) * 2 - 1) * amount)
    centre = boxes[..., :2] + boxes[..., 2:] / 2 + shift
    size = boxes[..., 2:] * scale
    return torch.cat([centre - size / 2, size], dim=-1)


def crop_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the crop classifier over the real (unpadded) boxes."""
    valid = classes >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid].float(), classes[valid])
