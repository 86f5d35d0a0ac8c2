"""Time one training step (forward + loss + backward + clip + AdamW step) of our MaskFormer against HF transformers'.

Both models are built offline from a config with random initialisation, on the same backbone family
(ResNet-50), the same input size, number of classes and queries, deep supervision on both sides,
full-model clipping at 0.01 and AdamW with lr 1e-4 / weight decay 1e-4: ours through the engine's
optimiser (pipeline.solver.build_optimizer: one group per parameter as the official build_optimizer, fused
kernel), HF through
what an HF Trainer user gets (torch AdamW default implementation, decay / no-decay groups). HF is
optional: `pip install --no-deps transformers tokenizers` (plus safetensors/huggingface_hub/regex).

Also reports the smoke model's training iterations/second (SmokeR18, 64-wide decoder, 64x64 crops,
batch 4), the configuration the CPU smoke profile runs.

    .venv/bin/python benchmarks/train_step_vs_hf.py [--size 256] [--batch 2] [--steps 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskformer_core.criterion import build_criterion  # noqa: E402
from maskformer_core.models import build_model  # noqa: E402
from pipeline.config import RunConfig, resolve_defaults  # noqa: E402
from pipeline.solver import build_optimizer, clip_full_model  # noqa: E402


def make_targets(batch: int, size: int, num_classes: int, per_image: int = 6, seed: int = 0):
    """Random non-overlapping-ish class masks: `per_image` rectangles per image with distinct labels."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        per_image = min(per_image, num_classes)
        labels = torch.randperm(num_classes, generator=g)[:per_image]
        masks = torch.zeros(per_image, size, size, dtype=torch.bool)
        for i in range(per_image):
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
            masks[i, y0:y0 + h, x0:x0 + w] = True
        targets.append({"labels": labels, "masks": masks})
    return targets


def time_steps(step, steps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def ours_step(size: int, batch: int, num_classes: int, queries: int, backbone: str = "R50", widths: int = 256,
              channels_last: bool = False):
    torch.manual_seed(0)
    kw = {}
    if widths != 256:
        kw = dict(hidden_dim=widths, mask_dim=widths, conv_dim=widths, dim_feedforward=2 * widths, nheads=4)
    model = build_model(arch="maskformer", backbone=backbone, num_classes=num_classes, num_queries=queries, **kw)
    model.train()
    criterion = build_criterion("maskformer", num_classes, dec_layers=6)
    solver = resolve_defaults(RunConfig.model_validate({"model": {"backbone": backbone}})).solver
    opt = build_optimizer(model, solver)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    targets = make_targets(batch, size, num_classes)

    def step():
        out = model(x)
        losses = criterion(out, targets)
        loss = sum(losses[k] * criterion.weight_dict[k] for k in losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_full_model(params, 0.01)
        opt.step()
    return step


def hf_step(size: int, batch: int, num_classes: int, queries: int):
    from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    decoder = DetrConfig(num_queries=queries, decoder_layers=6, d_model=256, decoder_ffn_dim=2048,
                         decoder_attention_heads=8, dropout=0.1, use_pretrained_backbone=False,
                         # the official decoder (official ``mask_former/modeling/transformer/``) also drops out
                         # attention weights and the FFN
                         # hidden layer (nn.MultiheadAttention(dropout=0.1), DETR FFN); HF defaults them to 0
                         attention_dropout=0.1, activation_dropout=0.1)
    cfg = MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, use_auxiliary_loss=True,
                           num_labels=num_classes, id2label={i: str(i) for i in range(num_classes)},
                           label2id={str(i): i for i in range(num_classes)}, fpn_feature_size=256, mask_feature_size=256)
    model = MaskFormerForInstanceSegmentation(cfg)
    model.train()
    # HF side: the optimiser an HF Trainer user gets (torch AdamW, default implementation, decay / no-decay
    # groups for biases and LayerNorm) with the same lr, weight decay and clipping.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(batch, 3, size, size)
    targets = make_targets(batch, size, num_classes)
    mask_labels = [t["masks"].float() for t in targets]
    class_labels = [t["labels"] for t in targets]

    def step():
        out = model(pixel_values=x, mask_labels=mask_labels, class_labels=class_labels, output_hidden_states=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        clip_full_model(params, 0.01)
        opt.step()
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke-steps", type=int, default=20)
    ap.add_argument("--channels-last", action="store_true", help="run our model in channels-last memory format")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# train step, CPU, {args.threads} threads, batch {args.batch}, {args.size}x{args.size}, "
          f"K={args.classes}, Q={args.queries}, R50 random init, 6 decoder layers + deep supervision; "
          f"{args.steps} interleaved rounds after 1 warm-up each")
    ours = ours_step(args.size, args.batch, args.classes, args.queries, channels_last=args.channels_last)
    try:
        hf = hf_step(args.size, args.batch, args.classes, args.queries)
    except ImportError as exc:
        hf = None
        print(f"HF transformers could not be imported ({exc}); install with "
              f"`pip install --no-deps transformers tokenizers` to compare.")
    # Interleave the two (A, B, A, B, ...) so that load from other processes hits both alike.
    ours(), hf and hf()
    t_ours, t_hf = [], []
    for _ in range(args.steps):
        t_ours += time_steps(ours, 1, warmup=0)
        if hf is not None:
            t_hf += time_steps(hf, 1, warmup=0)
    print(f"{'model':<30} {'median s/step':>14} {'min s/step':>11}")
    print(f"{'ours (maskformer_core)':<30} {statistics.median(t_ours):14.3f} {min(t_ours):11.3f}")
    if hf is not None:
        print(f"{'HF transformers MaskFormer':<30} {statistics.median(t_hf):14.3f} {min(t_hf):11.3f}")
        ratios = [h / o for o, h in zip(t_ours, t_hf)]
        print(f"speed-up ours vs HF: {statistics.median(t_hf) / statistics.median(t_ours):.2f}x (median of medians), "
              f"{min(t_hf) / min(t_ours):.2f}x (best vs best), per-round median {statistics.median(ratios):.2f}x")
    smoke = time_steps(ours_step(64, 4, 5, 10, backbone="SmokeR18", widths=64), args.smoke_steps, warmup=2)
    print(f"\n# smoke model (SmokeR18, 64-wide decoder, 64x64, batch 4, K=5, Q=10), {args.threads} threads")
    print(f"{'smoke it/s':<30} {1 / statistics.median(smoke):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
