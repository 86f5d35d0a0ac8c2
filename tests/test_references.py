"""References independent of the code under test: the optimum of the matching by enumerating every
assignment, box losses (L1 + GIoU) worked out by hand, and a detectron2-style MaskFormer checkpoint whose
key names and shapes are written out from the official modules (not taken from our state dict)."""
from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch

from maskformer_core.matching import HungarianMatcher
from maskformer_core.models.box_ops import masks_to_boxes

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------- matching

def _naive_cost(logits, pred, labels, masks) -> np.ndarray:
    """C[i, j] = -softmax(logits_i)[c_j] + 20 * mean focal(i, j) + dice(i, j), pixel by pixel in float64
    (official MaskFormer HungarianMatcher: cost_class 1, cost_mask 20 (MASK_WEIGHT), cost_dice 1, focal
    alpha 0.25 gamma 2, dice +1 smoothing; both on the prediction resolution)."""
    lg = logits.double().numpy()
    prob = np.exp(lg - lg.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    x = pred.double().flatten(1).numpy()
    t = masks.double().flatten(1).numpy()
    p = 1 / (1 + np.exp(-x))
    q, m = x.shape[0], t.shape[0]
    cost = np.zeros((q, m))
    for i in range(q):
        for j in range(m):
            pos = 0.25 * (1 - p[i]) ** 2 * -np.log(p[i])
            neg = 0.75 * p[i] ** 2 * -np.log(1 - p[i])
            focal = np.where(t[j] == 1, pos, neg).mean()
            dice = 1 - (2 * (p[i] * t[j]).sum() + 1) / (p[i].sum() + t[j].sum() + 1)
            cost[i, j] = -prob[i, labels[j]] + 20 * focal + dice
    return cost


def _brute_force_optimum(cost: np.ndarray) -> float:
    """Minimum total cost over every injective assignment of the smaller side into the larger."""
    q, m = cost.shape
    if m <= q:
        return min(sum(cost[perm[j], j] for j in range(m)) for perm in itertools.permutations(range(q), m))
    return min(sum(cost[i, perm[i]] for i in range(q)) for perm in itertools.permutations(range(m), q))


@pytest.mark.parametrize("seed,q,m", [(s, q, m) for s, (q, m) in enumerate(
    [(3, 2), (4, 4), (5, 3), (2, 4), (6, 5), (5, 1), (4, 6), (6, 6)])])
def test_hungarian_matching_reaches_the_brute_force_optimum(seed, q, m):
    g = torch.Generator().manual_seed(seed)
    k = 4
    logits = torch.randn(q, k + 1, generator=g) * 2
    pred = torch.randn(q, 6, 6, generator=g) * 3
    masks = torch.rand(m, 6, 6, generator=g) > 0.5
    labels = torch.randint(0, k, (m,), generator=g)
    (src, tgt), = HungarianMatcher()({"pred_logits": logits[None], "pred_masks": pred[None]},
                                     [{"labels": labels, "masks": masks}])
    cost = _naive_cost(logits, pred, labels, masks)
    assert len(src) == len(tgt) == min(q, m)
    assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)  # one-to-one
    total = float(sum(cost[i, j] for i, j in zip(src.tolist(), tgt.tolist())))
    assert total == pytest.approx(_brute_force_optimum(cost), abs=1e-5)


# ---------------------------------------------------------------------------------------- box losses

