"""The official model defaults, written once: `MODEL_DEFAULTS` (the analogue of the official
``mask_former/config.py`` `add_mask_former_config`), read by `build_model`, `build_backbone` and the run
config's `model:` section (pipeline/config.py ModelConfig); nothing below re-defaults them.

The three defaults that depend on other options are functions here, so `build_model` and the plan-time
resolution (pipeline/config.py `resolve_defaults`) apply the same rule.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelDefaults:
    """One field per official default (config key of official ``mask_former/config.py`` /
    detectron2 ``config/defaults.py``, or the official file that fixes it)."""

    arch: str = "maskformer"
    backbone: str = "R50"  # configs/ade20k-150/maskformer_R50_bs16_160k.yaml, the paper's main model
    num_queries: int = 100  # MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    dec_layers: int = 6  # MODEL.MASK_FORMER.DEC_LAYERS
    dec_self_attention: bool = True  # the official predictor always has self-attention (paper appendix Table VIII drops it)
    pixel_decoder: str = "base"  # MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME BasePixelDecoder
    transformer_enc_layers: int = 6  # MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS of the "+6 Enc" configs (paper Table 3)
    transformer_in_feature: str = "res5"  # MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
    hidden_dim: int = 256  # MODEL.MASK_FORMER.HIDDEN_DIM
    mask_dim: int = 256  # MODEL.SEM_SEG_HEAD.MASK_DIM
    conv_dim: int = 256  # MODEL.SEM_SEG_HEAD.CONVS_DIM
    nheads: int = 8  # MODEL.MASK_FORMER.NHEADS
    dim_feedforward: int = 2048  # MODEL.MASK_FORMER.DIM_FEEDFORWARD
    dropout: float = 0.1  # MODEL.MASK_FORMER.DROPOUT
    box_head: bool = False  # paper Table 5 box matching (no official config)
    deep_supervision: bool = True  # MODEL.MASK_FORMER.DEEP_SUPERVISION
    swin_drop_path: float = 0.3  # MODEL.SWIN.DROP_PATH_RATE (official mask_former/config.py add_swin_config)
    size_divisibility: int = 32  # MODEL.MASK_FORMER.SIZE_DIVISIBILITY (0 in configs/coco-panoptic)
    enforce_input_proj: bool = False  # MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ


MODEL_DEFAULTS = ModelDefaults()


def default_num_queries(arch: str, num_classes: int) -> int | None:
    """Queries when none are given: K for per_pixel_plus (one query per class, official
    ``modeling/heads/per_pixel_baseline.py``), none for per_pixel, else NUM_OBJECT_QUERIES."""
    if arch == "per_pixel_plus":
        return num_classes
    if arch == "per_pixel":
        return None
    return MODEL_DEFAULTS.num_queries


def default_enc_layers(pixel_decoder: str) -> int:
    """Encoder layers of the pixel decoder: TRANSFORMER_ENC_LAYERS for "transformer_encoder", 0 for "base"."""
    return MODEL_DEFAULTS.transformer_enc_layers if pixel_decoder == "transformer_encoder" else 0


def default_drop_path(swin: bool) -> float | None:
    """Stochastic depth of a Swin backbone (MODEL.SWIN.DROP_PATH_RATE); None for a ResNet (no such option)."""
    return MODEL_DEFAULTS.swin_drop_path if swin else None
