"""Matchers that pair predictions (queries) with ground-truth segments, one object per strategy.

Every matcher is called as ``matcher(outputs, targets)`` on ONE decoder layer's outputs and returns,
per image, a pair ``(pred_idx, tgt_idx)`` of int64 CPU tensors of equal length: query
``pred_idx[k]`` is matched to target segment ``tgt_idx[k]``. Unmatched queries are "no object".

- ``HungarianMatcher``: the official bipartite matching by mask (official ``mask_former/modeling/matcher.py``).
- ``FixedMatcher``: MaskFormer-fixed, query i <-> class i (paper Table 4; the author's recipe in MaskFormer
issue #22).
- ``BoxMatcher``: DETR's box matching for models with a box head (paper Table 5).

``outputs``: ``pred_logits [B, Q, K+1]`` (last = no object), ``pred_masks [B, Q, h, w]`` (logits),
optionally ``pred_boxes [B, Q, 4]`` (normalised cx, cy, w, h). ``targets``: list of B dicts with
``labels LongTensor[M]`` and ``masks BoolTensor[M, Hp, Wp]`` (optionally ``boxes [M, 4]``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from maskformer_core.errors import ConfigError, DataError
from maskformer_core.models.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, masks_to_boxes

MatchIndices = list[tuple[Tensor, Tensor]]


def _empty_pair() -> tuple[Tensor, Tensor]:
    return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)


def batch_sigmoid_focal_cost(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Pairwise sigmoid focal cost, mean over pixels (official ``mask_former/modeling/matcher.py``).

    Args:
        inputs: ``[Q, P]`` mask logits of Q queries over P pixels.
        targets: ``[M, P]`` binary GT masks (float).

    Returns:
        ``[Q, M]``: for every (query, target) the focal loss averaged over the P pixels.
    """
    return _focal_cost(inputs, inputs.sigmoid(), targets, alpha, gamma)


def _focal_cost(inputs: Tensor, prob: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """`batch_sigmoid_focal_cost` given prob = sigmoid(inputs) (shared with the dice cost).

    The official expression, alpha (1 - p)^g BCE(x, 1) @ t^T + (1 - alpha) p^g BCE(x, 0) @ (1 - t)^T, with
    BCE-with-logits against all-zero / all-one targets written as softplus(x) and softplus(-x) = softplus(x)
    - x (one softplus pass instead of two log-sigmoid passes over two constant target tensors), the alpha
    factors applied to the small [Q, M] products, and in-place steps (on CPU each fresh [Q, P] buffer
    costs about a pass in page faults). Differences are float rounding, in terms (1 - p)^g scales to nothing.
    """
    num_pixels = inputs.shape[1]
    focal_neg = F.softplus(inputs)  # BCE(x, 0)
    focal_pos = focal_neg - inputs  # BCE(x, 1)
    if gamma == 2.0:  # the official value: no temporary at all
        focal_neg.mul_(prob).mul_(prob)
        one_m = torch.rsub(prob, 1.0)
        focal_pos.mul_(one_m).mul_(one_m)
    else:
        focal_neg.mul_(prob.pow(gamma))
        focal_pos.mul_(torch.rsub(prob, 1.0).pow_(gamma))
    cost_pos = focal_pos @ targets.T
    cost_neg = focal_neg @ (1 - targets).T
    if alpha >= 0:
        cost_pos = cost_pos * alpha
        cost_neg = cost_neg * (1 - alpha)
    return (cost_pos + cost_neg) / num_pixels


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice cost 1 - (2|p t| + 1) / (|p| + |t| + 1) with +1 smoothing (official
    ``mask_former/modeling/matcher.py``).

    Args:
        inputs: ``[Q, P]`` mask logits; targets: ``[M, P]`` binary masks. Returns ``[Q, M]``.
    """
    return _dice_cost(inputs.sigmoid(), targets)


def _dice_cost(prob: Tensor, targets: Tensor) -> Tensor:
    numerator = 2 * (prob @ targets.T)
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _solve(cost: Tensor, image_index: int) -> tuple[Tensor, Tensor]:
    """Minimum-cost assignment of a [Q, M] cost matrix with scipy (CPU), as the official matcher."""
    cost_np = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(cost_np).all():
        raise ValueError(f"matching cost of image {image_index} in the batch has NaN/inf entries "
                         "(diverged predictions?)")
    rows, cols = linear_sum_assignment(cost_np)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher(nn.Module):
    """Bipartite matching by mask, per image (official ``mask_former/modeling/matcher.py``).

    Cost C[i, j] = cost_class * (-p_i(c_j)) + cost_mask * focal(i, j) + cost_dice * dice(i, j), with p the
    softmax over K+1 classes, focal and dice as pixel means/ratios at the prediction resolution: the GT masks
    are downsampled with *nearest* interpolation to ``pred_masks``' size (h, w); predictions are not upsampled.
    Defaults are the official ones: class weight hard-coded to 1, MASK_WEIGHT 20, DICE_WEIGHT 1 (official
    ``mask_former/config.py``; ``matcher.py``); focal alpha 0.25, gamma 2.
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 20.0, cost_dice: float = 1.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ConfigError("HungarianMatcher: all costs are 0 (cost_class, cost_mask, cost_dice)")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost_matrix(self, pred_logits: Tensor, pred_masks: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
        """Cost of one image: pred_logits [Q, K+1], pred_masks [Q, h, w], labels [M], masks [M, H, W] -> [Q, M]."""
        prob = pred_logits.float().softmax(-1)
        cost_class = -prob[:, labels]
        out_mask = pred_masks.float().flatten(1)  # [Q, h*w]
        tgt = masks.to(out_mask.dtype)[:, None]
        tgt = F.interpolate(tgt, size=pred_masks.shape[-2:], mode="nearest")[:, 0].flatten(1)  # [M, h*w]
        prob_mask = out_mask.sigmoid()
        cost_mask = _focal_cost(out_mask, prob_mask, tgt, self.focal_alpha, self.focal_gamma)
        cost_dice = _dice_cost(prob_mask, tgt)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def match_layers(self, layers: list[dict], targets: list[dict]) -> list[MatchIndices]:
        """``[self(out, targets) for out in layers]`` with the costs of all L layers of an image computed in one
        pass (rows of the [L*Q, M] cost are per query, so each layer's block equals its own cost matrix) and the
        GT masks downsampled once. Each layer is still solved on its own (official
        ``mask_former/modeling/matcher.py``)."""
        if len({tuple(out["pred_masks"].shape) for out in layers}) != 1:
            return [self(out, targets) for out in layers]
        pred_logits = torch.stack([out["pred_logits"] for out in layers], 1)  # [B, L, Q, K+1]
        pred_masks = torch.stack([out["pred_masks"] for out in layers], 1)  # [B, L, Q, h, w]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]}")
        num_layers, num_queries = pred_logits.shape[1:3]
        per_layer: list[MatchIndices] = [[] for _ in range(num_layers)]
        for b, tgt in enumerate(targets):
            labels = tgt["labels"].to(pred_logits.device)
            if labels.numel() == 0:
                for indices in per_layer:
                    indices.append(_empty_pair())
                continue
            cost = self.cost_matrix(pred_logits[b].flatten(0, 1), pred_masks[b].flatten(0, 1), labels,
                                    tgt["masks"].to(pred_masks.device))
            for indices, block in zip(per_layer, cost.split(num_queries)):
                indices.append(_solve(block, b))
        return per_layer

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> MatchIndices:
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]}")
        indices = []
        for b, tgt in enumerate(targets):
            labels = tgt["labels"].to(pred_logits.device)
            if labels.numel() == 0:
                indices.append(_empty_pair())
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], labels, tgt["masks"].to(pred_masks.device))
            indices.append(_solve(cost, b))
        return indices


