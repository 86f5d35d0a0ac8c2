"""`python -m pipeline models export`: done cells of a profile -> models/<profile>/ (the DVC-cached `models` stage)."""
from __future__ import annotations

import argparse

from pipeline.models_store import export_models
from pipeline.params import load_params
from pipeline.plan import load_plan, plan_path


def register(subparsers) -> None:
    m = subparsers.add_parser("models", help="export done cells to models/<profile>/ (the DVC-cached `models` stage)")
    m.add_argument("action", choices=["export"])
    m.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    m.add_argument("--params", default="params.yaml")
    m.add_argument("--out", help="default: models/<profile>")
    m.add_argument("--plan", help="the study's plan file, whose cells are exported (default: reports/study/plan.json)")
    m.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    profile = args.profile or params.study.profile
    out = args.out or f"models/{profile}"
    exported = export_models(load_plan(args.plan or plan_path("reports"), profile), out)
    print(f"models: exported {len(exported)} done cells to {out}")
    return 0
