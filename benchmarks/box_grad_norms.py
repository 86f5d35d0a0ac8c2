"""Per-loss gradient norms of a MaskFormer training run, by parameter group (issue 17: Table 5's box-matched cell).

Trains one grid cell exactly as `python -m pipeline train --experiment CELL` does (same engine, same data, same
final evaluation) and, at the listed iterations, takes the gradient of each weighted loss group (class CE, focal
"mask", dice, box L1, box GIoU; every decoder layer's term summed) separately with respect to each parameter group
(backbone, pixel-decoder transformer encoder, the rest of the pixel decoder, transformer decoder, class / mask / box
heads). It also records the full-model gradient norm before clipping at every iteration (SOLVER.CLIP_GRADIENTS
full_model clips it to `solver.clip_value`). Gradients are taken on the first forward pass of the iteration (one
image with the COCO panoptic micro-batch of 1). Prints one table per measured iteration and the final metrics.

    .venv/bin/python benchmarks/box_grad_norms.py --experiment CELL_ID --output-dir /tmp/x [--at 1 100 400] \
        [--set model.num_queries=20 ...] [--box-loss-scale 0.1] [--box-cost-scale 0.1]

--box-loss-scale / --box-cost-scale (diagnostics, not pipeline options) multiply DETR's box loss weights
(L1 5, GIoU 2) or the box matcher's costs (the same 5 / 2) of the run, to tell the two apart.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.solver as solver_mod  # noqa: E402
import pipeline.trainer as trainer_mod  # noqa: E402
from maskformer_core.criterion import SetCriterion  # noqa: E402
from pipeline.commands.train import apply_overrides, resolve_experiment  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.engine import run_cell  # noqa: E402

LOSS_GROUPS = ("loss_ce", "loss_mask", "loss_dice", "loss_bbox", "loss_giou")
PARAM_GROUPS = (
    ("backbone", "backbone."),
    ("pixel enc", "sem_seg_head.pixel_decoder.transformer."),
    ("pixel rest", "sem_seg_head.pixel_decoder."),
    ("class head", "sem_seg_head.predictor.class_embed."),
    ("mask head", "sem_seg_head.predictor.mask_embed."),
    ("box head", "sem_seg_head.predictor.box_head."),
    ("decoder", "sem_seg_head.predictor."),
)


def param_group(name: str) -> str:
    """First PARAM_GROUPS entry whose prefix starts the parameter name (order matters: specific first)."""
    for label, prefix in PARAM_GROUPS:
        if name.startswith(prefix):
            return label
    return "other"


def loss_group(key: str) -> str | None:
    """`loss_ce_3` -> `loss_ce`; None for a key outside LOSS_GROUPS."""
    for g in LOSS_GROUPS:
        if key == g or (key.startswith(g + "_") and key[len(g) + 1:].isdigit()):
            return g
    return None


class Probe:
    """Counts criterion calls, takes the per-group gradients at the chosen iterations, records clip norms."""

    def __init__(self, at: set[int], passes: int):
        self.at, self.passes = at, passes
        self.calls = 0
        self.named: list[tuple[str, torch.nn.Parameter]] = []
        self.tables: dict[int, dict[tuple[str, str], float]] = {}
        self.clip_norms: list[float] = []
        self.last: dict[str, torch.Tensor] = {}  # pass 1's encoder output / class probabilities of this iteration
        self.dependence: dict[int, tuple[float, float]] = {}

    def hook_encoder(self, module, inputs, output) -> None:
        if output[1] is not None:  # [B, C, h, w] -> [B, C]: the two crops' feature maps may differ in size
            self._features("enc", output[1].mean(dim=(-2, -1)))

    def hook_predictor(self, module, inputs, output) -> None:
        self._features("prob", output["pred_logits"].softmax(-1))

    def _features(self, key: str, value: torch.Tensor) -> None:
        """At a measured iteration: ||x_2 - x_1|| / ||x_1|| between the iteration's two forward passes (two
        different training images), for the spatially averaged encoder output and the class probabilities."""
        it = self.calls // self.passes + 1
        if it not in self.at or value is None:
            return
        if self.calls % self.passes == 0:
            self.last[key] = value.detach().clone()
        elif self.calls % self.passes == 1 and key in self.last and self.last[key].shape == value.shape:
            rel = float((value.detach() - self.last[key]).norm() / self.last[key].norm().clamp(min=1e-12))
            enc, prob = self.dependence.get(it, (float("nan"), float("nan")))
            self.dependence[it] = (rel, prob) if key == "enc" else (enc, rel)

    def measure(self, loss_dict: dict, weight_dict: dict) -> None:
        it = self.calls // self.passes + 1  # 1-based iteration number
        first_pass = self.calls % self.passes == 0
        self.calls += 1
        if it not in self.at or not first_pass:
            return
        params = [p for _, p in self.named]
        table: dict[tuple[str, str], float] = {}
        for g in LOSS_GROUPS:
            terms = [loss_dict[k] * weight_dict[k] for k in loss_dict if loss_group(k) == g and k in weight_dict]
            if not terms:
                continue
            grads = torch.autograd.grad(torch.stack(terms).sum(), params, retain_graph=True, allow_unused=True)
            sq: dict[str, float] = {}
            for (name, _), grad in zip(self.named, grads):
                if grad is not None:
                    label = param_group(name)
                    sq[label] = sq.get(label, 0.0) + float(grad.double().pow(2).sum())
            for label, v in sq.items():
                table[(g, label)] = v ** 0.5
            table[(g, "ALL")] = sum(sq.values()) ** 0.5
        self.tables[it] = table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", required=True, help="grid cell id (or unique prefix)")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--output-dir", required=True, help="run folder (must be new or a finished run of this config)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--box-loss-scale", type=float, default=None,
                    help="diagnostic only: multiply the box loss weights (not the matching costs) by this factor")
    ap.add_argument("--box-cost-scale", type=float, default=None,
                    help="diagnostic only: multiply the box matching costs (not the loss weights) by this factor")
    ap.add_argument("--at", type=int, nargs="+", default=[1, 50, 200], help="1-based iterations to measure")
    args = ap.parse_args()
    raw = resolve_experiment(args.experiment, args.profile, args.params)
    args.set = ["run.tracking=false"] + args.set
    apply_overrides(raw, args)
    cfg = parse_config(raw, source=f"cell {args.experiment}")
    batch = cfg.solver.ims_per_batch
    passes = batch // (cfg.solver.micro_batch or batch)
    probe = Probe(set(args.at), passes)

    original_forward = SetCriterion.forward

    def forward(self, outputs, targets, num_masks=None):
        losses = original_forward(self, outputs, targets, num_masks)
        probe.measure(losses, self.weight_dict)
        return losses

    original_init = trainer_mod.Trainer.__init__

    def init(self, *a, **k):
        original_init(self, *a, **k)
        probe.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if args.box_loss_scale is not None:
            for key in self.criterion.weight_dict:
                if loss_group(key) in ("loss_bbox", "loss_giou"):
                    self.criterion.weight_dict[key] *= args.box_loss_scale
        if args.box_cost_scale is not None:
            self.criterion.matcher.cost_bbox *= args.box_cost_scale
            self.criterion.matcher.cost_giou *= args.box_cost_scale
        self.model.sem_seg_head.pixel_decoder.register_forward_hook(probe.hook_encoder)
        self.model.sem_seg_head.predictor.register_forward_hook(probe.hook_predictor)

    original_clip = solver_mod.clip_full_model

    def clip(parameters, max_norm):
        total = original_clip(parameters, max_norm)
        probe.clip_norms.append(float(total))
        return total

    SetCriterion.forward = forward
    trainer_mod.Trainer.__init__ = init
    solver_mod.clip_full_model = clip
    metrics = run_cell(cfg)

    labels = [label for label, _ in PARAM_GROUPS] + ["ALL"]
    print(f"cell {args.experiment}  overrides {args.set}  box loss-weight scale {args.box_loss_scale}, "
          f"box cost scale {args.box_cost_scale}")
    for it in sorted(probe.tables):
        table = probe.tables[it]
        enc, prob = probe.dependence.get(it, (float("nan"), float("nan")))
        print(f"\niteration {it}: image dependence ||a - b|| / ||a|| of two training images: mean encoder output "
              f"{enc:.3g}, class probabilities {prob:.3g}")
        print(f"iteration {it}: gradient L2 norm of each weighted loss group (rows) per parameter group (columns)")
        print(f"| {'loss':<10} | " + " | ".join(f"{c:>10}" for c in labels) + " |")
        print("|" + "---|" * (len(labels) + 1))
        for g in LOSS_GROUPS:
            if (g, "ALL") in table:
                print(f"| {g:<10} | " + " | ".join(f"{table.get((g, c), 0.0):10.3g}" for c in labels) + " |")
    if probe.clip_norms:
        n = probe.clip_norms
        for lo, hi in ((0, 50), (50, 200), (200, len(n))):
            part = n[lo:hi]
            if part:
                print(f"full-model gradient norm before clipping, iterations {lo + 1}-{lo + len(part)}: "
                      f"median {statistics.median(part):.3g}, min {min(part):.3g}, max {max(part):.3g}")
    keys = ("val/PQ", "val/PQ_th", "val/PQ_st", "val/SQ", "val/RQ")
    print(json.dumps({k: metrics.get(k) for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
