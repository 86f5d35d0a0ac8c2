"""`python -m pipeline model-stats`: #params, GFLOPs (fvcore, detectron2 convention) and CPU FPS of a
paper model for a dataset; human lines, then one JSON object on the last line."""
from __future__ import annotations

import json
import time

from maskformer_core.models.backbones import PAPER_BACKBONES
from pipeline.errors import UserError
from pipeline.model_inputs import DATASETS, MODELS, input_size, model_kwargs


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
