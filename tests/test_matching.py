"""Matchers: hand-computed costs, empty targets, more targets than queries, batched == per-image,
fixed pairs, box matching, and permutation invariance under query permutation (hypothesis)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from maskformer_core.errors import ConfigError, DataError
from maskformer_core.matching import (BoxMatcher, FixedMatcher, HungarianMatcher, batch_dice_cost,
                                      batch_sigmoid_focal_cost)
from maskformer_core.models.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, masks_to_boxes

torch.set_num_threads(1)


def _focal_pixel(x: float, t: float, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-x))
    if t == 1:
        return alpha * (1 - p) ** gamma * -math.log(p)
    return (1 - alpha) * p**gamma * -math.log(1 - p)


def test_cost_matrix_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])  # Q=2, K=2 (+ no-object)
    pred = torch.tensor([[[3.0, -3.0], [3.0, -3.0]], [[-2.0, 2.0], [1.0, 0.0]]])  # [2, 2, 2]
    masks = torch.tensor([[[1, 0], [1, 0]], [[0, 1], [0, 1]]], dtype=torch.bool)
    labels = torch.tensor([0, 1])
    cost = HungarianMatcher().cost_matrix(logits, pred, labels, masks)
    prob = logits.softmax(-1)
    for i in range(2):
        for j in range(2):
            xs = pred[i].flatten().tolist()
            ts = masks[j].float().flatten().tolist()
            focal = sum(_focal_pixel(x, t) for x, t in zip(xs, ts)) / 4
            ps = [1 / (1 + math.exp(-x)) for x in xs]
            dice = 1 - (2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)
            expected = -prob[i, labels[j]].item() + 20 * focal + dice
            assert cost[i, j].item() == pytest.approx(expected, rel=1e-5)


def test_gt_masks_downsampled_nearest_to_prediction_size():
    torch.manual_seed(0)
    logits = torch.randn(3, 4)
    pred = torch.randn(3, 4, 4)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, :8] = True
    masks[1, 8:, 8:] = True
    matcher = HungarianMatcher()
    direct = matcher.cost_matrix(logits, pred, torch.tensor([0, 2]), masks)
    small = F.interpolate(masks[:, None].float(), size=(4, 4), mode="nearest")[:, 0] > 0
    assert torch.allclose(direct, matcher.cost_matrix(logits, pred, torch.tensor([0, 2]), small))
    out = pred.flatten(1)
    tgt = small.float().flatten(1)
    assert batch_sigmoid_focal_cost(out, tgt).shape == (3, 2) and batch_dice_cost(out, tgt).shape == (3, 2)
    # the same masks at full resolution would give a different (upsampled-prediction) cost: not what we do
    big_pred = F.interpolate(pred[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert not torch.allclose(direct, matcher.cost_matrix(logits, big_pred, torch.tensor([0, 2]), masks))


def test_matching_picks_obvious_assignment_and_handles_empty_and_excess_targets():
    q, k, h = 3, 4, 8
    logits = torch.full((2, q, k + 1), -5.0)
    pred = torch.full((2, q, h, h), -8.0)
    masks = torch.zeros(4, h, h, dtype=torch.bool)
    for j in range(4):
        masks[j, 2 * j:2 * j + 2] = True
    # image 0: query 2 predicts mask 0 with class 1, query 0 predicts mask 1 with class 3
    logits[0, 2, 1] = 5
    pred[0, 2][masks[0]] = 8
    logits[0, 0, 3] = 5
    pred[0, 0][masks[1]] = 8
    targets = [
        {"labels": torch.tensor([1, 3]), "masks": masks[:2]},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, h, h, dtype=torch.bool)},
    ]
    out = {"pred_logits": logits, "pred_masks": pred}
    (src0, tgt0), (src1, tgt1) = HungarianMatcher()(out, targets)
    assert dict(zip(src0.tolist(), tgt0.tolist())) == {2: 0, 0: 1}
    assert src1.numel() == 0 and tgt1.numel() == 0 and src1.dtype == torch.int64
    # more targets (4) than queries (3): every query matched, one target left over
    many = [{"labels": torch.tensor([0, 1, 2, 3]), "masks": masks}]
    (src, tgt), = HungarianMatcher()({"pred_logits": logits[:1], "pred_masks": pred[:1]}, many)
    assert sorted(src.tolist()) == [0, 1, 2] and len(set(tgt.tolist())) == 3


def test_batched_equals_per_image():
    torch.manual_seed(1)
    b, q, k = 3, 5, 4
    out = {"pred_logits": torch.randn(b, q, k + 1), "pred_masks": torch.randn(b, q, 6, 6)}
    targets = []
    for i in range(b):
        m = torch.rand(i + 1, 24, 24) > 0.5
        targets.append({"labels": torch.randint(0, k, (i + 1,)), "masks": m})
    matcher = HungarianMatcher()
    batched = matcher(out, targets)
    for i in range(b):
        single = matcher({"pred_logits": out["pred_logits"][i:i + 1], "pred_masks": out["pred_masks"][i:i + 1]}, [targets[i]])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), q=st.integers(2, 6), m=st.integers(1, 4))
def test_assignment_invariant_under_query_permutation(seed, q, m):
    g = torch.Generator().manual_seed(seed)
    k = 3
    logits = torch.randn(1, q, k + 1, generator=g)
    pred = torch.randn(1, q, 4, 4, generator=g)
    target = [{"labels": torch.randint(0, k, (m,), generator=g), "masks": torch.rand(m, 8, 8, generator=g) > 0.5}]
    perm = torch.randperm(q, generator=g)
    matcher = HungarianMatcher()
    cost = matcher.cost_matrix(logits[0], pred[0], target[0]["labels"], target[0]["masks"])
    cost_p = matcher.cost_matrix(logits[0, perm], pred[0, perm], target[0]["labels"], target[0]["masks"])
    assert torch.allclose(cost[perm], cost_p)
    src, tgt = matcher({"pred_logits": logits, "pred_masks": pred}, target)[0]
    src_p, tgt_p = matcher({"pred_logits": logits[:, perm], "pred_masks": pred[:, perm]}, target)[0]
    total = cost[src, tgt].sum()
    total_p = cost_p[src_p, tgt_p].sum()
    assert total.item() == pytest.approx(total_p.item(), rel=1e-6, abs=1e-6)  # same optimum
    assert len(src) == len(src_p) == min(q, m)


def test_fixed_matcher_pairs_and_errors():
    out = {"pred_logits": torch.zeros(2, 4, 5), "pred_masks": torch.zeros(2, 4, 2, 2)}
    targets = [{"labels": torch.tensor([3, 0]), "masks": torch.zeros(2, 8, 8, dtype=torch.bool)},
               {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}]
    (s0, t0), (s1, t1) = FixedMatcher(4)(out, targets)
    assert s0.tolist() == [3, 0] and t0.tolist() == [0, 1]
    assert s1.numel() == 0 and t1.numel() == 0
    with pytest.raises(ConfigError, match="num_queries"):
        FixedMatcher(3)(out, targets)
    with pytest.raises(DataError, match="several segments"):
        FixedMatcher(4)(out, [{"labels": torch.tensor([1, 1]), "masks": torch.zeros(2, 8, 8)}] * 2)


def test_masks_to_boxes_and_box_matcher():
    masks = torch.zeros(2, 10, 20, dtype=torch.bool)
    masks[0, 2:5, 4:10] = True  # rows 2..4, cols 4..9 -> edges y 2..5, x 4..10
    boxes = masks_to_boxes(masks)
    assert torch.allclose(boxes[0], torch.tensor([7 / 20, 3.5 / 10, 6 / 20, 3 / 10]))
    assert torch.equal(boxes[1], torch.zeros(4))  # empty mask
    xyxy = box_cxcywh_to_xyxy(boxes[:1])
    assert generalized_box_iou(xyxy, xyxy).item() == pytest.approx(1.0)
    masks[1, 6:10, 0:3] = True
    logits = torch.zeros(1, 2, 3)
    pred_boxes = masks_to_boxes(masks).flip(0)[None]  # query 0 sits on target 1 and vice versa
    (src, tgt), = BoxMatcher()({"pred_logits": logits, "pred_boxes": pred_boxes, "pred_masks": torch.zeros(1, 2, 3, 5)},
                               [{"labels": torch.tensor([0, 1]), "masks": masks}])
    assert dict(zip(src.tolist(), tgt.tolist())) == {0: 1, 1: 0}
    with pytest.raises(ConfigError, match="pred_boxes"):
        BoxMatcher()({"pred_logits": logits}, [{"labels": torch.tensor([0]), "masks": masks[:1]}])


def test_box_matcher_leaves_segments_with_empty_masks_unmatched():
    # A crop can remove a segment from the image (the COCO panoptic mapper's DETR-style crop keeps its
    # all-False mask, as the official detr_panoptic_dataset_mapper.py does). It has no box: DETR drops such
    # targets (detr datasets/transforms.py `crop`, keep = boxes with positive area), so box matching must
    # not pair a query with it, or that query is trained towards the degenerate box (0, 0, 0, 0).
    masks = torch.zeros(3, 10, 20, dtype=torch.bool)
    masks[0, 2:5, 4:10] = True
    masks[2, 6:10, 0:3] = True  # target 1 stays empty
    logits = torch.zeros(2, 4, 3)
    pred_boxes = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    targets = [{"labels": torch.tensor([0, 1, 1]), "masks": masks},
               {"labels": torch.tensor([1]), "masks": torch.zeros(1, 10, 20, dtype=torch.bool)}]
    (src, tgt), (src_empty, tgt_empty) = BoxMatcher()({"pred_logits": logits, "pred_boxes": pred_boxes}, targets)
    assert sorted(tgt.tolist()) == [0, 2] and len(set(src.tolist())) == 2
    assert src_empty.numel() == 0 and tgt_empty.numel() == 0  # only empty segments: nothing matched
