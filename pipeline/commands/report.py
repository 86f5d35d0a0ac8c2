"""`python -m pipeline report`: write reports/index.html (tables inline) and reports/figures/*.png."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="build reports/index.html from reports/tables/*.csv and the run folders",
        description="Cells from the study's plan (reports/study/plan.json). Tables (paper vs ours, outside-tolerance rows coloured, cited rows marked) and matplotlib "
                    "figures (training curves, queries, categories per query, per-class IoU), each with its "
                    "provenance (profile, seeds, git commit; reports/tables/<t>.json beside each table).")
    parser.add_argument("--profile", help="study profile (default: params.yaml study.profile)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml) (relative paths in it, and the default output folders, mean its folder)")
    parser.add_argument("--runs-root", help="run folders root (default: params.yaml study.runs_root)")
    parser.add_argument("--tables", default="reports/tables", help="folder of table CSVs (default: reports/tables)")
    parser.add_argument("--out", default="reports", help="output folder (default: reports)")
    parser.add_argument("--plan", help="the study's plan file: its cells and their rows (default: "
                                       "<tables>/../study/plan.json)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pipeline.params import load_params
    from pipeline.report import build_report

    params = load_params(args.params)
    profile = args.profile or params.study.profile
    if profile not in params.profiles:
        from pipeline.errors import UserError

        raise UserError(f"unknown profile {profile!r}; defined in {args.params}: {', '.join(params.profiles)}")
    out = build_report(profile, runs_root=args.runs_root or params.study.runs_root, tables_dir=args.tables,
                       out_dir=args.out, params_path=args.params, plan_path=args.plan)
    print(f"report: {out}")
    from pipeline.study import log_report

    logged = log_report(out)
    if logged:
        print(f"report: logged to MLflow run {logged}")
    return 0
