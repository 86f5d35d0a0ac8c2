"""2-D convolution with a CPU fast path for 1x1 kernels.

A 1x1 convolution (groups 1, no padding) is a matrix product over channels at every output pixel:
y[b, :, i, j] = W[:, :] @ x[b, :, s*i, s*j] + bias. On CPU, F.conv2d (oneDNN) is slower at these than a
batched GEMM of the same size: over all 40 1x1 convs of the R50 MaskFormer, forward + backward, batch 2,
2 threads, 80 vs 53 ms at 128 px, 193 vs 149 ms at 256 px and 1142 vs 700 ms at 512 px (single shapes
0.9x-2.4x; `benchmarks/conv_paths.py` prints the table). `conv2d` computes those convolutions as `baddbmm`;
everything else (3x3 kernels, where oneDNN wins, padding, groups, GPU, and tracing for FLOP counting, so
fvcore still sees `aten::_convolution`) goes to F.conv2d unchanged.

The function is the same: only the order of the floating-point sums may differ, as it does between
any two convolution backends (oneDNN vs torch's native im2col path).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def is_pointwise(weight: torch.Tensor, padding, groups: int) -> bool:
    """True when a conv with this weight, padding and groups is a per-pixel matrix product (1x1, no padding)."""
    return (weight.dim() == 4 and tuple(weight.shape[-2:]) == (1, 1) and groups == 1
            and (padding == "valid" or (not isinstance(padding, str) and _pair(padding) == (0, 0))))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """F.conv2d(x [B, C, H, W], weight [O, C/groups, kh, kw], ...) -> [B, O, H', W'], same arguments.

    1x1 / groups 1 / no padding on a CPU tensor outside tracing: strided subsampling then
    `baddbmm(bias, W, x)` over the flattened pixels (dilation has no effect on a 1x1 kernel).
    """
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or x.device.type != "cpu" or x.dim() != 4
            or not is_pointwise(weight, padding, groups)):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    sh, sw = _pair(stride)
    if (sh, sw) != (1, 1):
        x = x[:, :, ::sh, ::sw]
    b, c, h, w = x.shape
    w2 = weight.reshape(weight.shape[0], c).expand(b, -1, -1)  # [B, O, C], a view
    cols = x.reshape(b, c, h * w)  # a view for contiguous stride-1 input, else one copy
    if bias is None:
        y = torch.bmm(w2, cols)
    else:
        y = torch.baddbmm(bias.reshape(1, -1, 1), w2, cols)
    return y.view(b, -1, h, w)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, state dict and init) whose forward goes through `conv2d` above."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
