"""The speed-ups of the training step compute the same function as the plain reference code, up to float
rounding (<= 1e-5): folded FrozenBN convolutions, batched criterion / matcher paths, fast dropout, fused
attention, 1x1 convolutions as matrix products, the fused binary focal + dice loss and the matcher's focal
cost. Each test runs the optimised path against a reference written out explicitly."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maskformer_core.models.backbones.resnet import Conv2dNorm, FrozenBatchNorm2d
from maskformer_core.models.conv import Conv2d, conv2d


def _frozen_bn(c: int, g: torch.Generator) -> FrozenBatchNorm2d:
    bn = FrozenBatchNorm2d(c)
    bn.weight.copy_(torch.randn(c, generator=g))
    bn.bias.copy_(torch.randn(c, generator=g))
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


def test_folded_frozen_bn_conv_matches_conv_then_norm_values_and_grads():
    g = torch.Generator().manual_seed(0)
    # folded: 4->8 1x1 (32 weights < 4096 outputs) and 4->8 3x3 with a conv bias; unfolded: 3->8 7x7/2
    # (1176 weights > 2*8*8*8 = 1024 outputs)
    for cin, cout, k, stride, bias in [(4, 8, 1, 1, False), (3, 8, 7, 2, False), (4, 8, 3, 1, True)]:
        conv = Conv2dNorm(cin, cout, k, stride=stride, padding=k // 2, bias=bias, norm=_frozen_bn(cout, g),
                          activation=torch.nn.ReLU())
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        x = torch.randn(2, cin, 16, 16, generator=g, requires_grad=True)
        y = conv(x)
        # reference: plain conv, then y = x * scale + shift of detectron2 layers/batch_norm.py
        # FrozenBatchNorm2d, then the activation
        w_ref = conv.weight.detach().clone().requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        bn = conv.norm
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        ref = F.conv2d(x_ref, w_ref, conv.bias, conv.stride, conv.padding)
        ref = F.relu((ref - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None])
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        gy = torch.randn(y.shape, generator=g)
        y.backward(gy)
        ref.backward(gy)
        torch.testing.assert_close(conv.weight.grad, w_ref.grad, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_fold_decision_depends_on_weight_vs_output_size():
    g = torch.Generator().manual_seed(0)
    big_weight = Conv2dNorm(512, 512, 3, padding=1, bias=False, norm=_frozen_bn(512, g))
    small_weight = Conv2dNorm(64, 64, 1, bias=False, norm=_frozen_bn(64, g))
    assert not big_weight._fold_pays(torch.zeros(2, 512, 4, 4))  # 2.4M weights vs 16k outputs
    assert small_weight._fold_pays(torch.zeros(2, 64, 32, 32))  # 4k weights vs 131k outputs


def test_matmul_bilinear_upsample_matches_interpolate():
    from maskformer_core.criterion import upsample_bilinear

    g = torch.Generator().manual_seed(1)
    for (h, w), size in [((32, 32), (128, 128)), ((5, 7), (20, 28)), ((8, 6), (13, 9)), ((4, 4), (4, 4))]:
        x = torch.randn(3, h, w, generator=g, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        y = upsample_bilinear(x, size)
        ref = F.interpolate(x_ref[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        gy = torch.randn(y.shape, generator=g)
        y.backward(gy)
        ref.backward(gy)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def _criterion_case(seed: int, empty_image: bool = False):
    from maskformer_core.criterion import build_criterion

    g = torch.Generator().manual_seed(seed)
    b, q, k, layers, size = 2, 7, 5, 4, 32
    outputs = {"pred_logits": torch.randn(b, q, k + 1, generator=g), "pred_masks": torch.randn(b, q, 8, 8, generator=g),
               "aux_outputs": [{"pred_logits": torch.randn(b, q, k + 1, generator=g),
                                "pred_masks": torch.randn(b, q, 8, 8, generator=g)} for _ in range(layers - 1)]}
    targets = []
    for i in range(b):
        m = 0 if (empty_image and i == 0) else 3
        targets.append({"labels": torch.randint(0, k, (m,), generator=g),
                        "masks": torch.rand(m, size, size, generator=g) > 0.6})
    return build_criterion("maskformer", k, dec_layers=layers), outputs, targets


def _leaves(outputs):
    return [outputs["pred_masks"], outputs["pred_logits"]] + [t for a in outputs["aux_outputs"]
                                                              for t in (a["pred_masks"], a["pred_logits"])]


def test_batched_criterion_matches_per_layer_reference_values_and_grads():
    from maskformer_core.criterion import _num_masks

    for seed, empty in [(0, False), (1, True)]:
        criterion, outputs, targets = _criterion_case(seed, empty)
        for t in _leaves(outputs):
            t.requires_grad_(True)
        fast = criterion(outputs, targets)
        # reference: match and score each layer on its own with the per-layer loss functions
        num_masks = _num_masks(targets, torch.device("cpu"))
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        ref = criterion._layer_losses(final, targets, num_masks)
        for i, aux in enumerate(outputs["aux_outputs"]):
            ref.update({f"{k}_{i}": v for k, v in criterion._layer_losses(aux, targets, num_masks).items()})
        assert list(fast) == list(ref)
        for key in ref:
            torch.testing.assert_close(fast[key], ref[key], rtol=1e-5, atol=1e-6)
        total = lambda d: sum(criterion.weight_dict[k] * v for k, v in d.items())  # noqa: E731
        g_fast = torch.autograd.grad(total(fast), _leaves(outputs))
        g_ref = torch.autograd.grad(total(ref), _leaves(outputs))
        for a, r in zip(g_fast, g_ref):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_match_layers_equals_matching_each_layer():
    criterion, outputs, targets = _criterion_case(2, empty_image=True)
    layers = [outputs] + outputs["aux_outputs"]
    batched = criterion.matcher.match_layers(layers, targets)
    for out, got in zip(layers, batched):
        for (p, t), (p_ref, t_ref) in zip(got, criterion.matcher(out, targets)):
            assert torch.equal(p, p_ref) and torch.equal(t, t_ref)


def test_fast_dropout_is_inverted_dropout_with_p():
    from maskformer_core.models.transformer import Dropout, dropout

    x = torch.randn(200, 500)
    assert dropout(x, 0.1, training=False) is x
    assert Dropout(0.1).eval()(x) is x
    torch.manual_seed(0)
    y = dropout(x, 0.1, training=True)
    torch.manual_seed(0)
    # the mask the same generator state draws: 31-bit integers, kept when >= ceil(0.1 * 2^31)
    keep = torch.empty(x.shape, dtype=torch.int32).random_() >= 214748365
    torch.testing.assert_close(y, torch.where(keep, x / 0.9, torch.zeros_like(x)), rtol=1e-6, atol=1e-7)
    frac = keep.float().mean().item()
    assert abs(frac - 0.9) < 0.005  # 1e5 draws: 6 standard deviations
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    # gradient: the same mask and scale as the forward
    xr = x.clone().requires_grad_(True)
    torch.manual_seed(0)
    dropout(xr, 0.1, training=True).sum().backward()
    torch.testing.assert_close(xr.grad, keep.float() / 0.9)


def test_fused_attention_in_eval_matches_explicit_path_and_flops_count_the_explicit_one():
    from maskformer_core.models import build_model
    from maskformer_core.models.flops import count_flops, explicit_attention
    from maskformer_core.models.transformer import MultiheadAttention

    torch.manual_seed(0)
    model = build_model(arch="maskformer", backbone="R50", num_classes=3, num_queries=5, hidden_dim=32, mask_dim=32,
                        conv_dim=32, dim_feedforward=64, nheads=4, dec_layers=2, pixel_decoder="transformer_encoder",
                        enc_layers=1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fused = model(x)
        with explicit_attention(model):
            assert all(m.explicit_matmuls for m in model.modules() if isinstance(m, MultiheadAttention))
            explicit = model(x)
    assert not any(m.explicit_matmuls for m in model.modules() if isinstance(m, MultiheadAttention))
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(fused[key], explicit[key], rtol=1e-5, atol=1e-5)
    # count_flops counts the explicit matmuls whatever the model's own setting: switching the fused path on
    # does not change the count, and the explicit bmm terms are really in it (docs/FIDELITY.md §5)
    total = count_flops(model, (64, 64))["total"]
    for m in model.modules():
        if isinstance(m, MultiheadAttention):
            m.explicit_matmuls = True
    assert count_flops(model, (64, 64))["total"] == total
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MultiheadAttention):
                m.explicit_matmuls = False
        fused_ops = FlopCountAnalysis(model, (x,)).unsupported_ops_warnings(False).by_operator()
        with explicit_attention(model):
            explicit_ops = FlopCountAnalysis(model, (x,)).unsupported_ops_warnings(False).by_operator()
    assert explicit_ops.get("bmm", 0) > fused_ops.get("bmm", 0)


def test_foreach_clipping_is_bit_identical_to_clip_grad_norm():
    from pipeline.solver import clip_full_model

    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (100,), (7, 7, 3), (1,)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, ref):
        a.grad = torch.randn(a.shape, generator=g)
        b.grad = a.grad.clone()
    ours.append(torch.nn.Parameter(torch.zeros(2)))  # no grad: skipped by both
    assert torch.equal(clip_full_model(ours, 0.01), torch.nn.utils.clip_grad_norm_(ref, 0.01))
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, ref))


def test_pointwise_conv_as_matmul_matches_conv2d_values_and_grads():
    g = torch.Generator().manual_seed(3)
    # stride 1 and 2 (subsampled), with and without bias, odd sizes, channels-last and sliced inputs
    for stride, bias, layout in [(1, False, "nchw"), (2, True, "nchw"), (2, False, "channels_last"),
                                 (1, True, "sliced"), ((1, 2), True, "nchw")]:
        x = torch.randn(2, 6, 9, 11, generator=g)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "sliced":
            x = torch.randn(2, 6, 9, 22, generator=g)[..., ::2]
        x.requires_grad_(True)
        w = torch.randn(5, 6, 1, 1, generator=g, requires_grad=True)
        b = torch.randn(5, generator=g, requires_grad=True) if bias else None
        y = conv2d(x, w, b, stride)
        x_ref, w_ref = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
        b_ref = b.detach().clone().requires_grad_(True) if bias else None
        ref = F.conv2d(x_ref, w_ref, b_ref, stride)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        gy = torch.randn(y.shape, generator=g)
        y.backward(gy)
        ref.backward(gy)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-4)
        if bias:
            torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-5, atol=1e-4)


def test_pointwise_path_only_for_unpadded_ungrouped_1x1_and_not_when_traced():
    from maskformer_core.models.conv import is_pointwise

    w1, w3 = torch.zeros(4, 4, 1, 1), torch.zeros(4, 4, 3, 3)
    assert is_pointwise(w1, 0, 1) and is_pointwise(w1, (0, 0), 1) and is_pointwise(w1, "valid", 1)
    assert not is_pointwise(w1, 1, 1) and not is_pointwise(w1, "same", 1) and not is_pointwise(w3, 0, 1)
    assert not is_pointwise(torch.zeros(4, 2, 1, 1), 0, 2)  # grouped
    # padded 1x1 and 3x3 convs still compute F.conv2d's function through the module
    g = torch.Generator().manual_seed(4)
    for kernel, padding in [(1, 1), (3, 1)]:
        conv = Conv2d(4, 3, kernel, padding=padding)
        x = torch.randn(1, 4, 7, 7, generator=g)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, padding))
    # traced (fvcore's FLOP counting), a 1x1 conv stays one aten::_convolution node, no bmm
    conv = Conv2d(4, 3, 1)
    graph = torch.jit.trace(conv, torch.randn(1, 4, 5, 5)).inlined_graph
    kinds = {n.kind() for n in graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::baddbmm" not in kinds and "aten::bmm" not in kinds


def test_fused_binary_focal_dice_matches_explicit_formulas_values_and_grads():
    from maskformer_core.criterion import dice_loss_per_mask, focal_dice_per_mask, focal_loss_per_mask

    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 300, generator=g, dtype=torch.float64) * 4
    x[0, :20] = torch.linspace(-40, 40, 20, dtype=torch.float64)  # saturated logits on both sides
    t = torch.rand(7, 300, generator=g, dtype=torch.float64) > 0.7
    t[1] = False  # an empty mask: dice's smoothing term only
    t[2] = True
    for alpha, gamma in [(0.25, 2.0), (0.25, 1.5), (-1.0, 2.0), (0.6, 0.0)]:
        xf = x.detach().clone().requires_grad_(True)
        xr = x.detach().clone().requires_grad_(True)
        focal, dice = focal_dice_per_mask(xf, t, alpha, gamma)
        ref_f = focal_loss_per_mask(xr, t.double(), alpha, gamma)
        ref_d = dice_loss_per_mask(xr, t.double())
        torch.testing.assert_close(focal, ref_f, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dice, ref_d, rtol=1e-10, atol=1e-12)
        # random upstream weights per mask so both terms' gradients are checked, not only their sum
        gf, gd = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
        ((focal * gf).sum() + (dice * gd).sum()).backward()
        ((ref_f * gf).sum() + (ref_d * gd).sum()).backward()
        torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-9, atol=1e-12)
    # float32, as the criterion runs it: float rounding only
    x32 = x.float().requires_grad_(True)
    xr32 = x.float().requires_grad_(True)
    focal, dice = focal_dice_per_mask(x32, t)
    ref_f, ref_d = focal_loss_per_mask(xr32, t.float()), dice_loss_per_mask(xr32, t.float())
    torch.testing.assert_close(focal, ref_f, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dice, ref_d, rtol=1e-5, atol=1e-6)
    (focal.sum() + dice.sum()).backward()
    (ref_f.sum() + ref_d.sum()).backward()
    torch.testing.assert_close(x32.grad, xr32.grad, rtol=1e-4, atol=1e-7)
    # soft (float) targets keep the explicit formulas
    soft = torch.rand(7, 300, generator=g, dtype=torch.float64)
    torch.testing.assert_close(focal_dice_per_mask(x, soft)[0], focal_loss_per_mask(x, soft))


def test_matcher_focal_cost_matches_the_official_bce_formula():
    from maskformer_core.matching import batch_sigmoid_focal_cost

    g = torch.Generator().manual_seed(6)
    x = torch.randn(9, 400, generator=g, dtype=torch.float64) * 5
    x[0, :40] = torch.linspace(-60, 60, 40, dtype=torch.float64)  # beyond softplus' threshold on both sides
    t = (torch.rand(4, 400, generator=g) > 0.6).double()
    for alpha, gamma in [(0.25, 2.0), (-1.0, 1.0)]:
        prob = x.sigmoid()
        # the official expression: BCE-with-logits against all-ones and all-zeros targets
        pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
        neg = prob ** gamma * F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
        if alpha >= 0:
            pos, neg = pos * alpha, neg * (1 - alpha)
        ref = (pos @ t.T + neg @ (1 - t).T) / x.shape[1]
        torch.testing.assert_close(batch_sigmoid_focal_cost(x, t, alpha, gamma), ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(batch_sigmoid_focal_cost(x.float(), t.float(), alpha, gamma), ref.float(),
                                   rtol=1e-5, atol=1e-6)
