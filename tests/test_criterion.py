"""SetCriterion / PerPixelCriterion against direct hand computations on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskformer_core.criterion import PerPixelCriterion, SetCriterion, build_criterion
from maskformer_core.errors import ConfigError
from maskformer_core.matching import FixedMatcher, HungarianMatcher

torch.set_num_threads(1)


class _Given:
    """A matcher returning fixed indices, to test the losses independently of matching."""

    def __init__(self, indices):
        self.indices = indices

    def __call__(self, outputs, targets):
        return self.indices


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_losses_equal_hand_computation():
    # B=1, Q=2, K=2; predictions 1x1 masks upsampled to the 2x2 target (bilinear of a constant = constant)
    logits = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 0.0, 2.0]]])
    pred_masks = torch.tensor([[[[0.5]], [[-1.0]]]])
    target = {"labels": torch.tensor([1]), "masks": torch.tensor([[[1, 0], [0, 0]]], dtype=torch.bool)}
    crit = SetCriterion(2, _Given([(torch.tensor([0]), torch.tensor([0]))]), {"loss_ce": 1, "loss_mask": 20, "loss_dice": 1})
    losses = crit({"pred_logits": logits, "pred_masks": pred_masks}, [target])
    # CE: query 0 -> class 1 (weight 1), query 1 -> no-object (weight 0.1); weighted mean
    lp = torch.log_softmax(logits[0], -1)
    ce = -(1.0 * lp[0, 1] + 0.1 * lp[1, 2]) / 1.1
    assert losses["loss_ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    p = _sig(0.5)
    ts = [1, 0, 0, 0]
    focal = sum(0.25 * (1 - p) ** 2 * -math.log(p) if t else 0.75 * p**2 * -math.log(1 - p) for t in ts) / 4
    assert losses["loss_mask"].item() == pytest.approx(focal, rel=1e-5)
    dice = 1 - (2 * p + 1) / (4 * p + 1 + 1)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_num_masks_divides_mask_losses_but_not_ce():
    torch.manual_seed(0)
    out = {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 2, 2)}
    masks = torch.rand(2, 8, 8) > 0.5
    idx = [(torch.tensor([0]), torch.tensor([0]))]
    crit = SetCriterion(3, _Given(idx), {})
    one = crit(out, [{"labels": torch.tensor([1]), "masks": masks[:1]}])
    # a second GT mask that stays unmatched doubles num_masks: mask losses halve, CE unchanged
    two = crit(out, [{"labels": torch.tensor([1, 2]), "masks": masks}])
    assert two["loss_ce"].item() == pytest.approx(one["loss_ce"].item())
    assert two["loss_mask"].item() == pytest.approx(one["loss_mask"].item() / 2)
    assert two["loss_dice"].item() == pytest.approx(one["loss_dice"].item() / 2)


def test_mask_loss_uses_bilinear_upsampled_predictions():
    torch.manual_seed(2)
    pred = torch.randn(1, 1, 3, 3)
    masks = torch.rand(1, 12, 12) > 0.5
    crit = SetCriterion(1, _Given([(torch.tensor([0]), torch.tensor([0]))]), {})
    losses = crit({"pred_logits": torch.zeros(1, 1, 2), "pred_masks": pred}, [{"labels": torch.tensor([0]), "masks": masks}])
    up = F.interpolate(pred, size=(12, 12), mode="bilinear", align_corners=False).flatten(1)
    t = masks.float().flatten(1)
    prob = up.sigmoid()
    dice = 1 - (2 * (prob * t).sum() + 1) / (prob.sum() + t.sum() + 1)
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)


def test_aux_keys_weights_and_empty_targets():
    crit = build_criterion("maskformer", num_classes=3, matching="bipartite", dec_layers=3)
    assert crit.weight_dict == {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0, "loss_ce_0": 1.0, "loss_mask_0": 20.0,
                                "loss_dice_0": 1.0, "loss_ce_1": 1.0, "loss_mask_1": 20.0, "loss_dice_1": 1.0}
    assert isinstance(crit.matcher, HungarianMatcher) and crit.empty_weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    torch.manual_seed(3)

    def layer():
        return {"pred_logits": torch.randn(2, 4, 4, requires_grad=True), "pred_masks": torch.randn(2, 4, 4, 4, requires_grad=True)}

    out = layer()
    out["aux_outputs"] = [layer(), layer()]
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 16, 16) > 0.5},
               {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}]
    losses = crit(out, targets)
    assert set(losses) == set(crit.weight_dict)
    total = sum(crit.weight_dict[k] * v for k, v in losses.items())
    total.backward()
    assert out["aux_outputs"][1]["pred_masks"].grad is not None
    # a batch without any GT mask: mask losses are 0, CE is all no-object
    empty = [targets[1], targets[1]]
    losses = crit(layer(), empty)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0 and losses["loss_ce"].item() > 0
    assert "loss_ce_0" not in build_criterion("maskformer", num_classes=3, dec_layers=1).weight_dict


def test_build_criterion_variants_and_errors():
    fixed = build_criterion("maskformer", num_classes=4, matching="fixed", num_queries=4)
    assert isinstance(fixed.matcher, FixedMatcher)
    box = build_criterion("maskformer", num_classes=4, matching="box", dec_layers=2)
    assert box.weight_dict["loss_bbox"] == 5.0 and box.weight_dict["loss_giou_0"] == 2.0
    with pytest.raises(ConfigError, match="num_queries"):
        build_criterion("maskformer", num_classes=4, matching="fixed", num_queries=100)
    with pytest.raises(ConfigError, match="matching"):
        build_criterion("maskformer", num_classes=4, matching="greedy")
    with pytest.raises(ConfigError, match="arch"):
        build_criterion("segformer", num_classes=4)


def test_box_losses_zero_for_perfect_boxes():
    from maskformer_core.models.box_ops import masks_to_boxes
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    masks[1, 4:, 2:] = True
    crit = build_criterion("maskformer", num_classes=2, matching="box", dec_layers=1)
    out = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 2, 2), "pred_boxes": masks_to_boxes(masks)[None]}
    losses = crit(out, [{"labels": torch.tensor([0, 1]), "masks": masks}])
    assert losses["loss_bbox"].item() == pytest.approx(0, abs=1e-6) and losses["loss_giou"].item() == pytest.approx(0, abs=1e-6)


def test_per_pixel_criterion():
    torch.manual_seed(4)
    logits = torch.randn(1, 3, 2, 2)
    target = torch.randint(0, 3, (1, 8, 8))
    target[0, 0] = 255
    crit = build_criterion("per_pixel_plus", num_classes=3, ignore_label=255, dec_layers=3)
    assert crit.weight_dict == {"loss_sem_seg": 1.0, "loss_sem_seg_0": 1.0, "loss_sem_seg_1": 1.0}
    losses = crit({"sem_seg_logits": logits, "aux_sem_seg_logits": [logits, logits]}, [{"sem_seg": target[0]}])
    up = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
    lp = torch.log_softmax(up, 1)[0]
    valid = target[0] != 255
    expected = -lp.gather(0, target[0].clamp(max=2)[None])[0][valid].mean()
    assert losses["loss_sem_seg"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss_sem_seg_1"].item() == pytest.approx(expected.item(), rel=1e-5)
    all_ignore = PerPixelCriterion(255, aux=False)({"sem_seg_logits": logits}, torch.full((1, 8, 8), 255))
    assert all_ignore["loss_sem_seg"].item() == 0.0
    assert set(build_criterion("per_pixel", num_classes=3).weight_dict) == {"loss_sem_seg"}
