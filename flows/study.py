"""Prefect flows of the study: `study` (all tables), `main-results` (Tables 1-3), `ablations` (4-8), `tables`.

Each flow plans the grid (pipeline.study), then a `run-cells` subflow with a
`ThreadPoolTaskRunner(max_workers=max_concurrent)` maps one task per cell: the task submits the cell
through submitit (local subprocess or SLURM; SLURM cells of one dataset go out as one job array) and
blocks on `job.result()`. A failed cell is retried (`study.retries`, default 1), then recorded as
failed with its reason while the other cells finish. SIGINT/SIGTERM stops the study: no new cell
starts, running jobs get SIGTERM (checkpoint, exit 75), the flow ends Cancelled ("interrupted by ..."). Training cells run first, evaluation-only
variants (other inference strategy, multi-scale) second, from the trained checkpoints. The flow ends
Failed with "N cells: ... K failed" when any cell failed, Completed otherwise.
Without PREFECT_API_URL the flows run against Prefect's ephemeral server.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")  # INFRA trap: before submitit is imported
import submitit  # noqa: E402,F401  (imported at module top on purpose, see INFRA.md)

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect import tags as prefect_tags  # noqa: E402
from prefect.artifacts import (  # noqa: E402
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.runtime import flow_run, task_run  # noqa: E402
from prefect.states import Cancelled, Completed, Failed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline import study as st  # noqa: E402
from pipeline.cluster import tracking_host  # noqa: E402
from pipeline.executor import CellExecutor  # noqa: E402
from pipeline.models_store import restore_models  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.report import build_report  # noqa: E402
from pipeline.services import tracking_server  # noqa: E402
from pipeline.stages import tables_summary  # noqa: E402
from pipeline.tables import build_tables  # noqa: E402

@contextlib.contextmanager
def shielded_ephemeral_server():
    """Without PREFECT_API_URL: start Prefect's temporary API server with SIGINT/SIGTERM blocked in it.

    Prefect starts that server as a child in our process group, so a terminal Ctrl-C (or a scheduler's
    SIGTERM to the group) killed it while the study was still recording its interrupted cells; the
    flow then hung retrying the dead API. Blocked signals are inherited by the child, so it survives
    them; it is stopped with SIGKILL at exit. No-op with a real server or off the main thread.
    Yields the server's Popen (None when no server was started).
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or threading.current_thread() is not threading.main_thread():
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's clients use when no API URL is set
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        server.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    # Stopped at interpreter exit, after Prefect's services have drained their events into it (they run
    # before atexit hooks); SIGKILL because SIGTERM is blocked in it (Prefect's stop() would wait 5 s).
    atexit.register(_kill, server.server_process)
    yield server.server_process  # the caller hands it to the study's reaper (pipeline.reaper)


def _kill(process) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


MAIN = ["main"]  # Tables 1-3 (pipeline.grid.select_tables)
ABLATIONS = ["ablations"]  # Tables 4-8


def _plan(profile, tables, executor, max_concurrent, retries, cell_fn, params_path, reports_dir):
    return st.plan_study(
        profile=profile,
        tables=tables,
        executor=executor,
        max_concurrent=max_concurrent,
        retries=retries,
        cell_fn=cell_fn,
        params_path=params_path,
        reports_dir=reports_dir,
    )


SKIPPED = "Skipped"  # the state name of a cell task whose run folder was already done (Completed type)


@task(name="cell", cache_policy=NONE, persist_result=False, task_run_name="{unit_id}")
def cell_task(plan: st.StudyPlan, executor: CellExecutor, unit_id: str, jobs: dict):
    """One cell: submit through submitit, block on the result; the first attempt may reuse an array job.

    A cell already done is not run again and its task ends in a Completed state named "Skipped".
    """
    job = jobs.get(unit_id) if task_run.run_count <= 1 else None
    outcome = st.run_unit(plan, executor, unit_id, job=job)
    if outcome.get("skipped"):
        return Completed(name=SKIPPED, message="already done: run folder status done", data=outcome)
    return outcome


def cell_tags(plan: st.StudyPlan, unit_id: str) -> list[str]:
    """Prefect tags of a cell's task run: `table:<t>` and `row:<row>` of every row it serves, `dataset:<d>`."""
    unit = plan.unit(unit_id)
    tags = [f"dataset:{unit.config['data']['dataset']}", f"profile:{plan.profile}"]
    for row in st.unit_rows(plan, unit_id):
        tags += [f"table:{row.table}", f"row:{row.row}"]
    return list(dict.fromkeys(tags))


