"""`python -m pipeline status [--profile P]`: each cell's state (done/running/failed/missing) with its MLflow link."""
from __future__ import annotations

import json
import sys

from pipeline.status import scan, format_table


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="show each cell's state from its run folder, with its MLflow UI link",
        description="Reads runs/<profile>/<cell>/status.json for every cell of the study's plan "
                    "(reports/study/plan.json, written when the study starts; missing = no folder yet), and "
                    "lists any other run folder. Without a plan (no study run yet) only the run folders. Links point at $MLFLOW_UI_URL, the http tracking URI, "
                    "or `mlflow ui`'s default http://127.0.0.1:5000.")
    parser.add_argument("--profile", help="study profile (default: params.yaml study.profile)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml) (relative paths in it, and the default output folders, mean its folder)")
    parser.add_argument("--plan", help="the study's plan file (default: <reports>/study/plan.json)")
    parser.add_argument("--reports", default="reports", help="reports folder holding study/plan.json (default: reports)")
    parser.add_argument("--runs-root", help="run folders root (default: params.yaml study.runs_root)")
    parser.add_argument("--ui-url", help="MLflow UI base URL for the links")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--state", choices=["done", "running", "interrupted", "failed", "missing"],
                        help="show only cells in this state")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pipeline.params import load_params
    from pipeline.plan import plan_path

    params = load_params(args.params)
    profile = args.profile or params.study.profile
    runs_root = args.runs_root or params.study.runs_root
    cells, note = scan(profile, runs_root, args.plan or plan_path(args.reports), ui_url=args.ui_url)
    if args.state:
        cells = [c for c in cells if c.state == args.state]
    if args.json:
        print(json.dumps([{"cell_id": c.cell_id, "state": c.state, "reason": c.reason, "time": c.time,
                           "path": str(c.path), "rows": c.rows, "mlflow_run_id": c.mlflow_run_id,
                           "mlflow_link": c.link, "job_id": c.job_id, "job_state": c.job_state,
                           "job_reason": c.job_reason} for c in cells], indent=2))
    else:
        print(f"profile {profile} ({runs_root}/{profile})")
        if note:
            print(f"note: {note}")
        print(format_table(cells))
    from pipeline.status import stuck_jobs

    for warning in stuck_jobs(cells):
        print(warning, file=sys.stderr)
    return 0
