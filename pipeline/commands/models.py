"""`python -m pipeline models export`: done cells of a profile -> models/<profile>/ (the DVC-cached `models` stage)."""
from __future__ import annotations

import argparse

from pipeline.grid import expand
from pipeline.models_store import export_models
from pipeline.params import load_params


def register(subparsers) -> None:
    m = subparsers.add_parser("models", help="export done cells to models/<profile>/ (the DVC-cached `models` stage)")
    m.add_argument("action", choices=["export"])
    m.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    m.add_argument("--params", default="params.yaml")
    m.add_argument("--out", help="default: models/<profile>")
    m.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    profile = args.profile or params.study.profile
    out = args.out or f"models/{profile}"
    exported = export_models(expand(params, profile), out)
    print(f"models: exported {len(exported)} done cells to {out}")
    return 0
