"""Training losses: SetCriterion (mask classification, official ``mask_former/modeling/criterion.py``) and
PerPixelCriterion (baselines, ``mask_former/modeling/heads/per_pixel_baseline.py``).

Both return a dict of *unweighted* loss terms; ``criterion.weight_dict`` holds the weights and the total loss is
``sum(weight_dict[k] * losses[k] for k in losses if k in weight_dict)`` (detectron2's SimpleTrainer sums the
weighted dict, detectron2 ``engine/train_loop.py``). ``build_criterion`` builds matcher + criterion.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from maskformer_core.errors import ConfigError
from maskformer_core.matching import BoxMatcher, FixedMatcher, HungarianMatcher, MatchIndices, target_boxes
from maskformer_core.models.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

# Official loss weights (official ``mask_former/config.py`` ``MODEL.MASK_FORMER.{DICE_WEIGHT, MASK_WEIGHT,
# NO_OBJECT_WEIGHT}``; ``mask_former_model.py``): class 1, focal ("MASK_WEIGHT") 20, dice 1, no-object 0.1.
CLASS_WEIGHT = 1.0
MASK_WEIGHT = 20.0
DICE_WEIGHT = 1.0
NO_OBJECT_WEIGHT = 0.1
# DETR's box loss / cost weights (paper Table 5 uses DETR's box matching): L1 5, GIoU 2.
BOX_L1_WEIGHT = 5.0
BOX_GIOU_WEIGHT = 2.0


def focal_loss_per_mask(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss averaged over pixels, per mask: inputs ``[N, P]`` logits, targets ``[N, P]`` -> ``[N]``."""
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1)


def dice_loss_per_mask(inputs: Tensor, targets: Tensor) -> Tensor:
    """1 - (2|p t| + 1) / (|p| + |t| + 1) per mask: inputs ``[N, P]`` logits, targets ``[N, P]`` -> ``[N]``."""
    prob = inputs.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


