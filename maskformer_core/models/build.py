"""`build_model(**kwargs)`: the one place that turns explicit options into a MaskFormer or per-pixel baseline
model (contract table in docs/ARCHITECTURE.md; defaults from official ``mask_former/config.py`` and
``mask_former/modeling/``). Every option is validated before anything is built; impossible combinations raise
ConfigError naming the option."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from maskformer_core.errors import ConfigError
from maskformer_core.models.backbones import BACKBONE_NAMES, BACKBONES, build_backbone, is_swin
from maskformer_core.models.defaults import MODEL_DEFAULTS as D
from maskformer_core.models.defaults import default_drop_path, default_enc_layers, default_num_queries
from maskformer_core.models.maskformer import PIXEL_MEAN, PIXEL_STD, MaskFormer, MaskFormerHead
from maskformer_core.models.per_pixel import PerPixelBaselineHead, PerPixelBaselinePlusHead, PerPixelModel
from maskformer_core.models.pixel_decoder import BasePixelDecoder, TransformerEncoderPixelDecoder
from maskformer_core.models.predictor import TransformerPredictor
from maskformer_core.models.weights import check_pretrained_option, load_backbone_weights

ARCHS = ("maskformer", "per_pixel", "per_pixel_plus")
PIXEL_DECODERS = ("base", "transformer_encoder")
TRANSFORMER_IN_FEATURES = ("res5", "transformer_encoder")


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def build_model(*, arch: str = D.arch, backbone: str = D.backbone, num_classes: int,
                num_queries: int | None = None, dec_layers: int = D.dec_layers,
                dec_self_attention: bool = D.dec_self_attention, pixel_decoder: str = D.pixel_decoder,
                enc_layers: int | None = None, transformer_in_feature: str = D.transformer_in_feature,
                hidden_dim: int = D.hidden_dim, mask_dim: int = D.mask_dim, conv_dim: int = D.conv_dim,
                nheads: int = D.nheads, dim_feedforward: int = D.dim_feedforward, dropout: float = D.dropout,
                box_head: bool = D.box_head, deep_supervision: bool = D.deep_supervision, pretrained=None,
                swin_window: int | None = None, drop_path: float | None = None, size_divisibility: int | None = None,
                enforce_input_proj: bool = D.enforce_input_proj,
                pixel_mean: Sequence[float] = PIXEL_MEAN, pixel_std: Sequence[float] = PIXEL_STD) -> nn.Module:
    """Build a model; see docs/ARCHITECTURE.md "Model contract" for outputs.

    Defaults are `maskformer_core.models.defaults.MODEL_DEFAULTS` (official ``mask_former/config.py``);
    None picks the dependent default of that module:
    num_queries: `default_num_queries`: 100 for maskformer, K for per_pixel_plus (must equal K, official
    ``mask_former/modeling/heads/per_pixel_baseline.py``); unused by per_pixel.
    enc_layers: `default_enc_layers`: 6 with pixel_decoder "transformer_encoder" ("+6 Enc", official
    ``mask_former/modeling/heads/pixel_decoder.py``), 0 with "base".
    drop_path: `default_drop_path`: 0.3 for Swin (MODEL.SWIN.DROP_PATH_RATE); ResNets have none.
    size_divisibility: 32 for maskformer (MASK_FORMER.SIZE_DIVISIBILITY; pass 0 for COCO
    panoptic, official ``mask_former/config.py``) and the backbone's own (0 ResNet, 32 Swin) for the per-pixel
    baselines (official per_pixel_baseline.py).
    pretrained: None | path (.pkl/.pth/.safetensors) | "hub" (the backbone's official ImageNet weights on
    the timm hub) | "hub:<timm tag>" (e.g. the Swin-B IN-1K rows) - backbone initialisation only.
    """
    # ---- validate everything first (nothing is built on bad input)
    if arch not in ARCHS:
        raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if backbone not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {backbone!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    _positive_int("num_classes", num_classes)
    if num_queries is None:
        num_queries = default_num_queries(arch, num_classes)
    if arch != "per_pixel":  # the per-pixel baseline has no queries
        _positive_int("num_queries", num_queries)
    if arch == "per_pixel_plus" and num_queries != num_classes:
        raise ConfigError(f"num_queries={num_queries} must equal num_classes={num_classes} for arch "
                          f"'per_pixel_plus' (one query per class, official per_pixel_baseline.py)")
    _positive_int("dec_layers", dec_layers)
    if pixel_decoder not in PIXEL_DECODERS:
        raise ConfigError(f"pixel_decoder must be one of {', '.join(PIXEL_DECODERS)}, got {pixel_decoder!r}")
    if enc_layers is None:
        enc_layers = default_enc_layers(pixel_decoder)
    if pixel_decoder == "base" and enc_layers != 0:
        raise ConfigError(f"enc_layers={enc_layers} needs pixel_decoder='transformer_encoder' (the base "
                          f"pixel decoder has no encoder)")
    if pixel_decoder == "transformer_encoder":
        _positive_int("enc_layers", enc_layers)
    if transformer_in_feature not in TRANSFORMER_IN_FEATURES:
        raise ConfigError(f"transformer_in_feature must be one of {', '.join(TRANSFORMER_IN_FEATURES)}, "
                          f"got {transformer_in_feature!r}")
    if transformer_in_feature == "transformer_encoder" and pixel_decoder != "transformer_encoder":
        raise ConfigError("transformer_in_feature='transformer_encoder' needs pixel_decoder='transformer_encoder' "
                          f"(got pixel_decoder={pixel_decoder!r})")
    for name, value in (("hidden_dim", hidden_dim), ("mask_dim", mask_dim), ("conv_dim", conv_dim),
                        ("nheads", nheads), ("dim_feedforward", dim_feedforward)):
        _positive_int(name, value)
    if conv_dim % 32:
        raise ConfigError(f"conv_dim={conv_dim} must be a multiple of 32 "
                          "(GroupNorm with 32 groups, as the official pixel_decoder.py)")
    if hidden_dim % nheads or hidden_dim % 2:
        raise ConfigError(f"hidden_dim={hidden_dim} must be even and divisible by nheads={nheads}")
    if pixel_decoder == "transformer_encoder" and conv_dim % nheads:
        raise ConfigError(f"conv_dim={conv_dim} must be divisible by nheads={nheads} for the encoder")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    if box_head and arch != "maskformer":
        raise ConfigError(f"box_head=True needs arch='maskformer' (got {arch!r})")
    if arch == "per_pixel" and not dec_self_attention:
        raise ConfigError("dec_self_attention=False has no meaning for arch 'per_pixel' (no transformer decoder)")
    if swin_window is not None and not is_swin(backbone):
        raise ConfigError(f"swin_window={swin_window} given for non-Swin backbone {backbone!r}")
    if size_divisibility is not None:
        _positive_int("size_divisibility", size_divisibility, minimum=0)
    if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
        raise ConfigError(f"pixel_mean/pixel_std must be 3 values (std > 0), got {pixel_mean}, {pixel_std}")
    if pretrained is not None and not BACKBONES[backbone].paper:
        raise ConfigError(f"pretrained={pretrained!r}: {backbone} is a smoke extra with no pretrained weights")
    check_pretrained_option(pretrained, backbone)

    # ---- build
    if drop_path is None:
        drop_path = default_drop_path(is_swin(backbone))
    bb = build_backbone(backbone, swin_window=swin_window, drop_path=drop_path)
    if pretrained is not None:
        load_backbone_weights(bb, pretrained, backbone)
    if pixel_decoder == "base":
        pd = BasePixelDecoder(bb.out_channels, conv_dim=conv_dim, mask_dim=mask_dim)
    else:
        pd = TransformerEncoderPixelDecoder(bb.out_channels, conv_dim=conv_dim, mask_dim=mask_dim,
                                            enc_layers=enc_layers, nheads=nheads,
                                            dim_feedforward=dim_feedforward, dropout=dropout)
    norm = dict(pixel_mean=tuple(pixel_mean), pixel_std=tuple(pixel_std))
    if arch == "per_pixel":
        head = PerPixelBaselineHead(pd, mask_dim, num_classes)
        div = bb.size_divisibility if size_divisibility is None else size_divisibility
        return PerPixelModel(bb, head, num_classes, arch, size_divisibility=div, **norm)

    in_ch = conv_dim if transformer_in_feature == "transformer_encoder" else bb.out_channels[transformer_in_feature]
    predictor = TransformerPredictor(
        in_ch, num_classes=num_classes, mask_classification=(arch == "maskformer"), hidden_dim=hidden_dim,
        num_queries=num_queries, nheads=nheads, dropout=dropout, dim_feedforward=dim_feedforward,
        dec_layers=dec_layers, mask_dim=mask_dim, deep_supervision=deep_supervision,
        dec_self_attention=dec_self_attention, enforce_input_proj=enforce_input_proj, box_head=box_head)
    if arch == "per_pixel_plus":
        head = PerPixelBaselinePlusHead(pd, predictor, transformer_in_feature)
        div = bb.size_divisibility if size_divisibility is None else size_divisibility
        return PerPixelModel(bb, head, num_classes, arch, size_divisibility=div, **norm)
    head = MaskFormerHead(pd, predictor, transformer_in_feature)
    return MaskFormer(bb, head, num_classes, size_divisibility=D.size_divisibility if size_divisibility is None else size_divisibility,
                      **norm)


def count_parameters(module: nn.Module) -> int:
    """Number of nn.Parameter elements (FrozenBN buffers excluded, as in docs/FIDELITY.md §5)."""
    return sum(p.numel() for p in module.parameters())