def _submit_arrays(plan: st.StudyPlan, executor: CellExecutor, ids: list[str]) -> dict:
    """SLURM: submit pending cells as one job array per dataset (GPU counts differ per dataset)."""
    if executor.kind != "slurm" or not plan.params.executor.slurm.use_array or plan.stop.is_set():
        return {}
    todo = st.pending(plan, ids)
    by_dataset: dict[tuple[str, int, str], list[str]] = {}
    for uid in todo:
        unit = plan.unit(uid)
        if getattr(unit, "is_variant", False):
            if not st.is_done(plan.grid.train[unit.train_id]):
                continue
        if st.recorded_live_job(plan, uid) is not None:  # re-attached in its task, never submitted twice
            continue
        run = unit.config["run"]  # one array per SLURM geometry (dataset, world size, device)
        by_dataset.setdefault((unit.config["data"]["dataset"], int(run.get("num_gpus", 1)),
                               str(run.get("device", "auto"))), []).append(uid)
    jobs = {}
    for (dataset, world, _device), uids in by_dataset.items():
        units = [plan.unit(u) for u in uids]
        init = [plan.grid.train[u.train_id].run_dir if getattr(u, "is_variant", False) else None for u in units]
        folder = plan.array_folder() / f"{dataset}-w{world}"
        tables = sorted({r.table for r in plan.grid.rows if r.cell.dataset == dataset})
        submitted = executor.submit_array([st.cell_config(plan, u) for u in units], log_folder=folder, init_from=init,
                                          name=f"{'+'.join(tables)}-{dataset}-array")
        jobs.update(dict(zip(uids, submitted)))
    return jobs


class _Progress:
    """Cells finished (done, failed, skipped or interrupted) of `total`: a bar on stderr (off off a TTY)
    and a Prefect progress artifact (`study-progress`) on the flow run, updated as each cell ends."""

    def __init__(self, total: int, plan: st.StudyPlan):
        self.total, self.done = total, 0
        self.bar = tqdm(total=total, desc="study", unit="cell", file=sys.stderr, disable=not sys.stderr.isatty(),
                        dynamic_ncols=True)
        self.artifact = None
        with contextlib.suppress(Exception):  # the artifact is a view; a failed API call never stops the study
            self.artifact = create_progress_artifact(
                0.0, key="study-progress", description=f"{plan.profile}: cells finished of {total} ({plan.run_id})")

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if self.artifact is not None and self.total:
            with contextlib.suppress(Exception):
                update_progress_artifact(self.artifact, 100.0 * self.done / self.total)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _progress(total: int, plan: st.StudyPlan) -> _Progress:
    return _Progress(total, plan)


def _run_phase(plan, executor, ids, outcomes, logger, progress=None) -> None:
    if not ids:
        return
    if plan.stop.is_set():  # interrupted during an earlier phase: nothing new starts
        for uid in st.pending(plan, ids):
            outcomes[uid] = {"cell_id": uid, "status": "interrupted", "reason": f"not started: {plan.stop.reason}"}
        if progress is not None:
            progress.update(len(ids))
        return
    jobs = _submit_arrays(plan, executor, ids)
    task_fn = cell_task.with_options(retries=plan.retries, retry_delay_seconds=plan.params.study.retry_delay_s)
    # quote(): Prefect passes these objects through as they are (no introspection of the plan or jobs).
    futures = []
    for uid in ids:
        with prefect_tags(*cell_tags(plan, uid)):
            futures.append(task_fn.submit(quote(plan), quote(executor), uid, quote(jobs)))
    by_future = {id(f): uid for uid, f in zip(ids, futures)}
    for fut in as_completed(futures):
        uid = by_future[id(fut)]
        if progress is not None:
            progress.update(1)
        outcome, task_failed = _outcome(fut, uid)
        outcomes[uid] = outcome
        if task_failed:
            logger.warning("cell %s failed: %s", uid, outcome["reason"])