def test_box_losses_by_hand():
    """One 8x8 target, mask rows/cols 0-3 -> box (cx, cy, w, h) = (0.25, 0.25, 0.5, 0.5). Query 0 predicts
    (0.3, 0.2, 0.4, 0.6) = xyxy (0.1, -0.1, 0.5, 0.5); query 1 a far small box and is left unmatched.
    L1 = 0.05 + 0.05 + 0.1 + 0.1 = 0.3. Intersection (0.1, 0, 0.5, 0.5) = 0.2, union 0.25 + 0.24 - 0.2
    = 0.29, enclosing (0, -0.1, 0.5, 0.5) = 0.3: GIoU = 0.2 / 0.29 - (0.3 - 0.29) / 0.3. One target box:
    num_masks = 1 (DETR: each loss summed and divided by the number of target boxes)."""
    from maskformer_core.criterion import build_criterion

    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True
    assert masks_to_boxes(masks).tolist() == [[0.25, 0.25, 0.5, 0.5]]
    crit = build_criterion("maskformer", num_classes=2, matching="box", dec_layers=1)
    out = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 2, 2),
           "pred_boxes": torch.tensor([[[0.3, 0.2, 0.4, 0.6], [0.85, 0.85, 0.1, 0.1]]])}
    losses = crit(out, [{"labels": torch.tensor([1]), "masks": masks}])
    giou = 0.2 / 0.29 - (0.3 - 0.29) / 0.3
    assert losses["loss_bbox"].item() == pytest.approx(0.3, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(1 - giou, rel=1e-5)
    # two images, two targets: the sums are divided by 2 target boxes
    masks2 = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks2[0, 4:, 4:] = True  # box (0.75, 0.75, 0.5, 0.5): matched exactly by query 1 of image 2
    out2 = {k: torch.cat([v, v]) for k, v in out.items()}
    out2["pred_boxes"][1, 1] = torch.tensor([0.75, 0.75, 0.5, 0.5])
    losses2 = crit(out2, [{"labels": torch.tensor([1]), "masks": masks}, {"labels": torch.tensor([0]), "masks": masks2}])
    assert losses2["loss_bbox"].item() == pytest.approx(0.3 / 2, rel=1e-5)
    assert losses2["loss_giou"].item() == pytest.approx((1 - giou) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------- official checkpoint

def _official_maskformer_r50_shapes(num_classes: int, dec_layers: int, num_queries: int = 100) -> dict:
    """Key -> shape of a MaskFormer R50 `model_final_*.pkl`, written out from the official modules:
    detectron2 ResNet (`backbone.stem.conv1`, `backbone.res{2..5}.{i}.conv{1,2,3}` / `.shortcut`, each with
    a FrozenBatchNorm `.norm` of weight/bias/running_mean/running_var; bottleneck widths 64..512, outputs
    256..2048, blocks 3-4-6-3); MaskFormer `BasePixelDecoder` (`adapter_{1,2,3}` 1x1 + GroupNorm,
    `layer_{1..4}` 3x3 + GroupNorm, `mask_features` 3x3 with bias; conv_dim 256); `TransformerPredictor`
    (`query_embed`, `input_proj` 1x1 2048->256, DETR decoder layers with self_attn / multihead_attn /
    linear1 2048 / linear2 / norm1-3, final decoder `norm`, `class_embed` K+1, `mask_embed` 3-layer MLP);
    plus the top-level `pixel_mean` / `pixel_std` buffers and `criterion.empty_weight`."""
    shapes: dict[str, tuple] = {}

    def conv_bn(prefix, cout, cin, k):
        shapes[f"{prefix}.weight"] = (cout, cin, k, k)
        for s in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.norm.{s}"] = (cout,)

    conv_bn("backbone.stem.conv1", 64, 3, 7)
    cin = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        cout = width * 4
        for i in range(blocks):
            p = f"backbone.res{stage}.{i}"
            if i == 0:
                conv_bn(f"{p}.shortcut", cout, cin, 1)
            conv_bn(f"{p}.conv1", width, cin if i == 0 else cout, 1)
            conv_bn(f"{p}.conv2", width, width, 3)
            conv_bn(f"{p}.conv3", cout, width, 1)
        cin = cout
    pd = "sem_seg_head.pixel_decoder"
    for i, c in enumerate([256, 512, 1024], start=1):
        shapes[f"{pd}.adapter_{i}.weight"] = (256, c, 1, 1)
        shapes[f"{pd}.adapter_{i}.norm.weight"] = shapes[f"{pd}.adapter_{i}.norm.bias"] = (256,)
        shapes[f"{pd}.layer_{i}.weight"] = (256, 256, 3, 3)
        shapes[f"{pd}.layer_{i}.norm.weight"] = shapes[f"{pd}.layer_{i}.norm.bias"] = (256,)
    shapes[f"{pd}.layer_4.weight"] = (256, 2048, 3, 3)
    shapes[f"{pd}.layer_4.norm.weight"] = shapes[f"{pd}.layer_4.norm.bias"] = (256,)
    shapes[f"{pd}.mask_features.weight"] = (256, 256, 3, 3)
    shapes[f"{pd}.mask_features.bias"] = (256,)
    pr = "sem_seg_head.predictor"
    for i in range(dec_layers):
        lp = f"{pr}.transformer.decoder.layers.{i}"
        for attn in ("self_attn", "multihead_attn"):
            shapes[f"{lp}.{attn}.in_proj_weight"] = (768, 256)
            shapes[f"{lp}.{attn}.in_proj_bias"] = (768,)
            shapes[f"{lp}.{attn}.out_proj.weight"] = (256, 256)
            shapes[f"{lp}.{attn}.out_proj.bias"] = (256,)
        shapes[f"{lp}.linear1.weight"], shapes[f"{lp}.linear1.bias"] = (2048, 256), (2048,)
        shapes[f"{lp}.linear2.weight"], shapes[f"{lp}.linear2.bias"] = (256, 2048), (256,)
        for n in ("norm1", "norm2", "norm3"):
            shapes[f"{lp}.{n}.weight"] = shapes[f"{lp}.{n}.bias"] = (256,)
    shapes[f"{pr}.transformer.decoder.norm.weight"] = shapes[f"{pr}.transformer.decoder.norm.bias"] = (256,)
    shapes[f"{pr}.query_embed.weight"] = (num_queries, 256)
    shapes[f"{pr}.input_proj.weight"], shapes[f"{pr}.input_proj.bias"] = (256, 2048, 1, 1), (256,)
    shapes[f"{pr}.class_embed.weight"], shapes[f"{pr}.class_embed.bias"] = (num_classes + 1, 256), (num_classes + 1,)
    for i in range(3):
        shapes[f"{pr}.mask_embed.layers.{i}.weight"] = (256, 256)
        shapes[f"{pr}.mask_embed.layers.{i}.bias"] = (256,)
    shapes["pixel_mean"] = shapes["pixel_std"] = (3, 1, 1)
    shapes["criterion.empty_weight"] = (num_classes + 1,)
    return shapes


def test_official_checkpoint_built_from_the_official_key_names_loads(tmp_path):
    from maskformer_core.models import build_model
    from maskformer_core.models.weights import load_official_model

    k, layers = 3, 2
    shapes = _official_maskformer_r50_shapes(k, layers)
    rng = np.random.default_rng(0)
    arrays = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as fh:  # detectron2 checkpoint layout: numpy arrays under "model"
        pickle.dump({"model": arrays, "__author__": "hand-made"}, fh)
    torch.manual_seed(0)
    model = build_model(backbone="R50", num_classes=k, dec_layers=layers)
    report = load_official_model(model, path)
    assert report["missing"] == []
    assert report["unexpected"] == []  # criterion.* and pixel_mean/std are skipped by name
    own = model.state_dict()
    loaded = {key for key in arrays if key in own}
    assert loaded == set(own), sorted(set(own) ^ loaded)[:10]  # every model weight has its official key
    for key in loaded:
        assert torch.equal(own[key], torch.from_numpy(arrays[key])), key
    # a weight of the wrong shape is refused, naming the key
    arrays["sem_seg_head.predictor.class_embed.weight"] = np.zeros((k + 2, 256), np.float32)
    with open(path, "wb") as fh:
        pickle.dump({"model": arrays}, fh)
    from maskformer_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="class_embed.weight"):
        load_official_model(build_model(backbone="R50", num_classes=k, dec_layers=layers), path)