class _BinaryFocalDice(torch.autograd.Function):
    """Per-mask focal loss (mean over pixels) and dice loss for {0, 1} targets in one autograd node.

    Same function as `focal_loss_per_mask` and `dice_loss_per_mask` (the official formulas,
    ``mask_former/modeling/criterion.py``), computed with fewer passes over the [N, P] tensors: with binary t
    and z = x if t = 0 else -x, the BCE is softplus(z) and 1 - p_t is sigmoid(z), so the focal term is a_t *
    softplus(z) * sigmoid(z)^gamma, and the gradient is written out in closed form (d/dz softplus(z)
    sigmoid(z)^g = sigmoid^g (sigmoid + g softplus (1 - sigmoid)); ds/dx = sigmoid(z)(1 - sigmoid(z))). Four new
    [N, P] buffers forward and three backward, against 17 intermediate [N, P] tensors in the explicit forward
    plus their autograd backward (R50 MaskFormer at 256 px, 6 layers: 72 x 65536 logits); the values differ from
    the explicit formulas by float rounding only (tests/test_fast_paths.py).
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, alpha: float, gamma: float):  # x [N, P] logits, t [N, P] bool
        a1, a0 = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)  # a_t for t = 1 and t = 0
        # Arithmetic on the 0/1 float mask rather than torch.where(bool, ...) (~10x faster on CPU), and
        # in-place steps: on CPU a fresh [N, P] buffer costs as much as a pass (page faults).
        tf = t.to(x.dtype)
        z = torch.addcmul(x, x, tf, value=-2.0)  # -x where t = 1, x where t = 0 (exact in floating point)
        sg = torch.sigmoid(z)  # 1 - p_t
        sp = F.softplus(z)  # BCE with logits
        w = torch.pow(sg, gamma, out=z)  # into z's buffer: z is spent
        w.mul_(sp)  # BCE * (1 - p_t)^gamma
        focal = a0 * w.sum(1)
        focal += (a1 - a0) * w.mul_(tf).sum(1)  # a_t = a0 + (a1 - a0) t
        focal /= x.shape[1]
        s = torch.sigmoid(x, out=w)
        denominator = s.sum(1) + tf.sum(1) + 1
        numerator = 2 * s.mul_(tf).sum(1) + 1
        dice = 1 - numerator / denominator
        ctx.save_for_backward(tf, sg, sp, numerator, denominator)
        ctx.alpha, ctx.gamma = (a1, a0), gamma
        return focal, dice

    @staticmethod
    def backward(ctx, g_focal: Tensor, g_dice: Tensor):
        tf, sg, sp, numerator, denominator = ctx.saved_tensors
        (a1, a0), gamma = ctx.alpha, ctx.gamma
        cf = (g_focal / sg.shape[1]).unsqueeze(1)
        one_m = 1 - sg
        grad = sp * one_m
        grad.mul_(gamma).add_(sg)  # d/dz [softplus(z) sigmoid(z)^gamma] = sigmoid^gamma (sigmoid + gamma softplus (1 - sigmoid))
        if gamma == 2.0:
            grad.mul_(sg).mul_(sg)
        else:
            grad.mul_(sg.pow(gamma))
        coef = torch.addcmul(a0 * cf, tf, (-a1 - a0) * cf)  # a_t * dz/dx: -a1 where t = 1, a0 where t = 0
        grad.mul_(coef)
        # dice: d/ds_i = -(2 t_i D - N) / D^2, times ds/dx = sigmoid(z)(1 - sigmoid(z))
        a = (g_dice * numerator / denominator ** 2).unsqueeze(1)
        b = (-2 * g_dice / denominator).unsqueeze(1)
        torch.addcmul(a, tf, b, out=coef)
        grad.add_(one_m.mul_(sg).mul_(coef))
        return grad, None, None, None


def focal_dice_per_mask(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """(focal_loss_per_mask, dice_loss_per_mask) of inputs ``[N, P]`` logits and targets ``[N, P]``: through
    the fused `_BinaryFocalDice` when the targets are bool masks, through the explicit formulas otherwise."""
    if targets.dtype == torch.bool:
        return _BinaryFocalDice.apply(inputs, targets, alpha, gamma)
    return focal_loss_per_mask(inputs, targets, alpha, gamma), dice_loss_per_mask(inputs, targets)


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss: mean over pixels per mask, summed over masks, divided by num_masks
    (``criterion.py``).

    Args: inputs ``[N, P]`` logits, targets ``[N, P]`` in {0, 1}. Returns a scalar.
    """
    return focal_loss_per_mask(inputs, targets, alpha, gamma).sum() / num_masks


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss with +1 smoothing, summed over masks, divided by num_masks (``criterion.py``).

    Args: inputs ``[N, P]`` logits, targets ``[N, P]`` in {0, 1}. Returns a scalar.
    """
    return dice_loss_per_mask(inputs, targets).sum() / num_masks


def bilinear_matrix(in_size: int, out_size: int, device=None) -> Tensor:
    """``[out_size, in_size]`` matrix A with ``A @ x`` = 1-D bilinear resize of x (align_corners False),
    built with PyTorch's source-index rule (src = (dst + 0.5) * in/out - 0.5, clamped at 0; upper
    neighbour clamped to the last index), so both 2-D passes reproduce F.interpolate up to float rounding.
    """
    scale = in_size / out_size
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    lam1 = src - i0
    a = torch.zeros(out_size, in_size, dtype=torch.float32, device=device)
    rows = torch.arange(out_size, device=device)
    a.index_put_((rows, i0), 1 - lam1, accumulate=True)
    a.index_put_((rows, i1), lam1, accumulate=True)
    return a


def upsample_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """F.interpolate(x[:, None], size, mode="bilinear", align_corners=False)[:, 0] for x ``[N, h, w]``, as
    two matrix products: on CPU its backward is a batched matmul instead of the scalar scatter kernel
    (~6x faster for the criterion's 32->128 masks). Same values up to float rounding."""
    h, w = x.shape[-2:]
    ah = bilinear_matrix(h, size[0], x.device).to(x.dtype)
    aw = bilinear_matrix(w, size[1], x.device).to(x.dtype)
    return ah @ x @ aw.T


def _src_permutation(indices: MatchIndices) -> tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def _stack_target_masks(targets: list[dict], indices: MatchIndices, device, dtype=torch.float32) -> Tensor:
    """Matched GT masks as [N, H, W] `dtype`, zero-padded to the largest mask size in the batch."""
    sizes = [t["masks"].shape[-2:] for t in targets]
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    chunks = []
    for t, (_, tgt) in zip(targets, indices):
        m = t["masks"][tgt.to(t["masks"].device)]
        if m.shape[-2:] != (h, w):
            m = F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2]))  # prepare_targets pads with 0 (``criterion.py``)
        chunks.append(m.to(device=device, dtype=dtype))
    if not chunks:
        return torch.zeros((0, h, w), device=device, dtype=dtype)
    return torch.cat(chunks)


def _num_masks(targets: list[dict], device) -> float:
    """GT masks in the batch; summed over processes and divided by world size, clamped >= 1 (``criterion.py``)."""
    num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], dtype=torch.float32, device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        world_size = dist.get_world_size()
    return torch.clamp(num / world_size, min=1).item()