def _outcome(fut, uid: str) -> tuple[dict, bool]:
    """(cell record, whether the task itself failed) of a finished task future, from its *final* state.

    `as_completed` yields a future when its thread is done, but `PrefectFuture.state` returns the final
    state only once `wait()`/`result()` has stored it; before that it reads the task run from the API,
    which can still say Running (seen with the ephemeral server: cells recorded as "failed: failed" although
    each task had finished Completed and the cell was done). So: wait first, then read the state.
    """
    fut.wait()
    state = fut.state
    if state.is_completed():
        return fut.result(), False
    try:
        fut.result(raise_on_failure=True)
        reason = state.message or "failed"
    except Exception as exc:  # noqa: BLE001 - the recorded reason
        reason = str(exc) or type(exc).__name__
    return {"cell_id": uid, "status": "failed", "reason": reason}, True


@contextlib.contextmanager
def _study_tracking_server(plan, logger):
    """One MLflow server (127.0.0.1) over the cells' SQLite store while they run concurrently.

    When `study.tracking_server` asks for it (pipeline.study.shared_sqlite_uri); the cells get its URI
    through `run.tracking_uri` (and MLFLOW_TRACKING_URI, which wins in the cell, for the jobs' environment).
    """
    uri = st.shared_sqlite_uri(plan)
    if uri is None:
        yield
        return
    start = time.monotonic()
    host = tracking_host(plan.params.study.tracking_host)  # nodes must reach it (pipeline.study.check_tracking_reachable)
    with tracking_server(uri, concurrency=plan.max_concurrent, host=host) as served:
        logger.info("MLflow server %s in front of %s (ready in %.1f s)", served, uri, time.monotonic() - start)
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        plan.tracking_uri = served
        if previous:
            os.environ["MLFLOW_TRACKING_URI"] = served
        try:
            yield
        finally:
            plan.tracking_uri = None
            if previous:
                os.environ["MLFLOW_TRACKING_URI"] = previous


@flow(name="run-cells", log_prints=True)
def run_cells(
    profile: str | None = None,
    tables: list[str] | None = None,
    executor: str | None = None,
    max_concurrent: int | None = None,
    retries: int | None = None,
    cell_fn: str | None = None,
    params_path: str = "params.yaml",
    reports_dir: str = "reports",
    plan_id: str | None = None,
):
    """Train every pending training cell, then evaluate the variants; write the study records.

    `plan_id`: the study run whose plan this process already holds (pipeline.study.share_plan); without
    it the flow plans from the other arguments.
    """
    logger = get_run_logger()
    plan = st.shared_plan(plan_id) if plan_id else _plan(profile, tables, executor, max_concurrent, retries, cell_fn,
                                                         params_path, reports_dir)
    ex = CellExecutor(plan.params, plan.executor, cell_fn=plan.cell_fn, threads=plan.threads, profile=plan.profile)
    if plan.executor == "slurm":  # a requeued job runs the code of its study run, not the tree of later
        snapshot = st.make_snapshot(plan)
        ex.snapshot = str(snapshot) if snapshot else None
        logger.info("code snapshot: %s", ex.snapshot)
    # A fresh clone after `dvc pull`: trained cells come back from the DVC-cached models/<profile>/ into
    # their absent run folders (pipeline.models_store), so they are done and skipped, not retrained.
    restored = restore_models(plan.grid, Path(plan.params.study.models_root) / plan.profile)
    if restored:
        logger.info("restored %d trained cells from %s/%s (dvc pull)", len(restored),
                    plan.params.study.models_root, plan.profile)
    logger.info("plan: %s", st.record_plan(plan))  # read by status, tables and report (pipeline.plan)
    outcomes: dict[str, dict] = {}
    logger.info(
        "profile %s: %d training cells, %d evaluation variants, executor %s, %d concurrent, run %s",
        plan.profile, len(plan.grid.train), len(plan.variant_ids()), plan.executor, plan.max_concurrent, plan.run_id,
    )
    parent = _open_parent_run(plan, logger)
    counts = None
    try:
        # SIGINT/SIGTERM: stop submitting, SIGTERM to running jobs, record them interrupted (StudyStop).
        with plan.stop.handling_signals(), _study_tracking_server(plan, logger), \
                _progress(len(plan.train_ids()) + len(plan.variant_ids()), plan) as progress:
            _run_phase(plan, ex, plan.train_ids(), outcomes, logger, progress)
            _run_phase(plan, ex, plan.variant_ids(), outcomes, logger, progress)
        counts = st.summarize(plan, outcomes)
    finally:
        status = "KILLED" if plan.stop.is_set() else ("FINISHED" if counts and not counts["failed"] else "FAILED")
        with contextlib.suppress(Exception):
            st.close_parent_run(plan, parent, counts, status)
    message = st.final_message(counts)
    logger.info(message)
    _summary_artifact(plan, counts, message)
    if plan.stop.is_set():
        return Cancelled(message=f"{plan.stop.reason}: {message}", data=counts)
    if counts["failed"]:
        return Failed(message=message, data=counts)
    return Completed(message=message, data=counts)


