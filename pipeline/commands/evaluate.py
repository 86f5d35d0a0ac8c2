"""`python -m pipeline evaluate`: evaluate a checkpoint of a run config (single scale, optionally TTA), write metrics.

`--checkpoint` is a training checkpoint of this project, a converted `.pt` (`python -m pipeline convert`),
an HF transformers folder or an official detectron2 `.pkl`. With `--dataset D` instead of a run config
the model options come from the checkpoint and everything else from the dataset's official defaults.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.commands.train import add_config_args, apply_overrides, config_from_args
from pipeline.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a trained or released checkpoint on the validation split",
                              description=__doc__)
    add_config_args(p, dataset_source=True)
    p.add_argument("--checkpoint", help="checkpoint: .pt (trained or converted), HF folder or detectron2 .pkl "
                                        "(default: <run.output_dir>/checkpoints/final.pt, else last.pt)")
    p.add_argument("--data-root", help="with --dataset: the prepared dataset folder (default data/prepared/<dataset>)")
    p.add_argument("--tta", action="store_true", default=None, help="also evaluate with multi-scale + flip TTA (official TEST.AUG)")
    p.add_argument("--output", help="metrics JSON to write (default: <run.output_dir>/metrics.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (without it, an existing file is refused and left as it is)")
    p.set_defaults(func=run)


def released_config(args):
    """A run config for `--checkpoint X --dataset D`: model options read from X, the rest official defaults."""
    from pipeline.config import ModelConfig, parse_config
    from pipeline.released import load_any

    if not args.checkpoint:
        raise UserError("--dataset needs --checkpoint (the model to evaluate)")
    kwargs, _sd, _prov = load_any(args.checkpoint)
    model = {k: v for k, v in kwargs.items() if k in ModelConfig.model_fields and k != "pretrained"}
    model["weights"] = str(args.checkpoint)
    name = Path(str(args.checkpoint).rstrip("/")).name.replace(".", "_")
    raw = {"model": model,
           "data": {"dataset": args.dataset, "root": args.data_root or f"data/prepared/{args.dataset}"},
           "run": {"output_dir": f"runs/released/{name}-{args.dataset}"}}
    apply_overrides(raw, args)
    return parse_config(raw, source=f"--checkpoint {args.checkpoint}")


def run(args) -> int:
    from pipeline.config import check_output_file
    from pipeline.engine import evaluate_cell

    check_output_file(args.output, "--output", args.overwrite)  # before anything is loaded
    if args.data_root and not args.dataset:
        raise UserError("--data-root goes with --dataset (a run config names its own data.root)")
    cfg = released_config(args) if args.dataset else config_from_args(args)
    metrics = evaluate_cell(cfg, checkpoint=args.checkpoint, tta=args.tta, output=args.output)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps({k: scalars[k] for k in sorted(scalars) if "/IoU/" not in k and "/ACC/" not in k}, indent=1))
    return 0
