"""Per-dataset inputs of the paper-model statistics (#params, GFLOPs, FPS): K, the FLOP input size, "+6 Enc".

Read by `python -m pipeline model-stats` (pipeline/commands/model_stats.py) and the paper model table
(pipeline/paper_model_stats.py). K comes from the dataset metadata (maskformer_core.data.metadata.OFFICIAL_NUM_CLASSES),
"is this a Swin" from the backbone registry (maskformer_core.models.backbones).
"""
from __future__ import annotations

from dataclasses import dataclass

from maskformer_core.data.metadata import OFFICIAL_NUM_CLASSES
from maskformer_core.models.backbones import is_swin
from pipeline.errors import UserError


@dataclass(frozen=True)
class ModelStatsDataset:
    """What model-stats needs per dataset: the FLOP input size, and whether ResNets get "+6 Enc"."""

    crop: tuple[int, int]  # (H, W) FLOP/FPS input: the training crop (official configs INPUT.CROP.SIZE)
    crop_swin_large: tuple[int, int] | None = None  # Swin-B/L input where the configs use another crop
    resnet_6enc: bool = False  # ResNet rows use TransformerEncoderPixelDecoder + transformer_encoder memory
    size_divisibility: int = 32  # MODEL.MASK_FORMER.SIZE_DIVISIBILITY (0 in the coco-panoptic configs)
    note: str = ""


# Crops of the official configs (facebookresearch/MaskFormer configs/<dataset>/*.yaml, INPUT.CROP.SIZE).
DATASETS: dict[str, ModelStatsDataset] = {
    "ade20k": ModelStatsDataset((512, 512), crop_swin_large=(640, 640),
                                note="configs/ade20k-150/*.yaml; swin/*_IN21k_384_*_res640.yaml: 640"),
    "ade20k_full": ModelStatsDataset((512, 512), note="configs/ade20k-full-847/maskformer_R50_bs16_200k.yaml"),
    "coco_stuff_10k": ModelStatsDataset((640, 640), note="configs/coco-stuff-10k-171/maskformer_R50_bs32_60k.yaml"),
    "cityscapes": ModelStatsDataset((512, 1024), note="crop 512x1024, configs/cityscapes-19/maskformer_R101_bs16_90k.yaml"),
    "mapillary_vistas": ModelStatsDataset((1280, 1280), note="configs/mapillary-vistas-65/maskformer_R50_bs16_300k.yaml"),
    # The paper's Table 3 FLOPs average 100 val images (paper Sec. 4.1); we use one 800x1067 input, the
    # test resize (short 800, max 1333) of COCO's most common 640x480 landscape image, with no padding
    # (SIZE_DIVISIBILITY 0). An approximation of that mean, not the paper's protocol.
    "coco_panoptic": ModelStatsDataset((800, 1067), resnet_6enc=True, size_divisibility=0,
                                       note="800x1067 stands in for the mean of 100 val images (paper Table 3)"),
    "ade20k_panoptic": ModelStatsDataset((640, 640), resnet_6enc=True,
                                         note="configs/ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k.yaml"),
}
MODELS = ("maskformer", "per_pixel", "per_pixel_plus")


def model_kwargs(dataset: str, backbone: str, model: str = "maskformer", queries: int | None = None,
                 dec_layers: int = 6) -> dict:
    """build_model kwargs for a paper row: K, "+6 Enc" for ResNet panoptic rows, size divisibility."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    ds = DATASETS[dataset]
    kwargs = dict(arch=model, backbone=backbone, num_classes=OFFICIAL_NUM_CLASSES[dataset], dec_layers=dec_layers,
                  size_divisibility=ds.size_divisibility)
    if queries is not None:
        kwargs["num_queries"] = queries
    if ds.resnet_6enc and not is_swin(backbone) and model == "maskformer":
        kwargs.update(pixel_decoder="transformer_encoder", transformer_in_feature="transformer_encoder")
    return kwargs


def input_size(dataset: str, backbone: str) -> tuple[int, int]:
    """(H, W) of the FLOP/FPS input of `backbone` on `dataset`."""
    ds = DATASETS[dataset]
    if backbone in ("Swin-B", "Swin-L") and ds.crop_swin_large is not None:
        return ds.crop_swin_large
    return ds.crop
