"""ResNet backbones as detectron2 builds them for MaskFormer: R50, R101, R101c (= "R-103") and SmokeR18.

Module and parameter names follow detectron2 (`stem.conv1`, `res2.0.conv1.norm`, `res2.0.shortcut`), so
detectron2 checkpoints (`R-50.pkl`, `R-103.pkl`, MaskFormer `model_final_*.pkl`) load by name. Every norm of the
paper ResNets is `FrozenBatchNorm2d` (detectron2 ``config/defaults.py`` ``MODEL.RESNETS.NORM = "FrozenBN"``)
whose statistics and affine terms are buffers, not parameters, so they neither train nor count in #params
(docs/FIDELITY.md §5). The SmokeR18 extra (random init only) uses trainable GroupNorm instead, see `smoke_r18`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskformer_core.models.conv import Conv2d

__all__ = ["FrozenBatchNorm2d", "Conv2dNorm", "ResNet", "resnet_r50", "resnet_r101", "resnet_r101c", "smoke_r18"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms, all stored as buffers (detectron2
    ``layers/batch_norm.py`` ``FrozenBatchNorm2d``).

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, eps = 1e-5 (detectron2 default).
    Input/output: [B, C, H, W].
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_shift(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine form y = x * scale + shift: two [C] tensors in `dtype`."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return scale.to(dtype), shift.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * scale + shift rather than addcmul: addcmul's backward multiplies twice (by scale and by value)
        scale, shift = self.scale_shift(x.dtype)
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # torchvision/timm BatchNorm state dicts carry num_batches_tracked; it has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Conv2dNorm(Conv2d):
    """detectron2-style conv with an optional `norm` sub-module and activation applied after it
    (1x1 kernels take the CPU matrix-product path of `maskformer_core.models.conv`).

    Keeping the norm as a child named `norm` reproduces detectron2's key names (`conv1.norm.weight`).
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, FrozenBatchNorm2d) and self._fold_pays(x):
            # conv followed by a fixed affine map = one conv with weight * scale and bias shift (+ bias * scale):
            # the same function up to float rounding, and the weight gradient still flows to `weight`.
            scale, shift = self.norm.scale_shift(x.dtype)
            bias = shift if self.bias is None else torch.addcmul(shift, self.bias, scale)
            x = self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), bias)
            return x if self.activation is None else self.activation(x)
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _fold_pays(self, x: torch.Tensor) -> bool:
        """Folding the FrozenBN costs a pass over the weight (forward, and its gradient in backward); applying
        it costs a pass over the output (forward, and the input gradient in backward). Fold when the weight is
        the smaller tensor: early, high-resolution layers fold, res4/res5 on small inputs do not."""
        h, w = x.shape[-2:]
        out_pixels = x.shape[0] * (-(-h // self.stride[0])) * (-(-w // self.stride[1]))
        return self.weight.numel() < out_pixels * self.out_channels


def c2_msra_fill(module: nn.Conv2d) -> None:
    """Caffe2 MSRA init used by detectron2 ResNets: kaiming_normal(fan_out, relu), bias 0."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class BasicStem(nn.Module):
    """detectron2 BasicStem: 7x7/2 conv (no bias) + FrozenBN + ReLU, then 3x3/2 max-pool (detectron2
    ``modeling/backbone/resnet.py``).

    `norm` builds the norm layer from a channel count (FrozenBatchNorm2d for every paper backbone).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm=FrozenBatchNorm2d) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = Conv2dNorm(in_channels, out_channels, 7, stride=2, padding=3, bias=False,
                                norm=norm(out_channels))
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    """detectron2 DeepLab stem of R101c / R-103: 3x3 convs 3->64 (stride 2), 64->64, 64->128, each FrozenBN +
    ReLU, then 3x3/2 max-pool (detectron2 ``projects/DeepLab/deeplab/resnet.py`` ``DeepLabStem``). timm calls
    this ResNet variant `resnet101s`."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128) -> None:
        super().__init__()
        self.out_channels = out_channels
        mid = out_channels // 2
        self.conv1 = Conv2dNorm(in_channels, mid, 3, stride=2, padding=1, bias=False, norm=FrozenBatchNorm2d(mid))
        self.conv2 = Conv2dNorm(mid, mid, 3, stride=1, padding=1, bias=False, norm=FrozenBatchNorm2d(mid))
        self.conv3 = Conv2dNorm(mid, out_channels, 3, stride=1, padding=1, bias=False,
                                norm=FrozenBatchNorm2d(out_channels))
        for conv in (self.conv1, self.conv2, self.conv3):
            c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = F.relu_(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """torchvision-style bottleneck (stride in the 3x3 conv, STRIDE_IN_1X1 False; detectron2
    ``MODEL.RESNETS.STRIDE_IN_1X1``, ``modeling/backbone/resnet.py``).

    1x1 (in->b) + 3x3 (b->b, stride, dilation) + 1x1 (b->out); 1x1 projection shortcut when in != out.
    """

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = Conv2dNorm(in_channels, out_channels, 1, stride=stride, bias=False,
                                       norm=FrozenBatchNorm2d(out_channels))
        else:
            self.shortcut = None
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, 1, stride=1, bias=False,
                                norm=FrozenBatchNorm2d(bottleneck_channels))
        self.conv2 = Conv2dNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride, padding=dilation,
                                dilation=dilation, bias=False, norm=FrozenBatchNorm2d(bottleneck_channels))
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, 1, bias=False,
                                norm=FrozenBatchNorm2d(out_channels))
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class BasicBlock(nn.Module):
    """detectron2 BasicBlock (two 3x3 convs), used only by the SmokeR18 extra; `norm(C)` builds its norms."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm=FrozenBatchNorm2d) -> None:
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2dNorm(in_channels, out_channels, 1, stride=stride, bias=False,
                                       norm=norm(out_channels))
        else:
            self.shortcut = None
        self.conv1 = Conv2dNorm(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                                norm=norm(out_channels))
        self.conv2 = Conv2dNorm(out_channels, out_channels, 3, stride=1, padding=1, bias=False,
                                norm=norm(out_channels))
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """ResNet trunk returning `{"res2": [B,C2,H/4,W/4], ..., "res5": [B,C5,H/32,W/32]}`.

    Attributes: `out_channels` (dict name -> C), `strides` (dict name -> 4/8/16/32),
    `size_divisibility` (0: detectron2's ResNet Backbone does not require padding, official
    ``mask_former/modeling/heads/per_pixel_baseline.py``).
    """

    out_features = ("res2", "res3", "res4", "res5")

    def __init__(self, stem: nn.Module, stages: Sequence[Sequence[nn.Module]], stage_channels: Sequence[int]) -> None:
        super().__init__()
        self.stem = stem
        for i, blocks in enumerate(stages):
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
        self.out_channels = {f"res{i + 2}": int(c) for i, c in enumerate(stage_channels)}
        self.strides = {f"res{i + 2}": 2 ** (i + 2) for i in range(len(stages))}
        self.size_divisibility = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNet takes [B,3,H,W] input, got shape {tuple(x.shape)}")
        x = self.stem(x)
        outputs = {}
        for name in self.out_features:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs


def _bottleneck_resnet(depths: Sequence[int], stem: nn.Module, res5_dilations: Sequence[int] | None = None) -> ResNet:
    """Bottleneck stages with widths 64/128/256/512 and outputs 256/512/1024/2048 (detectron2
    ``modeling/backbone/resnet.py``)."""
    in_ch = stem.out_channels
    stages, channels = [], []
    for i, depth in enumerate(depths):
        bottleneck, out_ch = 64 * 2 ** i, 256 * 2 ** i
        first_stride = 1 if i == 0 else 2  # res5 keeps stride 2 even with multi-grid (detectron2 resnet.py)
        dilations = list(res5_dilations) if (i == 3 and res5_dilations is not None) else [1] * depth
        if len(dilations) != depth:
            raise ValueError(f"res5 multi-grid needs {depth} dilations, got {dilations}")
        blocks = []
        for b in range(depth):
            blocks.append(BottleneckBlock(in_ch, out_ch, bottleneck, stride=first_stride if b == 0 else 1,
                                          dilation=dilations[b]))
            in_ch = out_ch
        stages.append(blocks)
        channels.append(out_ch)
    return ResNet(stem, stages, channels)


def resnet_r50() -> ResNet:
    """ResNet-50: BasicStem + bottleneck stages [3, 4, 6, 3] (detectron2 ``modeling/backbone/resnet.py``)."""
    return _bottleneck_resnet([3, 4, 6, 3], BasicStem())


def resnet_r101() -> ResNet:
    """ResNet-101: BasicStem + bottleneck stages [3, 4, 23, 3] (detectron2 ``modeling/backbone/resnet.py``)."""
    return _bottleneck_resnet([3, 4, 23, 3], BasicStem())


def resnet_r101c() -> ResNet:
    """R101c = detectron2 R-103: DeepLab stem (64-64-128) + [3, 4, 23, 3], res5 multi-grid dilations 1/2/4 with
    stride 2 kept (RES5_MULTI_GRID [1,2,4], RES5_DILATION 1;
    ``configs/ade20k-150/maskformer_R101c_bs16_160k.yaml``; detectron2
    ``projects/DeepLab/deeplab/resnet.py``)."""
    return _bottleneck_resnet([3, 4, 23, 3], DeepLabStem(out_channels=128), res5_dilations=(1, 2, 4))


def smoke_group_norm(num_channels: int) -> nn.GroupNorm:
    """Trainable GroupNorm of SmokeR18: 8 groups, or fewer so that every group has >= 4 channels
    (4 groups on the 16-wide stem/res2). Per-sample statistics: no train/eval or DDP/batch-size gap."""
    return nn.GroupNorm(max(1, min(8, num_channels // 4)), num_channels)


def smoke_r18(widths: Sequence[int] = (16, 32, 64, 128)) -> ResNet:
    """SmokeR18: NOT a paper model. A narrow ResNet-18-class trunk (BasicBlocks [2,2,2,2], stage widths
    16/32/64/128 by default) for CPU smoke runs; strides 4/8/16/32 like the real backbones.

    Norm: trainable GroupNorm (`smoke_group_norm`), not the paper ResNets' FrozenBN. FrozenBN is right
    for R50/R101/R101c because they start from ImageNet weights whose BN statistics it freezes
    (detectron2 ``config/defaults.py`` ``MODEL.RESNETS.NORM``); SmokeR18 always starts from random init, where
    FrozenBN is an identity map and the trunk
    trains unnormalised (smoke MaskFormer stayed at one class everywhere: ADE20K twin mIoU 4 after
    120 iterations, vs 21-24 with a trainable norm at otherwise equal settings; docs/ARCHITECTURE.md).
    GroupNorm rather than BatchNorm: batch 2 per process in the smoke profile, and per-sample
    statistics keep a 2-process DDP run equal to a 1-process run of the same total batch.
    """
    if len(widths) != 4:
        raise ValueError(f"SmokeR18 needs 4 stage widths, got {list(widths)}")
    stem = BasicStem(out_channels=int(widths[0]), norm=smoke_group_norm)
    in_ch = stem.out_channels
    stages = []
    for i, w in enumerate(widths):
        blocks = []
        for b in range(2):
            blocks.append(BasicBlock(in_ch, int(w), stride=(1 if i == 0 or b > 0 else 2), norm=smoke_group_norm))
            in_ch = int(w)
        stages.append(blocks)
    return ResNet(stem, stages, widths)
