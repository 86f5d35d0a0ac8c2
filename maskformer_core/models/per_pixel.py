"""Per-pixel classification baselines of Table 2 (official
``mask_former/modeling/heads/per_pixel_baseline.py``): PerPixelBaseline (pixel decoder + 1x1 conv to K logits)
and PerPixelBaseline+ (pixel decoder + transformer predictor with Q = K queries whose mask logits are the K
per-pixel class logits; no class head, no matching)."""
from __future__ import annotations

import torch
from torch import nn

from maskformer_core.models.conv import Conv2d
from maskformer_core.models.maskformer import ImagePreprocessor, MaskFormerHead


def c2_msra_fill(module: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class PerPixelBaselineHead(nn.Module):
    """`sem_seg_head`: pixel_decoder -> mask_features [B, mask_dim, H/4, W/4] -> `predictor`
    1x1 conv mask_dim -> K with bias (c2_msra_fill). forward -> {"sem_seg_logits": [B, K, H/4, W/4]}."""

    def __init__(self, pixel_decoder: nn.Module, mask_dim: int, num_classes: int) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = Conv2d(mask_dim, num_classes, kernel_size=1)
        c2_msra_fill(self.predictor)

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, _ = self.pixel_decoder(features)
        return {"sem_seg_logits": self.predictor(mask_features)}


class PerPixelBaselinePlusHead(MaskFormerHead):
    """`sem_seg_head`: pixel decoder + TransformerPredictor(mask_classification=False, Q = K), wired as
    MaskFormerHead (same `transformer_in_feature` rule and state-dict names); the Q = K mask logits are the
    per-pixel class logits.

    forward -> {"sem_seg_logits": [B, K, H/4, W/4] (last layer), "aux_sem_seg_logits": list of
    dec_layers-1 tensors [B, K, H/4, W/4] (empty without deep supervision)}.
    """

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        out = super().forward(features)
        return {"sem_seg_logits": out["pred_masks"],
                "aux_sem_seg_logits": [a["pred_masks"] for a in out["aux_outputs"]]}


class PerPixelModel(ImagePreprocessor):
    """detectron2 `SemanticSegmentor` with a per-pixel head; size_divisibility defaults to the backbone's (0 for
    ResNet, 32 for Swin; official ``mask_former/modeling/heads/per_pixel_baseline.py``). forward(batch) -> the
    head's dict."""

    def __init__(self, backbone: nn.Module, sem_seg_head: nn.Module, num_classes: int, arch: str,
                 size_divisibility: int = 0, **norm) -> None:
        super().__init__(size_divisibility, **norm)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.num_classes = num_classes
        self.arch = arch

    def forward(self, batch: torch.Tensor) -> dict:
        return self.sem_seg_head(self.backbone(batch))
