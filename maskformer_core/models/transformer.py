"""DETR transformer pieces used by MaskFormer (official ``mask_former/modeling/transformer/transformer.py``):
attention with explicit matmuls, post-norm encoder/decoder layers, and the decoder that returns every
intermediate output.

Tensors are sequence-first like DETR: [S, B, C]. `MultiheadAttention` keeps nn.MultiheadAttention's parameter
names (`in_proj_weight`, `in_proj_bias`, `out_proj`) and math, so official checkpoints load by name. It writes
q.k^T and attn.v as `torch.bmm` in training and whenever `explicit_matmuls` is set (FLOP counting, so fvcore
counts them: docs/FIDELITY.md §5 caveat), and uses the fused SDPA kernel otherwise (eval).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, the same random function as F.dropout (each element kept with probability 1 - p,
    kept ones scaled by 1 / (1 - p)), with the keep mask drawn from the default generator as 31-bit
    uniform integers r >= ceil(p * 2^31): p is met to 2^-31 (F.dropout's float path and `rand >= p` to
    2^-24), and on CPU it is ~1.25x faster than `rand >= p` and ~2.5x faster than F.dropout (torch 2.14,
    2 threads, a [100, 2, 2048] FFN activation: 1.08 vs 1.35 vs 2.98 ms; mt19937 draws dominate). The random stream differs from F.dropout's; the
    distribution does not."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_().ge_(math.ceil(p * 2 ** 31))
    return x * keep.to(x.dtype).div_(1.0 - p)


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, no parameters, same state dict) computed with `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class MultiheadAttention(nn.Module):
    """Same math and parameters as `nn.MultiheadAttention(embed_dim, num_heads, dropout)` (batch_first False).

    forward(query [L,B,E], key [S,B,E], value [S,B,E]) -> [L,B,E]. Dropout on the attention weights in training,
    as torch does. No masks (MaskFormer passes none; official ``mask_former/modeling/transformer/``).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        # True: always the explicit bmm path, which fvcore counts (docs/FIDELITY.md §5);
        # flops.explicit_attention sets
        # it while counting. False: fused F.scaled_dot_product_attention whenever no dropout applies (eval).
        self.explicit_matmuls = False
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # nn.MultiheadAttention._reset_parameters
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.constant_(self.in_proj_bias, 0.0)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        tgt_len, bsz, e = query.shape
        src_len = key.shape[0]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q)
        k = F.linear(key, w_k, b_k)
        v = F.linear(value, w_v, b_v)
        h, d = self.num_heads, self.head_dim
        q = q.reshape(tgt_len, bsz * h, d).transpose(0, 1)
        k = k.reshape(src_len, bsz * h, d).transpose(0, 1)
        v = v.reshape(src_len, bsz * h, d).transpose(0, 1)
        if not self.explicit_matmuls and not (self.training and self.dropout > 0.0):
            # fused kernel, same softmax(q k^T / sqrt(d)) v; training keeps the explicit path because SDPA's
            # CPU dropout falls back to the unfused math path with the slower bernoulli_ mask
            out = F.scaled_dot_product_attention(q.unflatten(0, (bsz, h)), k.unflatten(0, (bsz, h)),
                                                 v.unflatten(0, (bsz, h))).flatten(0, 1)
        else:
            attn = torch.bmm(q * (d ** -0.5), k.transpose(1, 2)).softmax(dim=-1)  # [B*h, L, S]
            attn = dropout(attn, self.dropout, self.training)
            out = torch.bmm(attn, v)
        return self.out_proj(out.transpose(0, 1).reshape(tgt_len, bsz, e))


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: self-attn(q=k=src+pos, v=src) -> add -> norm1 -> FFN(ReLU) -> add -> norm2."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src)))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    """Post-norm DETR decoder layer (official ``mask_former/modeling/transformer/``):
    1. self-attn(q=k=tgt+query_pos, v=tgt) -> add -> norm1  (absent when `self_attention=False`)
    2. cross-attn(q=tgt+query_pos, k=memory+pos, v=memory) -> add -> norm2
    3. FFN(ReLU) -> add -> norm3

    `self_attention=False` is the appendix Table VIII variant. The official code for it was never released and
    the paper does not say whether norm1 stayed; we drop the whole sub-block (attention, dropout1, residual
    add and norm1), i.e. the layer starts at cross-attention.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 self_attention: bool = True) -> None:
        super().__init__()
        self.has_self_attention = self_attention
        if self_attention:
            self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
            self.norm1 = nn.LayerNorm(d_model)
            self.dropout1 = Dropout(dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        if self.has_self_attention:
            q = k = _with_pos(tgt, query_pos)
            tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)))
        tgt2 = self.multihead_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    """Stack of post-norm encoder layers with no final norm (post-norm DETR: encoder_norm is None)."""

    def __init__(self, layer: TransformerEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos=pos)
        return src


class TransformerDecoder(nn.Module):
    """Decoder layers + the shared final LayerNorm `norm` applied to each returned output.

    forward -> [L, Q, B, C]: every layer's normed output when `return_intermediate` (deep supervision),
    else only the last one (L = 1).
    """

    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, d_model: int,
                 return_intermediate: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.return_intermediate = return_intermediate

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        output = tgt
        intermediate = []
        for layer in self.layers:
            output = layer(output, memory, pos=pos, query_pos=query_pos)
            if self.return_intermediate:
                intermediate.append(self.norm(output))
        if self.return_intermediate:
            return torch.stack(intermediate)
        return self.norm(output).unsqueeze(0)


class TransformerEncoderOnly(nn.Module):
    """The "+6 Enc" encoder of TransformerEncoderPixelDecoder (official
    ``mask_former/modeling/heads/pixel_decoder.py``).

    forward(src [B,C,H,W], pos [B,C,H,W]) -> [B,C,H,W]. Xavier-uniform on every parameter with dim > 1.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout),
                                          num_encoder_layers)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, c, h, w = src.shape
        memory = self.encoder(src.flatten(2).permute(2, 0, 1), pos=pos.flatten(2).permute(2, 0, 1))
        return memory.permute(1, 2, 0).reshape(b, c, h, w)


class Transformer(nn.Module):
    """DETR Transformer with ENC_LAYERS = 0 (every MaskFormer config; official ``mask_former/config.py``):
    memory = projected features, then the decoder from zero targets with the learnable query embedding as
    query_pos.

    forward(src [B,C,H,W], query_embed [Q,C], pos [B,C,H,W]) -> hs [L, B, Q, C].
    Xavier-uniform on every parameter with dim > 1 (DETR `_reset_parameters`).
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, return_intermediate_dec: bool = True,
                 dec_self_attention: bool = True) -> None:
        super().__init__()
        layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, self_attention=dec_self_attention)
        self.decoder = TransformerDecoder(layer, num_decoder_layers, d_model, return_intermediate_dec)
        self.d_model, self.nhead = d_model, nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b = src.shape[0]
        memory = src.flatten(2).permute(2, 0, 1)  # [HW, B, C]
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, b, 1)  # [Q, B, C]
        tgt = torch.zeros_like(query_pos)  # tgt starts at zero (official ``mask_former/modeling/transformer/``)
        hs = self.decoder(tgt, memory, pos=pos, query_pos=query_pos)  # [L, Q, B, C]
        return hs.transpose(1, 2)
