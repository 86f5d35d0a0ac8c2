"""Forward + backward time of every 1x1 convolution of the R50 MaskFormer, F.conv2d (oneDNN on CPU) vs
`maskformer_core.models.conv.conv2d` (the batched-matmul path the models use on CPU), on this machine.

The shapes are the ones the model really runs at the given input size (recorded from one forward);
each is timed `--repeats` times, interleaved, and the table gives the median per call times the number of
calls per forward, so the totals are per training step. Also checks both paths agree (max |diff|).

    .venv/bin/python benchmarks/conv_paths.py [--size 128] [--batch 2] [--threads 2] [--repeats 9]
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import maskformer_core.models.conv as conv_mod  # noqa: E402
from maskformer_core.models import build_model  # noqa: E402
from train_step_vs_hf import time_steps  # noqa: E402  (same warm-up + timing loop)


def record_pointwise_shapes(size: int, batch: int) -> collections.Counter:
    """(input shape, weight shape, has bias, stride) -> calls, for every 1x1 conv in one R50 MaskFormer forward."""
    model = build_model(arch="maskformer", backbone="R50", num_classes=150, num_queries=100).train()
    seen: collections.Counter = collections.Counter()
    original = conv_mod.conv2d

    def spy(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if conv_mod.is_pointwise(weight, padding, groups):
            seen[(tuple(x.shape), tuple(weight.shape), bias is not None, conv_mod._pair(stride))] += 1
        return original(x, weight, bias, stride, padding, dilation, groups)

    conv_mod.conv2d = spy  # every Conv2d (Conv2dNorm included) calls it through _conv_forward
    try:
        with torch.no_grad():
            model(torch.randn(batch, 3, size, size))
    finally:
        conv_mod.conv2d = original
    return seen


def fwd_bwd_time(fn, x, w, b, stride, repeats: int) -> float:
    def once():
        y = fn(x, w, b, stride)
        y.backward(torch.ones_like(y))
    return statistics.median(time_steps(once, repeats))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = record_pointwise_shapes(args.size, args.batch)
    print(f"# 1x1 convs of R50 MaskFormer, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
          f"forward+backward, median of {args.repeats}; ms = per call x calls")
    print(f"{'input':<20} {'weight':<18} {'stride':<7} {'calls':>5} {'F.conv2d ms':>12} {'matmul ms':>10} "
          f"{'ratio':>6} {'max|diff|':>9}")
    total_ref = total_ours = 0.0
    g = torch.Generator().manual_seed(0)
    for (xs, ws, has_bias, stride), calls in sorted(shapes.items()):
        x = torch.randn(xs, generator=g, requires_grad=True)
        w = torch.randn(ws, generator=g, requires_grad=True)
        b = torch.randn(ws[0], generator=g, requires_grad=True) if has_bias else None
        t_ref = fwd_bwd_time(F.conv2d, x, w, b, stride, args.repeats) * calls * 1e3
        t_ours = fwd_bwd_time(conv_mod.conv2d, x, w, b, stride, args.repeats) * calls * 1e3
        with torch.no_grad():
            diff = (F.conv2d(x, w, b, stride) - conv_mod.conv2d(x, w, b, stride)).abs().max().item()
        total_ref, total_ours = total_ref + t_ref, total_ours + t_ours
        print(f"{str(xs):<20} {str(ws[:2]):<18} {str(stride):<7} {calls:>5} {t_ref:>12.2f} {t_ours:>10.2f} "
              f"{t_ref / t_ours:>5.2f}x {diff:>9.1e}")
    print(f"{'total':<20} {'':<18} {'':<7} {sum(shapes.values()):>5} {total_ref:>12.2f} {total_ours:>10.2f} "
          f"{total_ref / total_ours:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