def _summary_artifact(plan: st.StudyPlan, counts: dict, message: str) -> None:
    """Markdown artifact `study-summary`: counts, each cell's state and rows, the key metrics and (when the
    study's claims were evaluated, `reports/claims.json`) the claims' verdicts."""
    cells = st.read_json(plan.reports_dir / "study" / "cells.json") or {}
    lines = [f"# Study {plan.run_id} ({plan.profile})", "", message, "",
             "| cell | status | rows | seconds | reason |", "|---|---|---|---|---|"]
    for c in cells.get("cells", []):
        status = "skipped (done)" if c.get("skipped") else c["status"]
        lines.append(f"| `{c['cell_id']}` | {status} | {'; '.join(c.get('rows', []))} | {c.get('seconds') or ''} "
                     f"| {(c.get('reason') or '').replace('|', '/')[:120]} |")
    lines += ["", metrics_markdown(plan.reports_dir), claims_markdown(plan.reports_dir)]
    with contextlib.suppress(Exception):
        create_markdown_artifact("\n".join(lines), key="study-summary", description=message)


def metrics_markdown(reports_dir) -> str:
    """`reports/metrics.json` (median over seeds per table row) as markdown tables."""
    metrics = st.read_json(Path(reports_dir) / "metrics.json") or {}
    out = []
    for table, rows in metrics.items():
        cols = list(dict.fromkeys(c for r in rows.values() for c in r))
        out += [f"## {table}", "", "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        out += [f"| {row} | " + " | ".join(str(vals.get(c, "")) for c in cols) + " |" for row, vals in rows.items()]
        out.append("")
    return "\n".join(out)


def claims_markdown(reports_dir) -> str:
    """Hook for the paper's claims: `reports/claims.json` (written by the claims step when the project has
    one) as a markdown list `claim: verdict`; empty when there is no such file."""
    claims = st.read_json(Path(reports_dir) / "claims.json")
    if not claims:
        return ""
    items = claims.get("claims", claims) if isinstance(claims, dict) else claims
    if isinstance(items, dict):
        items = [dict(v, id=k) if isinstance(v, dict) else {"id": k, "verdict": v} for k, v in items.items()]
    lines = ["## Claims", ""]
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            lines.append(f"- **{item.get('id', '')}**: {item.get('verdict', item.get('status', ''))} "
                         f"{item.get('text', item.get('claim', ''))}".rstrip())
    return "\n".join(lines)


def table_artifacts(paths, profile: str | None) -> int:
    """One Prefect table artifact per written table CSV (key `<profile>-<table>`, caption as description)."""
    import math
    import pandas as pd

    made = 0
    for path in paths:
        path = Path(path)
        if path.suffix != ".csv" or path.name.endswith(".wide.csv"):  # the long CSV (machine-readable source)
            continue
        caption = path.read_text().splitlines()[0].lstrip("# ").strip()
        df = pd.read_csv(path, comment="#")
        records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                   for r in df.to_dict("records")]
        key = f"{profile or 'study'}-{path.stem}".lower().replace("_", "-")
        create_table_artifact(records, key=key, description=caption)
        made += 1
    return made


def _open_parent_run(plan, logger):
    """The study's MLflow run (cells nest under it); a tracking store that cannot be reached is logged
    and the study runs without a parent run (each cell then reports its own tracking error)."""
    try:
        return st.open_parent_run(plan, source_name=f"flows.study:{flow_run.flow_name or 'run-cells'}")
    except Exception as exc:  # noqa: BLE001 - the cells still run and record their own state
        logger.warning("no MLflow parent run for study %s: %s", plan.run_id, exc)
        return None


