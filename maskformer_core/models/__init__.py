"""MaskFormer model family (official ``mask_former/modeling/``): backbones, pixel decoders, transformer
predictor, baselines."""
from maskformer_core.models.build import ARCHS, build_model, count_parameters

__all__ = ["ARCHS", "build_model", "count_parameters"]