class SetCriterion(nn.Module):
    """Mask-classification loss of MaskFormer (``criterion.py``).

    Args:
        num_classes: K (no-object is index K).
        matcher: a matcher object (``HungarianMatcher``, ``FixedMatcher``, ``BoxMatcher``).
        weight_dict: loss name -> weight, including the aux copies ``loss_ce_0`` ...
        eos_coef: class weight of no-object in the CE (0.1, ``MODEL.MASK_FORMER.NO_OBJECT_WEIGHT``).
        losses: subset of ``("labels", "masks", "boxes")``.

    ``forward(outputs, targets)``: outputs ``pred_logits [B,Q,K+1]``, ``pred_masks [B,Q,h,w]``, optional
    ``pred_boxes [B,Q,4]`` and ``aux_outputs`` (list of dicts with the same keys); targets: list of ``{"labels":
    [M], "masks": [M,H,W]}``. Returns the unweighted terms ``loss_ce``, ``loss_mask``, ``loss_dice``
    (``loss_bbox``, ``loss_giou`` with "boxes") and ``<name>_<i>`` for aux layer i. Every decoder layer is
    matched on its own (``criterion.py``).
    """

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict[str, float], eos_coef: float = NO_OBJECT_WEIGHT,
                 losses: Sequence[str] = ("labels", "masks"), focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        unknown = set(losses) - {"labels", "masks", "boxes"}
        if unknown:
            raise ConfigError(f"SetCriterion: unknown losses {sorted(unknown)}; allowed labels, masks, boxes")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs: dict, targets: list[dict], indices: MatchIndices, num_masks: float) -> dict[str, Tensor]:
        """Weighted CE over all B*Q queries; PyTorch's weighted mean, NOT divided by num_masks (``criterion.py``)."""
        logits = outputs["pred_logits"].float()
        batch_idx, src_idx = _src_permutation(indices)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        if batch_idx.numel():
            matched = torch.cat([t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)])
            classes[batch_idx.to(logits.device), src_idx.to(logits.device)] = matched.to(logits.device, torch.int64)
        loss = F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight.to(logits.device))
        return {"loss_ce": loss}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: MatchIndices, num_masks: float) -> dict[str, Tensor]:
        """Focal + dice on matched pairs, predictions bilinearly upsampled to the GT size (``criterion.py``)."""
        pred_masks = outputs["pred_masks"]
        batch_idx, src_idx = _src_permutation(indices)
        src = pred_masks[batch_idx.to(pred_masks.device), src_idx.to(pred_masks.device)].float()  # [N, h, w]
        tgt = _stack_target_masks(targets, indices, pred_masks.device)  # [N, H, W]
        if src.shape[0] == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph connected (no matched pair in the batch)
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        src, tgt = src.flatten(1), tgt.flatten(1)
        return {
            "loss_mask": sigmoid_focal_loss(src, tgt, num_masks, self.focal_alpha, self.focal_gamma),
            "loss_dice": dice_loss(src, tgt, num_masks),
        }

    def loss_boxes(self, outputs: dict, targets: list[dict], indices: MatchIndices, num_masks: float) -> dict[str, Tensor]:
        """DETR's L1 (cxcywh) and 1 - GIoU on matched pairs, each summed and divided by num_masks."""
        if "pred_boxes" not in outputs:
            raise ConfigError("loss 'boxes' needs outputs['pred_boxes']: build the model with box_head=True")
        pred_boxes = outputs["pred_boxes"]
        batch_idx, src_idx = _src_permutation(indices)
        src = pred_boxes[batch_idx.to(pred_boxes.device), src_idx.to(pred_boxes.device)].float()
        if src.shape[0] == 0:
            zero = pred_boxes.sum() * 0.0
            return {"loss_bbox": zero, "loss_giou": zero.clone()}
        tgt = torch.cat([target_boxes(t)[j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)])
        tgt = tgt.to(src.device, torch.float32)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_masks
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_masks}

    def _layer_losses(self, outputs: dict, targets: list[dict], num_masks: float) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets)
        losses: dict[str, Tensor] = {}
        for name in self.losses:
            losses.update(getattr(self, f"loss_{name}")(outputs, targets, indices, num_masks))
        return losses

    def _masks_all_layers(self, layers: list[dict], targets: list[dict], indices: list[MatchIndices],
                          num_masks: float) -> list[dict[str, Tensor]]:
        """``loss_masks`` of every layer in one pass: the matched predictions of all layers are upsampled
        and scored together, then summed per layer. Per-mask values are those of ``loss_masks``."""
        pred_masks = [out["pred_masks"] for out in layers]
        device = pred_masks[0].device
        srcs, tgt_rows, counts = [], [], []
        offsets = torch.tensor([0] + [len(t["labels"]) for t in targets]).cumsum(0)
        for pm, idx in zip(pred_masks, indices):
            batch_idx, src_idx = _src_permutation(idx)
            srcs.append(pm[batch_idx.to(device), src_idx.to(device)])
            tgt_rows.append(torch.cat([j + offsets[b] for b, (_, j) in enumerate(idx)]) if idx else torch.zeros(0, dtype=torch.int64))
            counts.append(int(batch_idx.numel()))
        if sum(counts) == 0:
            return [{"loss_mask": pm.sum() * 0.0, "loss_dice": pm.sum() * 0.0} for pm in pred_masks]
        # every GT mask once, as float, padded to the batch size (prepare_targets pads with 0, ``criterion.py``)
        all_idx = [(None, torch.arange(len(t["labels"]))) for t in targets]
        # bool GT masks (the mappers' format) take the fused focal + dice path
        binary = all(t["masks"].dtype == torch.bool for t in targets)
        all_tgt = _stack_target_masks(targets, all_idx, device, torch.bool if binary else torch.float32)  # [M_total, H, W]
        tgt = all_tgt[torch.cat(tgt_rows).to(device)].flatten(1)
        src = upsample_bilinear(torch.cat(srcs).float(), all_tgt.shape[-2:]).flatten(1)
        focal, dice = focal_dice_per_mask(src, tgt, self.focal_alpha, self.focal_gamma)
        focal, dice = focal.split(counts), dice.split(counts)
        out = []
        for pm, f, d, n in zip(pred_masks, focal, dice, counts):
            if n == 0:
                out.append({"loss_mask": pm.sum() * 0.0, "loss_dice": pm.sum() * 0.0})
            else:
                out.append({"loss_mask": f.sum() / num_masks, "loss_dice": d.sum() / num_masks})
        return out

    def forward(self, outputs: dict, targets: list[dict], num_masks: float | None = None) -> dict[str, Tensor]:
        """Loss terms of the batch. ``num_masks``: the mask-loss normaliser; None = the GT masks of this batch
        averaged over processes (official mask_former/modeling/criterion.py, `num_masks`). A caller that splits one official per-GPU batch set into
        several forward passes (gradient accumulation) passes the value of the whole step instead."""
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(f"SetCriterion: {len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]}")
        if num_masks is None:
            num_masks = _num_masks(targets, outputs["pred_logits"].device)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        layers = [final] + list(outputs.get("aux_outputs") or [])
        suffixes = [""] + [f"_{i}" for i in range(len(layers) - 1)]
        # every decoder layer is matched on its own (``criterion.py``); a matcher may score all layers in one pass
        if hasattr(self.matcher, "match_layers"):
            indices = self.matcher.match_layers(layers, targets)
        else:
            indices = [self.matcher(out, targets) for out in layers]
        mask_losses = self._masks_all_layers(layers, targets, indices, num_masks) if "masks" in self.losses else None
        losses: dict[str, Tensor] = {}
        for li, (out, idx, sfx) in enumerate(zip(layers, indices, suffixes)):
            for name in self.losses:
                terms = mask_losses[li] if name == "masks" else getattr(self, f"loss_{name}")(out, targets, idx, num_masks)
                losses.update({f"{k}{sfx}": v for k, v in terms.items()})
        return losses