class FixedMatcher(nn.Module):
    """MaskFormer-fixed (paper Table 4; the author's recipe in MaskFormer issue #22): query i predicts class i,
    so N must equal K.

    Per image the pairs are ``(labels, arange(M))``: each GT segment is matched to the query indexed by
    its class id; queries of absent classes become "no object". Meant for semantic targets (one segment
    per class); two segments with the same class in one image are a DataError.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> MatchIndices:
        num_queries = outputs["pred_logits"].shape[1]
        if num_queries != self.num_classes:
            raise ConfigError(f"FixedMatcher needs num_queries == num_classes, got num_queries={num_queries} "
                              f"and num_classes={self.num_classes}")
        indices = []
        for b, tgt in enumerate(targets):
            labels = tgt["labels"].to("cpu", torch.int64)
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(f"FixedMatcher: image {b} has a label outside 0..{self.num_classes - 1}: "
                                f"{labels.tolist()}")
            if labels.unique().numel() != labels.numel():
                raise DataError(f"FixedMatcher: image {b} has several segments of one class {labels.tolist()}; "
                                "fixed matching needs one segment per class (semantic targets)")
            indices.append((labels.clone(), torch.arange(labels.numel(), dtype=torch.int64)))
        return indices


class BoxMatcher(nn.Module):
    """DETR's bipartite matching by box (paper Table 5; DETR ``models/matcher.py``).

    Cost = cost_class * (-p(c)) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU), DETR's weights 1 / 5 / 2.
    Needs ``pred_boxes`` [B, Q, 4]; target boxes are ``targets[b]["boxes"]`` when present, else
    ``masks_to_boxes(masks)`` (normalised by the padded size, the ARCHITECTURE targets contract).
    Targets with an empty box (a segment the crop removed) are left unmatched, as DETR drops them.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ConfigError("BoxMatcher: all costs are 0 (cost_class, cost_bbox, cost_giou)")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> MatchIndices:
        if "pred_boxes" not in outputs:
            raise ConfigError("BoxMatcher needs outputs['pred_boxes']: build the model with box_head=True")
        pred_logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        indices = []
        for b, tgt in enumerate(targets):
            labels = tgt["labels"].to(pred_logits.device)
            if labels.numel() == 0:
                indices.append(_empty_pair())
                continue
            tgt_boxes = target_boxes(tgt).to(pred_boxes.device, torch.float32)
            # Segments a crop removed (all-False masks) have no box: DETR drops them from the targets
            # (detr datasets/transforms.py `crop`: keep boxes with x1 > x0 and y1 > y0), so they stay unmatched.
            keep = torch.nonzero((tgt_boxes[:, 2] > 0) & (tgt_boxes[:, 3] > 0)).flatten()
            if keep.numel() == 0:
                indices.append(_empty_pair())
                continue
            labels, tgt_boxes = labels[keep], tgt_boxes[keep]
            prob = pred_logits[b].float().softmax(-1)
            out_boxes = pred_boxes[b].float()
            cost = (self.cost_class * -prob[:, labels]
                    + self.cost_bbox * torch.cdist(out_boxes, tgt_boxes, p=1)
                    - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(out_boxes), box_cxcywh_to_xyxy(tgt_boxes)))
            rows, cols = _solve(cost, b)
            indices.append((rows, keep.cpu()[cols]))
        return indices


def target_boxes(target: dict) -> Tensor:
    """The [M, 4] normalised cxcywh boxes of one target dict (``boxes`` or derived from ``masks``)."""
    if "boxes" in target:
        return target["boxes"]
    return masks_to_boxes(target["masks"])
