"""Box utilities for box matching (paper Table 5): mask -> box conversion, format changes, (G)IoU.

Boxes are float tensors ``[N, 4]``; ``cxcywh`` = (centre x, centre y, width, height) and ``xyxy`` =
(x0, y0, x1, y1), both normalised to [0, 1] by the padded image size when they come from
``masks_to_boxes``. The GIoU follows DETR (``util/box_ops.py``; Rezatofighi et al. 2019).
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[N, 4] (cx, cy, w, h) -> [N, 4] (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[N, 4] (x0, y0, x1, y1) -> [N, 4] (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """[N, 4] xyxy -> [N] areas."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes [N, 4] x [M, 4] -> (iou [N, M], union [N, M])."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU of xyxy boxes [N, 4] x [M, 4] -> [N, M] in [-1, 1].

    Degenerate boxes (x1 < x0) are rejected with a ValueError, as in DETR, because they make the
    enclosing-box term meaningless.
    """
    if not bool((boxes1[:, 2:] >= boxes1[:, :2]).all()) or not bool((boxes2[:, 2:] >= boxes2[:, :2]).all()):
        raise ValueError("generalized_box_iou: got a degenerate box with x1 < x0 or y1 < y0")
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks, normalised (cx, cy, w, h).

    Args:
        masks: ``[M, H, W]`` bool/0-1 tensor (targets at the padded image resolution).

    Returns:
        ``[M, 4]`` float boxes (cx, cy, w, h) divided by (W, H). Pixel *edges* are used
        (x1 = last column + 1), so a one-pixel mask has width 1/W rather than 0 and every
        non-empty mask gives a valid box for the GIoU. An empty mask gives the all-zero box.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks_to_boxes expects [M, H, W], got shape {tuple(masks.shape)}")
    m, h, w = masks.shape
    if m == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    masks = masks.bool()
    rows = masks.any(dim=2)  # [M, H]
    cols = masks.any(dim=1)  # [M, W]
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    big = float(max(h, w) + 1)
    y0 = torch.where(rows, ys, big).min(dim=1).values
    y1 = torch.where(rows, ys, -1.0).max(dim=1).values + 1
    x0 = torch.where(cols, xs, big).min(dim=1).values
    x1 = torch.where(cols, xs, -1.0).max(dim=1).values + 1
    xyxy = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=-1)
    empty = ~rows.any(dim=1)
    xyxy[empty] = 0.0
    return box_xyxy_to_cxcywh(xyxy)
