"""DETR box head (3-layer MLP -> 4, sigmoid) for the Table 5 "matching by box" rows (paper Table 5;
no official code)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """DETR MLP: `num_layers` Linear layers (in -> hidden ... -> out) with ReLU between them.

    Keys `layers.0..num_layers-1`, as in the official `mask_embed` / DETR `bbox_embed`.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class BoxHead(nn.Module):
    """`bbox_embed` = MLP(hidden, hidden, 4, 3); forward(hs [..., C]) -> boxes [..., 4] (cx, cy, w, h) in [0, 1]."""

    def __init__(self, hidden_dim: int = 256) -> None:
        super().__init__()
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

    def forward(self, hs: torch.Tensor) -> torch.Tensor:
        return self.bbox_embed(hs).sigmoid()
