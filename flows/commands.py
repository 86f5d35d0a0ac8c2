"""The commands that run Prefect flows: `python -m pipeline study` (the DVC `study` stage) and `serve`.

They live in the flows layer because they start flows; `pipeline/__main__.py` adds them to the CLI
(pipeline.cli) next to pipeline/commands/*. The study stage runs the Prefect `study` flow in-process
(ephemeral Prefect server unless PREFECT_API_URL is set). DVC never runs stages in parallel; the fan-out
happens inside this stage. Exit codes: 0 all cells done, 1 some cells failed (recorded in
reports/study/cells.json; a new `dvc repro` retries only those), 2 bad parameters (nothing ran).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import signal
import sys

from pipeline.reaper import Reaper
from pipeline.status import live_leftovers
from pipeline.study import dry_run_text, plan_study, release_plan, share_plan


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
    s = subparsers.add_parser("serve", help="serve the study flows as Prefect deployments (needs PREFECT_API_URL)")
    s.set_defaults(func=run_serve)


def run(args: argparse.Namespace) -> int:
    if args.dry_run:
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
    from flows.serve import main  # Prefect deployments: imported only for this command (Prefect is slow to import)

    return main()


def _quiet_env() -> None:
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _die_with_dvc() -> None:
    """Under `dvc repro` (DVC_STAGE set): SIGTERM this process when dvc dies (e.g. killed by the OOM killer).

    Linux PR_SET_PDEATHSIG: the study then stops as on a scheduler's SIGTERM (cells save a checkpoint),
    instead of running on unseen. Elsewhere (a terminal, a deployment) nothing changes.
    """
    if not os.environ.get("DVC_STAGE") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # dvc already died before we got here
        os.kill(os.getpid(), signal.SIGTERM)


def run_study(*, profile=None, tables=None, executor=None, max_concurrent=None, retries=None, cell_fn=None,
              params_path="params.yaml", reports_dir="reports", allow_failures=False) -> int:
    """Plan the study once (a bad params.yaml is exit 2 before Prefect starts), then run the `study` flow
    in-process on that plan (handed over by id, pipeline.study.share_plan)."""
    _quiet_env()
    plan = plan_study(profile=profile, tables=tables, executor=executor, max_concurrent=max_concurrent,
                      retries=retries, cell_fn=cell_fn, params_path=params_path, reports_dir=reports_dir)
    leftovers = live_leftovers(sorted({u.run_dir for u in [*plan.grid.train.values(), *plan.grid.evals.values()]}))
    for line in leftovers:  # cells of an earlier, killed study that are still running (issue 15)
        print(f"warning: {line}", file=sys.stderr)
    if leftovers:
        print(f"warning: {len(leftovers)} cell(s) of an earlier study still running", file=sys.stderr)
    _die_with_dvc()
    # Prefect (and submitit through it) is imported here, after _quiet_env: its import is slow and reads the
    # environment once (INFRA.md: SUBMITIT_LOG_LEVEL must be set before submitit is imported).
    from flows.study import shielded_ephemeral_server, study

    # If this process is killed (SIGKILL, OOM killer), the reaper stops its local cells and its Prefect server.
    watchdog = Reaper.start(grace_s=plan.params.study.stop_timeout_s)
    share_plan(plan)
    try:
        with shielded_ephemeral_server() as server:  # Ctrl-C must not kill the temporary Prefect API mid-study
            if server is not None:
                watchdog.watch(server.pid, signal.SIGKILL, what="(temporary Prefect API server)")
            state = study(profile=plan.profile, tables=tables, executor=plan.executor,
                          max_concurrent=plan.max_concurrent, retries=plan.retries, cell_fn=plan.cell_fn,
                          params_path=str(params_path), reports_dir=str(reports_dir), plan_id=plan.run_id,
                          return_state=True)
    finally:
        release_plan(plan.run_id)
        watchdog.close()
    print(f"study: {state.name}: {state.message}", file=sys.stderr)
    if state.is_completed():
        return 0
    if state.is_cancelled():  # SIGINT/SIGTERM (pipeline.study.StudyStop): never 0, even with allow_failures
        return 143 if "SIGTERM" in (state.message or "") else 130
    return 0 if allow_failures else 1