def _study(tables, profile, executor, max_concurrent, retries, cell_fn, params_path, reports_dir, plan_id=None):
    # The study is planned once per run: here (a deployment run), or by the caller that passes its plan's id
    # (the study stage, flows.commands.run_study). The subflow gets its task runner here so that
    # max_concurrent is a run parameter (also for deployments).
    own = plan_id is None
    plan = st.shared_plan(plan_id) if plan_id else _plan(profile, tables, executor, max_concurrent, retries, cell_fn,
                                                         params_path, reports_dir)
    st.share_plan(plan)
    runner = ThreadPoolTaskRunner(max_workers=plan.max_concurrent)
    try:
        state = run_cells.with_options(task_runner=runner)(
            profile=plan.profile, tables=tables, executor=plan.executor, max_concurrent=plan.max_concurrent,
            retries=plan.retries, cell_fn=plan.cell_fn, params_path=params_path, reports_dir=reports_dir,
            plan_id=plan.run_id, return_state=True,
        )
    finally:
        if own:
            st.release_plan(plan.run_id)
    # The parent flow ends in the subflow's state with its message ("N cells: ... K failed").
    if state.is_completed():
        return Completed(message=state.message)
    if state.is_cancelled():  # interrupted by SIGINT/SIGTERM (message starts "interrupted by SIG...")
        return Cancelled(message=state.message)
    return Failed(message=state.message or "run-cells did not complete")


@flow(name="study")
def study(
    profile: str | None = None,
    tables: list[str] | None = None,
    executor: str | None = None,
    max_concurrent: int | None = None,
    retries: int | None = None,
    cell_fn: str | None = None,
    params_path: str = "params.yaml",
    reports_dir: str = "reports",
    plan_id: str | None = None,
):
    """Every table of the grid (default: all of params.yaml `grid:`); `plan_id`: see `run_cells`."""
    return _study(tables, profile, executor, max_concurrent, retries, cell_fn, params_path, reports_dir, plan_id)


@flow(name="main-results")
def main_results(
    profile: str | None = None,
    executor: str | None = None,
    max_concurrent: int | None = None,
    retries: int | None = None,
    cell_fn: str | None = None,
    params_path: str = "params.yaml",
    reports_dir: str = "reports",
):
    """Tables 1-3 (ADE20K, four semantic datasets, COCO panoptic)."""
    return _study(MAIN, profile, executor, max_concurrent, retries, cell_fn, params_path, reports_dir)


@flow(name="ablations")
def ablations(
    profile: str | None = None,
    executor: str | None = None,
    max_concurrent: int | None = None,
    retries: int | None = None,
    cell_fn: str | None = None,
    params_path: str = "params.yaml",
    reports_dir: str = "reports",
):
    """Tables 4-8 (matching, boxes, queries, inference strategies, decoder layers)."""
    return _study(ABLATIONS, profile, executor, max_concurrent, retries, cell_fn, params_path, reports_dir)


@flow(name="tables")
def tables(profile: str | None = None, params_path: str = "params.yaml", reports_dir: str = "reports"):
    """Build reports/tables/* (long CSV, paper-layout .tex/.wide.csv), reports/tables.pdf and reports/claims.json
    from the cells' metrics.json files; logs every claim's verdict and returns the files and verdicts."""
    logger = get_run_logger()
    params = load_params(params_path)
    profile = profile or params.study.profile
    written = build_tables(profile=profile, params=params, reports_dir=reports_dir)
    logger.info("wrote %d table files", len(written))
    logger.info("%d table artifacts", table_artifacts(written, profile))
    claims = tables_summary(reports_dir)
    for line in claims["lines"]:
        logger.info("%s", line)
    # Tables changed: refresh the report so index.html never shows older tables than reports/tables.
    html = build_report(profile, runs_root=params.study.runs_root, tables_dir=f"{reports_dir}/tables",
                        out_dir=reports_dir, params_path=params_path)
    logger.info("report %s", html)
    create_markdown_artifact(f"# Tables ({profile})\n\nReport: `{html}`\n\n" + metrics_markdown(reports_dir)
                             + "\n" + claims_markdown(reports_dir), key="tables-summary",
                             description=f"{len(written)} table files, report refreshed")
    return {"files": [str(p) for p in written] + [str(html)], "claims": claims["counts"],
            "verdicts": claims["verdicts"]}


FLOWS = {"study": study, "main-results": main_results, "ablations": ablations, "tables": tables}
