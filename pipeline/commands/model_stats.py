"""`python -m pipeline model-stats`: #params, GFLOPs (fvcore, detectron2 convention) and CPU FPS of a
paper model for a dataset; human lines, then one JSON object on the last line."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class ModelStatsDataset:
    """What model-stats needs per dataset: K, the FLOP input size, and whether ResNets get "+6 Enc"."""

    num_classes: int
    crop: tuple[int, int]  # (H, W) FLOP/FPS input: the training crop (``INPUT.CROP.SIZE``; paper Table 1)
    crop_swin_large: tuple[int, int] | None = None  # Swin-B/L input where the configs use another crop
    resnet_6enc: bool = False  # ResNet rows use TransformerEncoderPixelDecoder + transformer_encoder memory
    size_divisibility: int = 32  # MASK_FORMER.SIZE_DIVISIBILITY (0 in configs/coco-panoptic)
    note: str = ""


# Small private table (the data engineer owns the full metadata; this module must not depend on it).
DATASETS: dict[str, ModelStatsDataset] = {
    "ade20k": ModelStatsDataset(150, (512, 512), crop_swin_large=(640, 640),
                                note="configs/ade20k-150/*.yaml INPUT.CROP.SIZE"),
    "ade20k_full": ModelStatsDataset(847, (512, 512), note="configs/ade20k-full-847/maskformer_R50_bs16_200k.yaml"),
    "coco_stuff_10k": ModelStatsDataset(171, (640, 640),
                                        note="configs/coco-stuff-10k-171/maskformer_R50_bs32_60k.yaml"),
    "cityscapes": ModelStatsDataset(19, (512, 1024),
                                    note="crop 512x1024, configs/cityscapes-19/maskformer_R101_bs16_90k.yaml"),
    "mapillary_vistas": ModelStatsDataset(65, (1280, 1280),
                                          note="configs/mapillary-vistas-65/maskformer_R50_bs16_300k.yaml"),
    # The paper's T3 FLOPs average 100 val images; we use one 800x1067 input, the test resize
    # (short 800, max 1333) of COCO's most common 640x480 landscape image, with no padding
    # (SIZE_DIVISIBILITY 0). An approximation of that mean, not the paper's protocol.
    "coco_panoptic": ModelStatsDataset(133, (800, 1067), resnet_6enc=True, size_divisibility=0,
                                       note="800x1067 stands in for the mean of 100 val images (paper Table 3)"),
    "ade20k_panoptic": ModelStatsDataset(150, (640, 640), resnet_6enc=True,
                                         note="configs/ade20k-150-panoptic/*.yaml"),
}
PAPER_BACKBONES = ("R50", "R101", "R101c", "Swin-T", "Swin-S", "Swin-B", "Swin-L")
MODELS = ("maskformer", "per_pixel", "per_pixel_plus")


def model_kwargs(dataset: str, backbone: str, model: str = "maskformer", queries: int | None = None,
                 dec_layers: int = 6) -> dict:
    """build_model kwargs for a paper row: K, "+6 Enc" for ResNet panoptic rows, size divisibility."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    ds = DATASETS[dataset]
    kwargs = dict(arch=model, backbone=backbone, num_classes=ds.num_classes, dec_layers=dec_layers,
                  size_divisibility=ds.size_divisibility)
    if queries is not None:
        kwargs["num_queries"] = queries
    if ds.resnet_6enc and not backbone.startswith("Swin") and model == "maskformer":
        kwargs.update(pixel_decoder="transformer_encoder", transformer_in_feature="transformer_encoder")
    return kwargs


def input_size(dataset: str, backbone: str) -> tuple[int, int]:
    ds = DATASETS[dataset]
    if backbone in ("Swin-B", "Swin-L") and ds.crop_swin_large is not None:
        return ds.crop_swin_large
    return ds.crop


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like HxW (e.g. 512x512), got {text!r}") from None
    if h < 32 or w < 32:
        raise UserError(f"--size {text}: both sides must be >= 32 (the backbone stride)")
    return h, w


