"""`python -m pipeline tables`: reports/tables/*.csv|.tex from the cells' metrics.json files."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("tables", help="build Tables 1-8 (+ appendix) next to the paper's numbers")
    p.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml) (relative paths in it, and the default output folders, mean its folder)")
    p.add_argument("--reports", default="reports")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages import run_tables

    return run_tables(profile=args.profile, params_path=args.params, reports_dir=args.reports)
