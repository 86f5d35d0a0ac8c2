"""`python -m pipeline evaluate`: evaluate a checkpoint of a run config (single scale, optionally TTA), write metrics."""
from __future__ import annotations

import json

from pipeline.commands.train import add_config_args, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a trained checkpoint on the validation split",
                              description=__doc__)
    add_config_args(p)
    p.add_argument("--checkpoint", help="checkpoint file (default: <run.output_dir>/checkpoints/final.pt, else last.pt)")
    p.add_argument("--tta", action="store_true", default=None, help="also evaluate with multi-scale + flip TTA (D.6)")
    p.add_argument("--output", help="metrics JSON to write (default: <run.output_dir>/metrics.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.engine import evaluate_cell

    cfg = config_from_args(args)
    metrics = evaluate_cell(cfg, checkpoint=args.checkpoint, tta=args.tta, output=args.output)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps({k: scalars[k] for k in sorted(scalars) if "/IoU/" not in k and "/ACC/" not in k}, indent=1))
    return 0
