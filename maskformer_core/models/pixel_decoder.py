"""MaskFormer pixel decoders (official ``mask_former/modeling/heads/pixel_decoder.py``): the FPN-like
BasePixelDecoder and the "+6 Enc" TransformerEncoderPixelDecoder. Names follow the official modules
(`adapter_1`, `layer_4`, `mask_features`, `input_proj`, `transformer.encoder.layers.N`) so official checkpoints
load by name.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from maskformer_core.models.backbones.resnet import Conv2dNorm
from maskformer_core.models.conv import Conv2d
from maskformer_core.models.position_encoding import PositionEmbeddingSine
from maskformer_core.models.transformer import TransformerEncoderOnly

IN_FEATURES = ("res2", "res3", "res4", "res5")
GN_GROUPS = 32  # SEM_SEG_HEAD.NORM "GN" -> 32 groups (detectron2 get_norm)


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """detectron2 c2_xavier_fill: kaiming_uniform(a=1) on the weight, bias 0 (official
    ``mask_former/modeling/heads/pixel_decoder.py``)."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(GN_GROUPS, channels), channels)


def conv_gn(in_ch: int, out_ch: int, kernel: int, relu: bool) -> Conv2dNorm:
    """Conv (no bias because a norm follows) + GN(32) [+ ReLU], c2_xavier_fill init."""
    conv = Conv2dNorm(in_ch, out_ch, kernel, padding=kernel // 2, bias=False, norm=_group_norm(out_ch),
                      activation=nn.ReLU() if relu else None)
    c2_xavier_fill(conv)
    return conv


class BasePixelDecoder(nn.Module):
    """FPN-like decoder over res2..res5 (official ``mask_former/modeling/heads/pixel_decoder.py``).

    res5 -> 3x3 conv+GN+ReLU (`layer_4`); for res4, res3, res2: 1x1 lateral+GN (`adapter_i`) + nearest-
    upsampled previous map, then 3x3 conv+GN+ReLU (`layer_i`); `mask_features` = 3x3 conv conv_dim -> mask_dim
    WITH bias, no norm/activation (the paper says 1x1; the code uses 3x3,
    ``mask_former/modeling/heads/pixel_decoder.py``).

    forward(features {"res2".."res5"}) -> (mask_features [B, mask_dim, H/4, W/4], None)
    """

    def __init__(self, in_channels: Mapping[str, int], conv_dim: int = 256, mask_dim: int = 256) -> None:
        super().__init__()
        self.in_features = IN_FEATURES
        channels = [int(in_channels[f]) for f in self.in_features]
        self.conv_dim, self.mask_dim = conv_dim, mask_dim
        for idx, ch in enumerate(channels):
            if idx == len(channels) - 1:
                self.add_module(f"layer_{idx + 1}", conv_gn(ch, conv_dim, 3, relu=True))
            else:
                self.add_module(f"adapter_{idx + 1}", conv_gn(ch, conv_dim, 1, relu=False))
                self.add_module(f"layer_{idx + 1}", conv_gn(conv_dim, conv_dim, 3, relu=True))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=3, stride=1, padding=1)
        c2_xavier_fill(self.mask_features)

    def _top(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """res5 -> (top FPN map, transformer-encoder features or None)."""
        return self.layer_4(x), None

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = len(self.in_features)
        y, encoder_features = self._top(features[self.in_features[-1]])
        for idx in range(n - 2, -1, -1):  # res4, res3, res2
            lateral = getattr(self, f"adapter_{idx + 1}")(features[self.in_features[idx]])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{idx + 1}")(y)
        return self.mask_features(y), encoder_features


class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """BasePixelDecoder whose res5 branch is 1x1 `input_proj` (bias) -> sine pos enc (no mask) ->
    `enc_layers` post-norm encoder layers (no final norm) -> 3x3 conv+GN+ReLU (`layer_4`, input conv_dim).

    forward -> (mask_features [B, mask_dim, H/4, W/4], transformer_encoder_features [B, conv_dim, H/32, W/32])
    """

    def __init__(self, in_channels: Mapping[str, int], conv_dim: int = 256, mask_dim: int = 256,
                 enc_layers: int = 6, nheads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1) -> None:
        super().__init__(in_channels, conv_dim, mask_dim)
        self.input_proj = Conv2d(int(in_channels[self.in_features[-1]]), conv_dim, kernel_size=1)
        c2_xavier_fill(self.input_proj)
        self.transformer = TransformerEncoderOnly(conv_dim, nheads, enc_layers, dim_feedforward, dropout)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.layer_4 = conv_gn(conv_dim, conv_dim, 3, relu=True)  # replaces the res5 conv (official pixel_decoder.py)

    def _top(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src = self.input_proj(x)
        encoded = self.transformer(src, self.pe_layer(x))
        return self.layer_4(encoded), encoded
