"""Entry point of the DVC `tables` stage (also `python -m pipeline tables`) and the summary the study prints.

The `study` stage runs a Prefect flow, so its entry point lives in the flows layer
(flows/commands.py `run_study`); this module stays below it (maskformer_core <- pipeline <- flows).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline.tables import build_tables


def tables_summary(reports_dir="reports") -> dict:
    """What the tables stage tells a reader: where tables.pdf is (or how to get pdflatex) and each claim's verdict."""
    index = json.loads((Path(reports_dir) / "tables" / "index.json").read_text())
    claims = json.loads((Path(reports_dir) / "claims.json").read_text())
    scale = " (smoke scale)" if claims.get("scale") == "smoke" else ""
    lines = [f"tables.pdf: {index.get('pdf')}",
             f"claims{scale}: " + ", ".join(f"{n} {v}" for v, n in claims["counts"].items())]
    lines += [f"  {c['verdict']:<12} {c['id']}: {c['reason']}" for c in claims["claims"]]
    return {"lines": lines, "counts": claims["counts"],
            "verdicts": {c["id"]: c["verdict"] for c in claims["claims"]}}


def run_tables(*, profile=None, params_path="params.yaml", reports_dir="reports", plan_file=None) -> int:
    written = build_tables(profile=profile, params_path=params_path, reports_dir=reports_dir, plan_file=plan_file)
    tables_dir = os.path.join(os.path.abspath(reports_dir), "tables")
    print(f"tables: wrote {len(written)} files under {tables_dir} and "
          f"{os.path.join(os.path.abspath(reports_dir), 'claims.json')}", file=sys.stderr)
    for line in tables_summary(reports_dir)["lines"]:
        print(line, file=sys.stderr)
    return 0
