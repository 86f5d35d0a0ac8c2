"""Output parity of HF transformers' MaskFormer and this project's model on the same (random) weights,
at the paper widths: 256-wide FPN / decoder, 6 decoder layers, 100 queries, K = 150 (official configs/ade20k-150/maskformer_R50_bs16_160k.yaml: MASK_FORMER.HIDDEN_DIM 256, DEC_LAYERS 6, NUM_OBJECT_QUERIES 100).

For each backbone an HF `MaskFormerForInstanceSegmentation` is built from a config with random weights
(BN statistics and norm affines randomised too), saved with `save_pretrained`, imported with
`maskformer_core.models.hf.from_hf_pretrained`, and both run on the same random images; the table gives
max |diff| of pred_logits vs class_queries_logits and pred_masks vs masks_queries_logits. Needs
transformers (the dev extra); no download.

    .venv/bin/python benchmarks/hf_parity.py [--backbones R50 R101 Swin-T Swin-B] [--size 256 320] [--float64]

In float32 the gap grows with depth (summation order: HF's plain convolutions vs this project's CPU paths,
1x1 convs as baddbmm and FrozenBN folded into the conv, docs/ARCHITECTURE.md); `--float64` runs both
models in double precision, where the gap falls to rounding of that precision.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskformer_core.models.backbones.swin import SWIN_CONFIGS  # noqa: E402
from maskformer_core.models.hf import from_hf_pretrained  # noqa: E402

OUT = ["stage1", "stage2", "stage3", "stage4"]


def hf_model(backbone: str, num_labels: int = 150):
    from transformers import MaskFormerConfig, MaskFormerDetrConfig, MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig

    if backbone in ("R50", "R101"):
        bb = ResNetConfig(depths=[3, 4, 6, 3] if backbone == "R50" else [3, 4, 23, 3], layer_type="bottleneck", out_features=OUT)
    else:
        c = SWIN_CONFIGS[backbone]
        bb = SwinConfig(embed_dim=c["embed_dim"], depths=list(c["depths"]), num_heads=list(c["num_heads"]),
                        window_size=c["window_size"], out_features=OUT)
    dec = MaskFormerDetrConfig(num_queries=100, decoder_layers=6, d_model=256, decoder_ffn_dim=2048,
                               decoder_attention_heads=8, use_timm_backbone=False, backbone_config=None)
    cfg = MaskFormerConfig(backbone_config=bb, decoder_config=dec, num_labels=num_labels, fpn_feature_size=256,
                           mask_feature_size=256, id2label={i: str(i) for i in range(num_labels)},
                           label2id={str(i): i for i in range(num_labels)})
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if "running_var" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif "running_mean" in name or ("norm" in name and name.endswith("bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif "norm" in name and name.endswith("weight") and t.dim() == 1:
                t.copy_(1 + torch.randn(t.shape, generator=g) * 0.1)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["R50", "Swin-T"])
    ap.add_argument("--size", nargs=2, type=int, default=[256, 320], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--float64", action="store_true", help="run both models in float64")
    args = ap.parse_args()
    dtype = torch.float64 if args.float64 else torch.float32
    torch.set_num_threads(args.threads)
    print(f"{'backbone':10} {'dtype':8} {'input':>9} {'max|d logits|':>14} {'max|d masks|':>13} {'|masks| max':>11} {'s':>6}")
    for backbone in args.backbones:
        t0 = time.perf_counter()
        model = hf_model(backbone)
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            ours = from_hf_pretrained(d)
        model, ours = model.to(dtype), ours.to(dtype)
        x = torch.randn(args.batch, 3, *args.size, generator=torch.Generator().manual_seed(2)).to(dtype)
        with torch.no_grad():
            h, o = model(pixel_values=x), ours(x)
        dl = (h.class_queries_logits - o["pred_logits"]).abs().max().item()
        dm = (h.masks_queries_logits - o["pred_masks"]).abs().max().item()
        print(f"{backbone:10} {str(dtype)[6:]:8} {args.size[0]:>4}x{args.size[1]:<4} {dl:>14.2e} {dm:>13.2e} "
              f"{o['pred_masks'].abs().max().item():>11.1f} {time.perf_counter() - t0:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
