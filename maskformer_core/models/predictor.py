"""MaskFormer transformer predictor (official ``mask_former/modeling/transformer/``): input_proj, DETR decoder
with learnable queries, class head (K+1), 3-layer mask-embedding MLP and the mask einsum; optional DETR box head
(Table 5)."""
from __future__ import annotations

import torch
from torch import nn

from maskformer_core.models.box_head import MLP, BoxHead
from maskformer_core.models.conv import Conv2d
from maskformer_core.models.pixel_decoder import c2_xavier_fill
from maskformer_core.models.position_encoding import PositionEmbeddingSine
from maskformer_core.models.transformer import Transformer


class TransformerPredictor(nn.Module):
    """Official `TransformerPredictor` (names kept: `query_embed`, `input_proj`, `transformer.decoder`,
    `class_embed`, `mask_embed.layers.i`; plus `bbox_embed` when `box_head`).

    forward(x [B, C_in, h, w] (res5 or encoder features), mask_features [B, mask_dim, H/4, W/4]) -> dict:
      `pred_logits` [B, Q, K+1] (when mask_classification), `pred_masks` [B, Q, H/4, W/4] (logits),
      `pred_boxes` [B, Q, 4] (when box_head), `aux_outputs`: list of L-1 dicts with the same keys for
      layers 0..L-2 (empty when L = 1 or deep_supervision is False).
    With deep_supervision False only the last layer is decoded and headed (official `aux_loss` False).
    """

    def __init__(self, in_channels: int, *, num_classes: int, mask_classification: bool = True,
                 hidden_dim: int = 256, num_queries: int = 100, nheads: int = 8, dropout: float = 0.1,
                 dim_feedforward: int = 2048, dec_layers: int = 6, mask_dim: int = 256,
                 deep_supervision: bool = True, dec_self_attention: bool = True, enforce_input_proj: bool = False,
                 box_head: bool = False) -> None:
        super().__init__()
        self.mask_classification = mask_classification
        self.aux_loss = deep_supervision
        self.num_queries = num_queries
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer = Transformer(hidden_dim, nheads, dec_layers, dim_feedforward, dropout,
                                       return_intermediate_dec=deep_supervision,
                                       dec_self_attention=dec_self_attention)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # default N(0, 1) init (official transformer_predictor.py)
        if in_channels != hidden_dim or enforce_input_proj:
            self.input_proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
            c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Sequential()  # identity, as official (no parameters)
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)  # last index = "no object"
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.box_head = BoxHead(hidden_dim) if box_head else None

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> dict:
        pos = self.pe_layer(x)
        hs = self.transformer(self.input_proj(x), self.query_embed.weight, pos)  # [L, B, Q, C]
        mask_embed = self.mask_embed(hs)
        masks = torch.einsum("lbqc,bchw->lbqhw", mask_embed, mask_features)
        # unbind (not masks[i]): backward stacks the L gradients once instead of adding L zero-padded
        # full-size [L, B, Q, H/4, W/4] gradients, one per indexed layer.
        per_layer = [{"pred_masks": m} for m in masks.unbind(0)]
        if self.mask_classification:
            for d, logits in zip(per_layer, self.class_embed(hs).unbind(0)):
                d["pred_logits"] = logits
        if self.box_head is not None:
            for d, boxes in zip(per_layer, self.box_head(hs).unbind(0)):
                d["pred_boxes"] = boxes
        out = dict(per_layer[-1])
        out["aux_outputs"] = per_layer[:-1] if self.aux_loss else []
        return out