class PerPixelCriterion(nn.Module):
    """Per-pixel CE of PerPixelBaseline(+) (official ``mask_former/modeling/heads/per_pixel_baseline.py``).

    ``forward(outputs, targets)``: outputs ``sem_seg_logits [B,K,h,w]`` (+ ``aux_sem_seg_logits`` list for
    PerPixelBaseline+); targets either a LongTensor ``[B,H,W]`` or a list of dicts with ``sem_seg`` ``[H,W]``
    (padded with ignore_index to the largest size). Logits are upsampled x4 bilinearly (align_corners False, the
    common stride) and a mean CE with ``ignore_index`` is taken. Returns ``loss_sem_seg`` and, with ``aux``,
    ``loss_sem_seg_{i}`` per aux layer (weight 1, ``per_pixel_baseline.py``
    ``PerPixelBaselinePlusHead.losses``).
    """

    def __init__(self, ignore_index: int, aux: bool = True, num_aux: int = 0, loss_weight: float = 1.0, common_stride: int = 4):
        super().__init__()
        self.ignore_index = ignore_index
        self.aux = aux
        self.common_stride = common_stride
        self.weight_dict = {"loss_sem_seg": loss_weight}
        if aux:
            self.weight_dict.update({f"loss_sem_seg_{i}": loss_weight for i in range(num_aux)})

    def _targets(self, targets, device) -> Tensor:
        if isinstance(targets, Tensor):
            return targets.to(device, torch.int64)
        maps = [t["sem_seg"] for t in targets]
        h = max(m.shape[-2] for m in maps)
        w = max(m.shape[-1] for m in maps)
        out = torch.full((len(maps), h, w), self.ignore_index, dtype=torch.int64, device=device)
        for i, m in enumerate(maps):
            out[i, : m.shape[-2], : m.shape[-1]] = m.to(device, torch.int64)
        return out

    def _ce(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = F.interpolate(logits.float(), scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        if logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"PerPixelCriterion: upsampled logits {tuple(logits.shape[-2:])} do not match the "
                             f"target size {tuple(target.shape[-2:])}")
        if not bool((target != self.ignore_index).any()):
            # PyTorch's mean over zero valid pixels is NaN; an all-ignore batch contributes 0 instead.
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, reduction="mean", ignore_index=self.ignore_index)

    def forward(self, outputs: dict, targets, num_masks: float | None = None) -> dict[str, Tensor]:
        """``num_masks`` is accepted for a uniform call and not used (per-pixel CE is a pixel mean)."""
        logits = outputs["sem_seg_logits"]
        target = self._targets(targets, logits.device)
        losses = {"loss_sem_seg": self._ce(logits, target)}
        if self.aux:
            for i, aux_logits in enumerate(outputs.get("aux_sem_seg_logits") or []):
                losses[f"loss_sem_seg_{i}"] = self._ce(aux_logits, target)
        return losses