def measure_fps(model, size: tuple[int, int], warmup: int = 2, iters: int = 5) -> float:
    """Images/s of the eval forward (+ semantic inference) at batch 1 on CPU; warm-up runs excluded."""
    import torch

    from maskformer_core.models.flops import SemanticInferenceGraph

    graph = SemanticInferenceGraph(model.eval(), out_size=size)
    x = torch.zeros(1, 3, *size)
    with torch.no_grad():
        for _ in range(warmup):
            graph(x)
        start = time.perf_counter()
        for _ in range(iters):
            graph(x)
        elapsed = time.perf_counter() - start
    return iters / elapsed


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "model-stats", help="#params, GFLOPs and CPU FPS of a MaskFormer / per-pixel model",
        description="Builds the paper model for DATASET/BACKBONE on CPU and reports #params (FrozenBN "
                    "buffers excluded), optionally fvcore GFLOPs at the dataset's crop size (detectron2 "
                    "convention, with and without the aux-layer mask einsums) and CPU FPS (batch 1). "
                    "The last output line is one JSON object.")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--backbone", required=True,
                        help=f"one of {', '.join(PAPER_BACKBONES)}, SmokeR18, SmokeSwin")
    parser.add_argument("--model", default="maskformer", choices=MODELS)
    parser.add_argument("--queries", type=int, help="number of queries (default 100; K for per_pixel_plus)")
    parser.add_argument("--dec-layers", type=int, default=6, help="decoder layers (default 6)")
    parser.add_argument("--flops", action="store_true", help="count GFLOPs with fvcore")
    parser.add_argument("--fps", action="store_true", help="measure CPU images/s at batch 1")
    parser.add_argument("--fps-iters", type=int, default=5, help="timed iterations for --fps (default 5)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--size", help="input HxW overriding the dataset's crop (e.g. 64x64)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.fps_iters < 1:
        raise UserError(f"--fps-iters must be >= 1, got {args.fps_iters}")
    size_override = _parse_size(args.size) if args.size else None
    kwargs = model_kwargs(args.dataset, args.backbone, args.model, args.queries, args.dec_layers)
    import torch

    from maskformer_core.models import build_model, count_parameters
    from maskformer_core.models.flops import count_flops

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(**kwargs)
    size = size_override or input_size(args.dataset, args.backbone)
    head = model.sem_seg_head
    result = {
        "dataset": args.dataset, "backbone": args.backbone, "model": args.model,
        "num_classes": kwargs["num_classes"], "num_queries": getattr(getattr(head, "predictor", None), "num_queries", None),
        "dec_layers": args.dec_layers if args.model != "per_pixel" else None,
        "pixel_decoder": kwargs.get("pixel_decoder", "base"),
        "transformer_in_feature": kwargs.get("transformer_in_feature", "res5") if args.model != "per_pixel" else None,
        "params": count_parameters(model),
        "params_backbone": count_parameters(model.backbone),
        "params_pixel_decoder": count_parameters(head.pixel_decoder),
        "params_predictor": count_parameters(head.predictor),
        "input_size": list(size),
    }
    print(f"{args.model} {args.backbone} on {args.dataset} (K={result['num_classes']}, "
          f"pixel decoder {result['pixel_decoder']})")
    print(f"params: {result['params'] / 1e6:.3f}M (backbone {result['params_backbone'] / 1e6:.3f}M, "
          f"pixel decoder {result['params_pixel_decoder'] / 1e6:.3f}M, predictor {result['params_predictor'] / 1e6:.3f}M)")
    if args.flops:
        full = count_flops(model, size)
        last = count_flops(model, size, last_layer_only_masks=True)
        result.update(gflops=round(full["total"], 3), gflops_last_layer_only=round(last["total"], 3),
                      gflops_parts={k: round(v, 3) for k, v in full.items() if k != "total"},
                      flops_convention="fvcore, detectron2 ignored ops, 1 MAC = 1 flop, batch 1, eval, incl. "
                                       "mask upsample + semantic einsum + final resize")
        print(f"GFLOPs at {size[0]}x{size[1]}: {full['total']:.2f} (all {args.dec_layers} mask einsums), "
              f"{last['total']:.2f} (last layer only)")
    if args.fps:
        fps = measure_fps(model, size, iters=args.fps_iters)
        result.update(fps=round(fps, 3), device="cpu", threads=torch.get_num_threads(),
                      fps_note="CPU, batch 1, eval + semantic inference, warm-up excluded; the paper used a V100")
        print(f"FPS on CPU ({torch.get_num_threads()} threads, batch 1): {fps:.3f}")
    result.setdefault("device", "cpu")
    print(json.dumps(result))
    return 0
