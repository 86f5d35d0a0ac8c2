"""`python -m pipeline study` (run the grid through the Prefect study flow) and `python -m pipeline serve`."""
from __future__ import annotations

import argparse
import gc
import signal


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="train and evaluate the grid's cells (Prefect flow, submitit jobs)")
    p.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    p.add_argument("--table", action="append", help="table1..table8, main, ablations (repeatable; default all)")
    p.add_argument("--executor", choices=["local", "slurm", "debug"], help="default: the profile's executor")
    p.add_argument("--max-concurrent", type=int, help="cells running at once (default: the profile's)")
    p.add_argument("--retries", type=int, help="retries per failed cell (default: study.retries)")
    p.add_argument("--cell-fn", help="import path of the cell function (default: study.cell_fn)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml) (relative paths in it, and the default output folders, mean its folder)")
    p.add_argument("--reports", default="reports")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when cells failed")
    p.add_argument("--dry-run", action="store_true",
                   help="print each job array's #SBATCH header (the profile's resources) and its cells; submit nothing")
    p.set_defaults(func=run)
    m = subparsers.add_parser("models", help="export done cells to models/<profile>/ (the DVC-cached `models` stage)")
    m.add_argument("action", choices=["export"])
    m.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    m.add_argument("--params", default="params.yaml")
    m.add_argument("--out", help="default: models/<profile>")
    m.set_defaults(func=run_models)
    s = subparsers.add_parser("serve", help="serve the study flows as Prefect deployments (needs PREFECT_API_URL)")
    s.set_defaults(func=run_serve)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages import run_study

    if args.dry_run:
        from pipeline.study import dry_run_text, plan_study

        plan = plan_study(profile=args.profile, tables=args.table, executor=args.executor,
                          max_concurrent=args.max_concurrent, retries=args.retries, cell_fn=args.cell_fn,
                          params_path=args.params, reports_dir=args.reports)
        print(dry_run_text(plan))
        return 0

    code = run_study(
        profile=args.profile, tables=args.table, executor=args.executor, max_concurrent=args.max_concurrent,
        retries=args.retries, cell_fn=args.cell_fn, params_path=args.params, reports_dir=args.reports,
        allow_failures=args.allow_failures,
    )
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        # Stopped by Ctrl-C / SIGTERM: everything is recorded (cells.json, tables, MLflow and Prefect states).
        # The interpreter's final garbage collection of the imported stack (Prefect, MLflow, torch) took
        # 5-6 s of the 8-10 s a stopped SLURM study needed to return on 2 cores (tests/test_slurm_interrupt.py);
        # frozen objects are left out of it, while atexit hooks and Prefect's event/log drain run as usual.
        gc.freeze()
    return code


def run_serve(args: argparse.Namespace) -> int:
    from flows.serve import main

    return main()


def run_models(args: argparse.Namespace) -> int:
    from pipeline.grid import expand
    from pipeline.models_store import export_models
    from pipeline.params import load_params

    params = load_params(args.params)
    profile = args.profile or params.study.profile
    out = args.out or f"models/{profile}"
    exported = export_models(expand(params, profile), out)
    print(f"models: exported {len(exported)} done cells to {out}")
    return 0