def build_criterion(arch: str, num_classes: int, matching: str = "bipartite", ignore_label: int = 255,
                    deep_supervision: bool = True, dec_layers: int = 6, num_queries: int | None = None,
                    no_object_weight: float = NO_OBJECT_WEIGHT, class_weight: float = CLASS_WEIGHT,
                    mask_weight: float = MASK_WEIGHT, dice_weight: float = DICE_WEIGHT,
                    box_l1_weight: float = BOX_L1_WEIGHT, box_giou_weight: float = BOX_GIOU_WEIGHT) -> nn.Module:
    """Build the criterion (with its matcher) for an architecture.

    Args:
        arch: ``maskformer`` | ``per_pixel`` | ``per_pixel_plus``.
        matching: ``bipartite`` (Hungarian by mask) | ``fixed`` (needs num_queries == K) | ``box``.
        deep_supervision / dec_layers: aux terms ``_0 .. _{dec_layers-2}`` (none for one layer:
    ``mask_former_model.py`` adds aux weights for ``dec_layers - 1`` layers).

    The returned module has ``weight_dict`` covering every term it produces.
    """
    num_aux = dec_layers - 1 if deep_supervision else 0
    if dec_layers < 1:
        raise ConfigError(f"dec_layers must be >= 1, got {dec_layers}")
    if arch == "per_pixel":
        return PerPixelCriterion(ignore_label, aux=False)
    if arch == "per_pixel_plus":
        return PerPixelCriterion(ignore_label, aux=deep_supervision, num_aux=num_aux)
    if arch != "maskformer":
        raise ConfigError(f"unknown arch {arch!r}; expected maskformer, per_pixel or per_pixel_plus")
    losses: tuple[str, ...] = ("labels", "masks")
    weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    if matching == "bipartite":
        matcher: nn.Module = HungarianMatcher(cost_class=1.0, cost_mask=mask_weight, cost_dice=dice_weight)
    elif matching == "fixed":
        if num_queries is not None and num_queries != num_classes:
            raise ConfigError(f"matching 'fixed' needs num_queries == num_classes, got {num_queries} != {num_classes}")
        matcher = FixedMatcher(num_classes)
    elif matching == "box":
        matcher = BoxMatcher(cost_class=1.0, cost_bbox=box_l1_weight, cost_giou=box_giou_weight)
        losses = ("labels", "masks", "boxes")
        weight_dict.update({"loss_bbox": box_l1_weight, "loss_giou": box_giou_weight})
    else:
        raise ConfigError(f"unknown matching {matching!r}; expected bipartite, fixed or box")
    full = dict(weight_dict)
    for i in range(num_aux):
        full.update({f"{k}_{i}": v for k, v in weight_dict.items()})
    return SetCriterion(num_classes, matcher, full, eos_coef=no_object_weight, losses=losses)
