"""`python -m pipeline train`: train and evaluate one run config (a YAML file or a named grid cell), resuming if possible."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import RunConfig, load_config, parse_config
from pipeline.errors import UserError
from pipeline.grid import expand, find_cell
from pipeline.params import load_params

EXIT_PREEMPTED = 75  # mirrors pipeline.trainer.EXIT_PREEMPTED (kept import-light for `--help`)


def add_config_args(p: argparse.ArgumentParser, dataset_source: bool = False) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="resolved run config YAML (sections model/loss/data/solver/test/run)")
    src.add_argument("--experiment", metavar="CELL_ID",
                     help="a grid cell id (or unique prefix) from params.yaml, see `python -m pipeline grid list`")
    if dataset_source:
        src.add_argument("--dataset", help="evaluate --checkpoint (HF folder, detectron2 .pkl or converted .pt) on this "
                                           "dataset; the model options come from the checkpoint")
    p.add_argument("--profile", help="params.yaml profile for --experiment (default: study.profile)")
    p.add_argument("--params", default="params.yaml", help="params file for --experiment (default params.yaml)")
    p.add_argument("--output-dir", help="override run.output_dir")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML-parsed), e.g. --set solver.max_iter=100; repeatable")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train + evaluate one run (resumes from checkpoints/last.pt)",
                              description=__doc__)
    add_config_args(p)
    p.add_argument("--tta", action="store_true", default=None, help="also evaluate with multi-scale + flip TTA")
    p.set_defaults(func=run)


def resolve_experiment(name: str, profile: str | None, params_path: str) -> dict:
    """The train config dict of a named grid cell, through the study package (pipeline.params + pipeline.grid)."""
    grid = expand(load_params(params_path), profile)
    return find_cell(grid, name).config


def config_from_args(args) -> RunConfig:
    if args.config:
        raw = load_config(args.config).to_dict()
        source = args.config
    else:
        raw = resolve_experiment(args.experiment, args.profile, args.params)
        source = f"cell {args.experiment}"
    apply_overrides(raw, args)
    return parse_config(raw, source=source)


def apply_overrides(raw: dict, args) -> None:
    """`--set SECTION.KEY=VALUE` (YAML-parsed) and `--output-dir` applied to a raw config dict in place."""
    import yaml

    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(value)
    if args.output_dir:
        raw.setdefault("run", {})["output_dir"] = args.output_dir


def run(args) -> int:
    from pipeline.engine import Preempted, run_cell

    cfg = config_from_args(args)
    try:
        metrics = run_cell(cfg, tta=args.tta)
    except Preempted as exc:
        print(f"interrupted: {exc}; run the same command again to continue", file=sys.stderr)
        return EXIT_PREEMPTED
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps({k: scalars[k] for k in sorted(scalars) if "/IoU/" not in k and "/ACC/" not in k}, indent=1))
    return 0
