"""Swin Transformer backbone exactly as MaskFormer's D2SwinTransformer runs it (official
``mask_former/modeling/backbone/swin.py``).

Own implementation rather than timm because the official code pads each feature map to a window
multiple *before* the cyclic shift and always shifts odd blocks, whatever the feature size; timm
shrinks windows / disables the shift for small maps unless configured otherwise and orders shift and
pad differently. Parameter names equal the official checkpoint's (`patch_embed.proj`,
`layers.0.blocks.1.attn.relative_position_bias_table`, `layers.0.downsample.reduction`, `norm0..3`), so
`swin_*_patch4_window*.pth` and the converted `.pkl` files load by name; `weights.py` converts timm
state dicts (which move `downsample` to the next stage).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskformer_core.models.defaults import MODEL_DEFAULTS

__all__ = ["SwinTransformer", "SWIN_CONFIGS", "swin"]

# official ``mask_former/config.py`` ``MODEL.SWIN.*`` and ``configs/*/swin/*.yaml``: embed dim C, depths, heads,
# window; drop_path 0.3 for all.
SWIN_CONFIGS: dict[str, dict] = {
    "Swin-T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "Swin-S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "Swin-B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "Swin-L": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
    # NOT a paper model: tiny Swin for CPU smoke runs (docs/ARCHITECTURE.md, smoke profile).
    "SmokeSwin": dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4),
}


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm/official `DropPath`): zero a residual branch with prob. p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Mlp(nn.Module):
    """Linear(C, 4C) + GELU + Linear(4C, C) (MLP ratio 4, no dropout: MODEL.SWIN.DROP 0)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B*nW, ws, ws, C] (H, W multiples of ws)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """[B*nW, ws, ws, C] -> [B, H, W, C]."""
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.reshape(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def relative_position_index(ws: int) -> torch.Tensor:
    """[ws*ws, ws*ws] index into the (2ws-1)^2 relative position bias table (official formula)."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias; explicit matmuls (fvcore counts them)."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5  # QK_SCALE None -> head_dim^-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)  # QKV_BIAS True
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B*nW, N, C]; mask: [nW, N, N] with 0 / -100 or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = torch.matmul(q, k.transpose(-2, -1))
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0).to(attn.dtype)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class SwinTransformerBlock(nn.Module):
    """Pre-norm (S)W-MSA + MLP block. Padding to window multiples happens after norm1 and before the cyclic
    shift; padded tokens are zeros and are not masked (official ``mask_former/modeling/backbone/swin.py``)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, drop_path_rate: float) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor, h: int, w: int, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, H*W, C] -> [B, H*W, C]."""
        b, length, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        else:
            attn_mask = None
        windows = window_partition(x, ws).reshape(-1, ws * ws, c)
        windows = self.attn(windows, mask=attn_mask).view(-1, ws, ws, c)
        x = window_reverse(windows, ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (odd sizes padded) -> LayerNorm(4C) -> Linear(4C, 2C, no bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def shifted_window_mask(hp: int, wp: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """[nW, ws*ws, ws*ws] mask (0 inside a region, -100 across regions) for the padded size (official)."""
    img_mask = torch.zeros((1, hp, wp, 1), device=device)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    mw = window_partition(img_mask, ws).reshape(-1, ws * ws)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks (even: W-MSA, odd: SW-MSA with shift ws//2) + optional PatchMerging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_paths: Sequence[float],
                 downsample: bool) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, window_size // 2
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, drop_paths[i])
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int):
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        attn_mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device)
        for blk in self.blocks:
            x = blk(x, h, w, attn_mask)
        if self.downsample is None:
            return x, h, w, x, h, w
        return x, h, w, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """4x4/4 conv 3->C (bias) + LayerNorm; the input is padded right/bottom to a multiple of 4."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)  # PATCH_NORM True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        if w % p:
            x = F.pad(x, (0, p - w % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        x = self.proj(x)
        wh, ww = x.shape[2], x.shape[3]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(-1, x.shape[-1], wh, ww)


class SwinTransformer(nn.Module):
    """D2SwinTransformer: returns `{"res2".."res5": [B, C*2^i, H/2^(i+2), W/2^(i+2)]}` after the
    per-output LayerNorms norm0..norm3 (not in ImageNet checkpoints; start at LN defaults).

    Attributes `out_channels`, `strides` (4/8/16/32) and `size_divisibility` = 32 (official
    ``mask_former/modeling/backbone/swin.py``).
    """

    out_features = ("res2", "res3", "res4", "res5")

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, drop_path_rate: float = MODEL_DEFAULTS.swin_drop_path,
                 patch_size: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # linear 0 -> drop_path_rate over all blocks (official); CPU so it also works under a meta device
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        dims = [int(embed_dim * 2 ** i) for i in range(len(depths))]
        for i, depth in enumerate(depths):
            self.layers.append(BasicLayer(dims[i], depth, num_heads[i], window_size,
                                          dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < len(depths) - 1))
        for i, d in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(d))
        self.num_features = dims
        self.window_size = window_size
        self.out_channels = {f"res{i + 2}": d for i, d in enumerate(dims)}
        self.strides = {f"res{i + 2}": 2 ** (i + 2) for i in range(len(dims))}
        self.size_divisibility = 32
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official init: trunc_normal(0.02) for Linear weights, bias 0; LayerNorm 1 / 0.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes [B,3,H,W] input, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        h, w = x.shape[2], x.shape[3]
        x = x.flatten(2).transpose(1, 2)
        outs = {}
        for i, layer in enumerate(self.layers):
            x_out, ho, wo, x, h, w = layer(x, h, w)
            x_out = getattr(self, f"norm{i}")(x_out)
            outs[f"res{i + 2}"] = x_out.view(-1, ho, wo, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
        return outs


def swin(name: str, window_size: int | None = None, drop_path_rate: float = MODEL_DEFAULTS.swin_drop_path) -> SwinTransformer:
    """Build a Swin from SWIN_CONFIGS; `window_size` overrides the official window (7 or 12)."""
    cfg = dict(SWIN_CONFIGS[name])
    if window_size is not None:
        cfg["window_size"] = int(window_size)
    return SwinTransformer(drop_path_rate=drop_path_rate, **cfg)
