"""`python -m pipeline tables`: reports/tables/* (long CSV, paper-layout .tex / .wide.csv), reports/tables.pdf
and reports/claims.json from the cells' metrics.json files."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tables", help="build Tables 1-8 (+ appendix) next to the paper's numbers, and check the paper's claims",
        description="Reads the study's plan (reports/study/plan.json, written when the study starts; without a study "
                    "run: `python -m pipeline grid plan`) and the cells' metrics.json. "
                    "Writes reports/tables/<t>.csv (long: one line per row and metric) with its provenance <t>.json, <t>.tex and <t>.wide.csv "
                    "(the paper's layout, pipeline/data/table_layouts.yaml), tables.tex + reports/tables.pdf (all "
                    "tables; the PDF needs pdflatex: bash scripts/install_tex.sh, else it says how to get it) and reports/claims.json (the claims of "
                    "pipeline/data/claims.yaml: supported / contradicted / inconclusive), then prints the verdicts.")
    p.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml) (relative paths in it, and the default output folders, mean its folder)")
    p.add_argument("--reports", default="reports")
    p.add_argument("--plan", help="the study's plan file (default: <reports>/study/plan.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages import run_tables

    return run_tables(profile=args.profile, params_path=args.params, reports_dir=args.reports, plan_file=args.plan)
