"""Backbone registry: `build_backbone(name, ...)` for the paper backbones and the two smoke extras."""
from __future__ import annotations

from torch import nn

from maskformer_core.errors import ConfigError
from maskformer_core.models.backbones.resnet import resnet_r50, resnet_r101, resnet_r101c, smoke_r18
from maskformer_core.models.backbones.swin import SWIN_CONFIGS, swin

# Paper backbones (detectron2 modeling/backbone/resnet.py; MaskFormer mask_former/modeling/backbone/swin.py)
# then CPU-smoke extras (never paper models).
PAPER_BACKBONES = ("R50", "R101", "R101c", "Swin-T", "Swin-S", "Swin-B", "Swin-L")
SMOKE_BACKBONES = ("SmokeR18", "SmokeSwin")
BACKBONE_NAMES = PAPER_BACKBONES + SMOKE_BACKBONES


def is_swin(name: str) -> bool:
    return name in SWIN_CONFIGS


def build_backbone(name: str, *, swin_window: int | None = None, drop_path: float = 0.3) -> nn.Module:
    """Return a backbone with `forward(x[B,3,H,W]) -> {"res2".."res5"}`, `out_channels`, `strides`,
    `size_divisibility`. `swin_window`/`drop_path` apply to Swin only (defaults: 7 or 12, 0.3; BACKBONE_B2)."""
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    if not is_swin(name) and swin_window is not None:
        raise ConfigError(f"swin_window={swin_window} given for non-Swin backbone {name!r}")
    if name == "R50":
        return resnet_r50()
    if name == "R101":
        return resnet_r101()
    if name == "R101c":
        return resnet_r101c()
    if name == "SmokeR18":
        return smoke_r18()
    if swin_window is not None and int(swin_window) < 1:
        raise ConfigError(f"swin_window must be >= 1, got {swin_window}")
    if not 0.0 <= float(drop_path) < 1.0:
        raise ConfigError(f"drop_path must be in [0, 1), got {drop_path}")
    return swin(name, window_size=swin_window, drop_path_rate=float(drop_path))


__all__ = ["BACKBONE_NAMES", "PAPER_BACKBONES", "SMOKE_BACKBONES", "build_backbone", "is_swin"]
