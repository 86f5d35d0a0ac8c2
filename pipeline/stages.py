"""Entry points of the DVC `study` and `tables` stages (also used by `python -m pipeline study|tables`).

The study stage runs the Prefect `study` flow in-process (ephemeral Prefect server unless
PREFECT_API_URL is set). DVC never runs stages in parallel; the fan-out happens inside this stage.
Exit codes: 0 all cells done, 1 some cells failed (recorded in reports/study/cells.json; a new
`dvc repro` retries only those), 2 bad parameters (nothing ran).
"""
from __future__ import annotations

import os
import signal
import sys


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
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # dvc already died before we got here
        os.kill(os.getpid(), signal.SIGTERM)


def run_study(*, profile=None, tables=None, executor=None, max_concurrent=None, retries=None, cell_fn=None,
              params_path="params.yaml", reports_dir="reports", allow_failures=False) -> int:
    _quiet_env()
    from pipeline.study import plan_study

    # Validate and expand first: a bad params.yaml is exit 2 before Prefect starts.
    plan = plan_study(profile=profile, tables=tables, executor=executor, max_concurrent=max_concurrent,
                      retries=retries, cell_fn=cell_fn, params_path=params_path, reports_dir=reports_dir)
    from pipeline.status import live_leftovers

    leftovers = live_leftovers(sorted({u.run_dir for u in [*plan.grid.train.values(), *plan.grid.evals.values()]}))
    for line in leftovers:  # cells of an earlier, killed study that are still running (issue 15)
        print(f"warning: {line}", file=sys.stderr)
    if leftovers:
        print(f"warning: {len(leftovers)} cell(s) of an earlier study still running", file=sys.stderr)
    _die_with_dvc()
    from flows.study import shielded_ephemeral_server, study
    from pipeline.reaper import Reaper

    # If this process is killed (SIGKILL, OOM killer), the reaper stops its local cells and its Prefect server.
    watchdog = Reaper.start(grace_s=plan.params.study.stop_timeout_s)
    try:
        with shielded_ephemeral_server() as server:  # Ctrl-C must not kill the temporary Prefect API mid-study
            if server is not None:
                watchdog.watch(server.pid, signal.SIGKILL, what="(temporary Prefect API server)")
            state = study(profile=profile, tables=tables, executor=executor, max_concurrent=max_concurrent,
                          retries=retries, cell_fn=cell_fn, params_path=str(params_path),
                          reports_dir=str(reports_dir), return_state=True)
    finally:
        watchdog.close()
    print(f"study: {state.name}: {state.message}", file=sys.stderr)
    if state.is_completed():
        return 0
    if state.is_cancelled():  # SIGINT/SIGTERM (pipeline.study.StudyStop): never 0, even with allow_failures
        return 143 if "SIGTERM" in (state.message or "") else 130
    return 0 if allow_failures else 1


def tables_summary(reports_dir="reports") -> dict:
    """What the tables stage tells a reader: where tables.pdf is (or how to get pdflatex) and each claim's verdict."""
    import json
    from pathlib import Path

    index = json.loads((Path(reports_dir) / "tables" / "index.json").read_text())
    claims = json.loads((Path(reports_dir) / "claims.json").read_text())
    scale = " (smoke scale)" if claims.get("scale") == "smoke" else ""
    lines = [f"tables.pdf: {index.get('pdf')}",
             f"claims{scale}: " + ", ".join(f"{n} {v}" for v, n in claims["counts"].items())]
    lines += [f"  {c['verdict']:<12} {c['id']}: {c['reason']}" for c in claims["claims"]]
    return {"lines": lines, "counts": claims["counts"],
            "verdicts": {c["id"]: c["verdict"] for c in claims["claims"]}}


def run_tables(*, profile=None, params_path="params.yaml", reports_dir="reports") -> int:
    from pipeline.tables import build_tables

    written = build_tables(profile=profile, params_path=params_path, reports_dir=reports_dir)
    tables_dir = os.path.join(os.path.abspath(reports_dir), "tables")
    print(f"tables: wrote {len(written)} files under {tables_dir} and "
          f"{os.path.join(os.path.abspath(reports_dir), 'claims.json')}", file=sys.stderr)
    for line in tables_summary(reports_dir)["lines"]:
        print(line, file=sys.stderr)
    return 0
