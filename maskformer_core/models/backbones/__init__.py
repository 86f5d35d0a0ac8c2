"""Backbone registry: one `BackboneSpec` per name (builder, family, paper/smoke, pretrained sources).

Adding a backbone is one `register_backbone(BackboneSpec(...))` entry here (the analogue of detectron2's
`@BACKBONE_REGISTRY.register()` / timm's `@register_model`): params validation, the run config's solver
defaults (by family), model-stats and the weights loader all read this registry.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Callable, Literal, Mapping

from torch import nn

from maskformer_core.errors import ConfigError
from maskformer_core.models.backbones.resnet import resnet_r50, resnet_r101, resnet_r101c, smoke_r18
from maskformer_core.models.backbones.swin import SWIN_CONFIGS, swin
from maskformer_core.models.defaults import default_drop_path


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it and where its ImageNet weights come from.

    - `family`: "resnet" or "swin"; the official solver recipe follows it (paper appendix A.1: AdamW lr
      1e-4 / wd 1e-4 / backbone x0.1 for ResNets, 6e-5 / 0.01 / x1.0 with warmup for Swin).
    - `paper`: a backbone of the paper's tables (paper Sec. 4, Tables 1-3); False for the CPU smoke extras.
    - `hub_tags`: timm tags holding the official ImageNet weights per pretraining ("in1k" / "in22k").
    - `default_pretrain`: the pretraining of the official configs (the † Swin-B/L configs
      `configs/*/swin/*_IN21k_384_*.yaml` start from the 22k weights, every other backbone from 1k).
    - `official_file`: the MODEL.WEIGHTS file of the official configs, named in error messages.
    """

    name: str
    family: Literal["resnet", "swin"]
    paper: bool
    builder: Callable[..., nn.Module]
    hub_tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default_pretrain: str = "in1k"
    official_file: str | None = None

    @property
    def is_swin(self) -> bool:
        return self.family == "swin"


_REGISTRY: dict[str, BackboneSpec] = {}
BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType(_REGISTRY)


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ConfigError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _swin_builder(name: str) -> Callable[..., nn.Module]:
    def build(*, swin_window: int | None, drop_path: float) -> nn.Module:
        return swin(name, window_size=swin_window, drop_path_rate=float(drop_path))
    return build


def _resnet_builder(fn: Callable[[], nn.Module]) -> Callable[..., nn.Module]:
    def build(*, swin_window: int | None, drop_path: float | None) -> nn.Module:  # noqa: ARG001 - Swin-only options
        return fn()
    return build


# Paper backbones (paper Sec. 4 and appendix A; official configs configs/ade20k-150/*.yaml), then the
# CPU-smoke extras (never paper models). timm tags: the timm hub copies of the official ImageNet files
# (torchvision, Microsoft's Swin release); R101c's R-103.pkl has no timm copy.
for _spec in (
    BackboneSpec("R50", "resnet", True, _resnet_builder(resnet_r50), {"in1k": "resnet50.tv_in1k"},
                 official_file="R-50.pkl (detectron2://ImageNetPretrained/torchvision/R-50.pkl)"),
    BackboneSpec("R101", "resnet", True, _resnet_builder(resnet_r101), {"in1k": "resnet101.tv_in1k"},
                 official_file="R-101.pkl (torchvision resnet101-63fe2227.pth converted) or resnet101-63fe2227.pth"),
    BackboneSpec("R101c", "resnet", True, _resnet_builder(resnet_r101c),
                 official_file="R-103.pkl (detectron2://DeepLab/R-103.pkl)"),
    BackboneSpec("Swin-T", "swin", True, _swin_builder("Swin-T"), {"in1k": "swin_tiny_patch4_window7_224.ms_in1k"},
                 official_file="swin_tiny_patch4_window7_224.pth / .pkl"),
    BackboneSpec("Swin-S", "swin", True, _swin_builder("Swin-S"), {"in1k": "swin_small_patch4_window7_224.ms_in1k"},
                 official_file="swin_small_patch4_window7_224.pth / .pkl"),
    # The Swin-B "IN-1K" rows of Tables 1 and 3 have no official config; the Swin release's IN-1K
    # swin_base_patch4_window12_384.pth (same window 12 / 384 as the IN-22K † model).
    BackboneSpec("Swin-B", "swin", True, _swin_builder("Swin-B"),
                 {"in22k": "swin_base_patch4_window12_384.ms_in22k", "in1k": "swin_base_patch4_window12_384.ms_in1k"},
                 default_pretrain="in22k", official_file="swin_base_patch4_window12_384_22k.pth / .pkl"),
    BackboneSpec("Swin-L", "swin", True, _swin_builder("Swin-L"), {"in22k": "swin_large_patch4_window12_384.ms_in22k"},
                 default_pretrain="in22k", official_file="swin_large_patch4_window12_384_22k.pth / .pkl"),
    BackboneSpec("SmokeR18", "resnet", False, _resnet_builder(smoke_r18)),
    BackboneSpec("SmokeSwin", "swin", False, _swin_builder("SmokeSwin")),
):
    register_backbone(_spec)
assert {n for n, s in _REGISTRY.items() if s.is_swin} == set(SWIN_CONFIGS)

PAPER_BACKBONES = tuple(n for n, s in BACKBONES.items() if s.paper)
SMOKE_BACKBONES = tuple(n for n, s in BACKBONES.items() if not s.paper)
BACKBONE_NAMES = PAPER_BACKBONES + SMOKE_BACKBONES


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of `name` (ConfigError listing the valid names)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    return BACKBONES[name]


def is_swin(name: str) -> bool:
    """True for a registered Swin backbone (the one place that answers "is this a Swin")."""
    return name in BACKBONES and BACKBONES[name].is_swin


def backbone_family(name: str) -> str:
    """`resnet` or `swin` (ConfigError for an unknown name)."""
    return get_backbone_spec(name).family


def build_backbone(name: str, *, swin_window: int | None = None, drop_path: float | None = None) -> nn.Module:
    """Return a backbone with `forward(x[B,3,H,W]) -> {"res2".."res5"}`, `out_channels`, `strides`,
    `size_divisibility`. `swin_window`/`drop_path` apply to Swin only (defaults: 7 or 12 by model, official
    configs MODEL.SWIN.WINDOW_SIZE; None drop_path: `defaults.default_drop_path`, MODEL.SWIN.DROP_PATH_RATE)."""
    spec = get_backbone_spec(name)
    if drop_path is None:
        drop_path = default_drop_path(spec.is_swin)
    if not spec.is_swin and swin_window is not None:
        raise ConfigError(f"swin_window={swin_window} given for non-Swin backbone {name!r}")
    if spec.is_swin:
        if swin_window is not None and int(swin_window) < 1:
            raise ConfigError(f"swin_window must be >= 1, got {swin_window}")
        if not 0.0 <= float(drop_path) < 1.0:
            raise ConfigError(f"drop_path must be in [0, 1), got {drop_path}")
    return spec.builder(swin_window=swin_window, drop_path=drop_path)


__all__ = ["BACKBONES", "BACKBONE_NAMES", "BackboneSpec", "PAPER_BACKBONES", "SMOKE_BACKBONES", "backbone_family",
           "build_backbone", "get_backbone_spec", "is_swin", "register_backbone"]
