"""MaskFormer meta-architecture (official ``mask_former/mask_former_model.py``): normalise + pad, backbone,
pixel decoder, transformer predictor. Module names follow the official model (`backbone`,
`sem_seg_head.pixel_decoder`, `sem_seg_head.predictor`) so a released `model_final_*.pkl` loads by name
(weights.load_official_model)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# INPUT.PIXEL_MEAN / PIXEL_STD, RGB on the 0-255 scale (official ``mask_former/config.py``).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class ImagePreprocessor(nn.Module):
    """Holds `pixel_mean`/`pixel_std` buffers [3,1,1] and `size_divisibility`; base of every model here."""

    def __init__(self, size_divisibility: int, pixel_mean: Sequence[float] = PIXEL_MEAN,
                 pixel_std: Sequence[float] = PIXEL_STD) -> None:
        super().__init__()
        self.size_divisibility = int(size_divisibility)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """images: list of [3, H_i, W_i] uint8 or float tensors on the 0..255 RGB scale.

        Returns (batch [B, 3, Hp, Wp] normalised and padded bottom/right with 0 *after* normalisation to a
        multiple of `size_divisibility` (detectron2 ImageList.from_tensors, official
        ``mask_former/mask_former_model.py``), image_sizes [(H_i, W_i)]).
        """
        if len(images) == 0:
            raise ValueError("preprocess: got an empty list of images")
        sizes = []
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"preprocess: image {i} has shape {tuple(img.shape)}, expected [3, H, W]")
            sizes.append((int(img.shape[1]), int(img.shape[2])))
        hp, wp = max(s[0] for s in sizes), max(s[1] for s in sizes)
        d = self.size_divisibility
        if d > 1:
            hp, wp = -(-hp // d) * d, -(-wp // d) * d
        device = self.pixel_mean.device
        batch = torch.zeros((len(images), 3, hp, wp), dtype=torch.float32, device=device)
        for i, img in enumerate(images):
            x = (img.to(device=device, dtype=torch.float32) - self.pixel_mean) / self.pixel_std
            batch[i, :, : x.shape[1], : x.shape[2]] = x
        return batch, sizes


class MaskFormerHead(nn.Module):
    """`sem_seg_head`: pixel decoder + predictor; the predictor reads `transformer_in_feature`
    ("res5" or "transformer_encoder", official ``mask_former/modeling/transformer/``)."""

    def __init__(self, pixel_decoder: nn.Module, predictor: nn.Module, transformer_in_feature: str = "res5") -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.transformer_in_feature = transformer_in_feature

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, encoder_features = self.pixel_decoder(features)
        if self.transformer_in_feature == "transformer_encoder":
            return self.predictor(encoder_features, mask_features)
        return self.predictor(features[self.transformer_in_feature], mask_features)


class MaskFormer(ImagePreprocessor):
    """Mask classification model.

    forward(batch [B, 3, Hp, Wp] normalised) -> dict with `pred_logits` [B, Q, K+1], `pred_masks`
    [B, Q, Hp/4, Wp/4] (mask logits), `aux_outputs` (list of dec_layers-1 dicts with the same keys),
    `pred_boxes` [B, Q, 4] when built with a box head.
    """

    arch = "maskformer"

    def __init__(self, backbone: nn.Module, sem_seg_head: MaskFormerHead, num_classes: int,
                 size_divisibility: int = 32, **norm) -> None:
        super().__init__(size_divisibility, **norm)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.num_classes = num_classes

    def forward(self, batch: torch.Tensor) -> dict:
        return self.sem_seg_head(self.backbone(batch))
