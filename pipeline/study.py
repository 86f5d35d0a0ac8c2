"""The study runner's building blocks: plan the cells, skip finished ones, run one cell, record the outcome.

Prefect flows (flows/) fan these out; nothing here imports Prefect, so the same code is used by the
flows, the tests and `python -m pipeline study`. A cell is skipped when its run folder's `status.json`
says `done` and `metrics.json` exists: the folder name carries the cell's config + data hash, so a
done folder is a result for exactly this configuration. Outcomes land in `reports/study/cells.json`
(one record per cell: status, reason, run folder, logs, seconds), `reports/metrics.json` (each table
row's key metric, for `dvc metrics`) and `reports/plots/queries.csv` (queries vs mIoU, `dvc plots`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline import reaper
from pipeline.cluster import is_live_state, is_loopback, job_state, slurm_nodes, tracking_host
from pipeline.config import atomic_write_text
from pipeline.errors import UserError
from pipeline.grid import EvalUnit, Grid, TrainUnit, check_pretrained_files, expand, select_tables
from pipeline.job_wait import wait_result
from pipeline.params import Params, load_params
from pipeline.plan import plan_from_grid, plan_path, write_plan
from pipeline.runfolder import (
    CELL_FILE,
    FAILURE_FILE,
    METRICS_FILE,
    STATUS_FILE,
    median_over_seeds,
    metric_values,
    read_json,
    read_metrics,
    write_json,
)
from pipeline.tracking import Tracker, resolve_tracking_uri

REASON_CHARS = 1000  # a failure reason is the exception's message: long enough for a path, a URL and what to do


class CellFailed(RuntimeError):
    """A cell's job ended without a `done` status; the message is the reason shown in the tables."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StudyStop:
    """The study's stop switch: set by SIGINT/SIGTERM, read by every cell task.

    Once set, no new cell is submitted (queued tasks return `interrupted` without a job), running jobs
    get SIGTERM (`pipeline.executor.stop_job`: the engine saves `last.pt` and exits 75) and are
    recorded `interrupted`, never retried. A second signal, or `hard_timeout_s` seconds without the
    study returning, ends the process at once (exit 128 + signal number).
    """

    def __init__(self, hard_timeout_s: float = 120.0) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.hard_timeout_s = hard_timeout_s
        self._jobs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self.event.is_set()

    @property
    def reason(self) -> str:
        name = signal.Signals(self.signum).name if self.signum else "stop request"
        return f"interrupted by {name}"

    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def register(self, unit_id: str, job: Any) -> None:
        """Track a running job; one registered after the stop request is stopped at once."""
        with self._lock:
            self._jobs[unit_id] = job
            stopped = self.event.is_set()
        process = getattr(job, "_process", None)  # a local job: stopped by the reaper if the study dies
        if process is not None and (watchdog := reaper.active()) is not None:
            watchdog.watch(process.pid, signal.SIGTERM, its_children=True, what=f"(cell {unit_id})")
        if stopped:
            _stop_job(job)

    def unregister(self, unit_id: str) -> None:
        with self._lock:
            job = self._jobs.pop(unit_id, None)
        process = getattr(job, "_process", None)
        if process is not None and (watchdog := reaper.active()) is not None:
            watchdog.forget(process.pid)

    def request(self, signum: int | None = None) -> None:
        """Stop the study (thread-safe; what the signal handler calls)."""
        with self._lock:
            first = not self.event.is_set()
            self.signum = self.signum or signum
            self.event.set()
            jobs = list(self._jobs.values())
        if first:
            threading.Thread(target=self._stop_all, args=(jobs,), name="study-stop", daemon=True).start()

    def _stop_all(self, jobs: list[Any]) -> None:
        for job in jobs:
            _stop_job(job)
        # Safety net: a study that has not returned by now (a job that ignores SIGTERM) is ended hard.
        time.sleep(self.hard_timeout_s)
        os._exit(self.exit_code())

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal handler signature
        if self.event.is_set():  # second Ctrl-C: stop waiting
            os._exit(self.exit_code())
        name = signal.Signals(signum).name
        print(f"study: {name}: stopping (no new cells; running cells save a checkpoint and stop); "
              f"again to quit at once", file=sys.stderr, flush=True)
        self.request(signum)

    @contextlib.contextmanager
    def handling_signals(self):
        """Route SIGINT/SIGTERM to `request` while the study runs (main thread only; else a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _stop_job(job: Any) -> None:
    from pipeline.executor import stop_job

    stop_job(job)


@dataclasses.dataclass
class StudyPlan:
    params: Params
    grid: Grid
    profile: str
    run_id: str
    executor: str
    max_concurrent: int
    retries: int
    cell_fn: str
    reports_dir: Path
    threads: int | None
    stop: StudyStop = dataclasses.field(default_factory=StudyStop)
    # HTTP URI of the study's MLflow server (study.tracking_server), given to every cell; None: cells
    # resolve their own URI (pipeline.tracking.resolve_tracking_uri).
    tracking_uri: str | None = None
    created: float = dataclasses.field(default_factory=time.time)  # jobs submitted by this plan are newer
    # MLflow run of this study run (pipeline.study.open_parent_run); the cells' runs nest under it.
    parent_run_id: str | None = None
    # Every table of the profile (`grid` holds the selected ones): the study's records and its plan file
    # (pipeline.plan) always describe the whole profile. None: `grid` is the whole profile.
    full: Grid | None = None

    @property
    def runs_dir(self) -> Path:
        return Path(self.params.study.runs_root) / self.profile

    def log_folder(self, unit_id: str) -> Path:
        """Per-cell submitit folder, unique per study run (INFRA trap: reused SLURM job ids)."""
        return self.runs_dir / unit_id / "logs" / self.run_id

    def array_folder(self) -> Path:
        return self.runs_dir / "_arrays" / self.run_id

    def train_ids(self) -> list[str]:
        return list(self.grid.train)

    def variant_ids(self) -> list[str]:
        return [e for e, u in self.grid.evals.items() if u.is_variant]

    def unit(self, unit_id: str) -> TrainUnit | EvalUnit:
        """The training unit, or the evaluation-only variant, with this id."""
        evals = self.grid.evals
        return evals[unit_id] if unit_id in evals and evals[unit_id].is_variant else self.grid.train[unit_id]


# Plans of this process by study run id: the study stage plans once and hands the plan to the Prefect
# flows by id (a JSON flow parameter, so a deployment run, which plans itself, takes the same path).
_SHARED_PLANS: dict[str, "StudyPlan"] = {}


def share_plan(plan: StudyPlan) -> str:
    """Make `plan` reachable by its run id (`shared_plan`) in this process; returns the id."""
    _SHARED_PLANS[plan.run_id] = plan
    return plan.run_id


def shared_plan(run_id: str) -> StudyPlan:
    """The plan `share_plan` registered under `run_id` (UserError when this process has none)."""
    try:
        return _SHARED_PLANS[run_id]
    except KeyError:
        raise UserError(f"no study plan {run_id!r} in this process (plans are shared in-process only)") from None


def release_plan(run_id: str) -> None:
    _SHARED_PLANS.pop(run_id, None)


def plan_study(
    params: Params | None = None,
    *,
    profile: str | None = None,
    tables: list[str] | None = None,
    executor: str | None = None,
    max_concurrent: int | None = None,
    retries: int | None = None,
    cell_fn: str | None = None,
    reports_dir: str | os.PathLike = "reports",
    params_path: str | os.PathLike = "params.yaml",
) -> StudyPlan:
    """Validate params and expand the profile's grid once (every table; the selected ones are run); every
    error is raised here, before any job starts."""
    params = params or load_params(params_path)
    profile = profile or params.study.profile
    full = expand(params, profile, None)
    grid = full if tables is None else subset_grid(full, select_tables(params, tables))
    prof = params.profiles[profile]
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if retries is not None and retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}")
    if not prof.synthetic:
        for dataset in sorted({r.cell.dataset for r in grid.rows}):
            marker = Path(prof.data_root) / dataset / "SYNTHETIC.json"
            if marker.is_file():
                raise UserError(
                    f"profile {profile} trains on real data, but {marker.parent} holds a synthetic twin "
                    f"({marker}); point profiles.{profile}.data_root at the prepared real datasets"
                )
        check_pretrained_files(grid, f"profiles.{profile}.model.pretrained")
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    plan = StudyPlan(
        params=params,
        grid=grid,
        profile=profile,
        run_id=run_id,
        executor=executor or prof.executor,
        max_concurrent=max_concurrent or prof.max_concurrent,
        retries=params.study.retries if retries is None else retries,
        cell_fn=cell_fn or params.study.cell_fn,
        reports_dir=Path(reports_dir),
        threads=prof.run.threads,
        stop=StudyStop(hard_timeout_s=params.study.stop_timeout_s),
        full=None if full is grid else full,
    )
    if plan.executor == "slurm":
        check_tracking_reachable(plan)
    return plan


def subset_grid(full: Grid, tables: list[str]) -> Grid:
    """The rows of `tables` of an expanded grid and the units they use, in the grid's order (no re-expansion)."""
    rows = [r for r in full.rows if r.table in tables]
    used = {e for r in rows for e in r.eval_ids}
    evals = {e: u for e, u in full.evals.items() if e in used}
    trains = {u.train_id for u in evals.values()}
    return Grid(full.profile, rows, {t: u for t, u in full.train.items() if t in trains}, evals)


def record_plan(plan: StudyPlan) -> Path:
    """Write the study's plan file (`<reports>/study/plan.json`, pipeline.plan) once, before any job: every
    cell and row of the profile with the study's provenance; status, tables and report read it."""
    record = plan_from_grid(full_grid(plan), plan.params, study_run=plan.run_id, tables_run=plan.grid.tables())
    return write_plan(record, plan_path(plan.reports_dir))


def check_tracking_reachable(plan: StudyPlan) -> None:
    """A SLURM study on more than one node must not hand its cells a loopback tracking URI."""
    nodes = slurm_nodes()
    if len(nodes) <= 1:
        return
    if shared_sqlite_uri(plan) is not None:  # the study serves the store: the server's address counts
        host = tracking_host(plan.params.study.tracking_host)
        if is_loopback(host):
            raise UserError(
                f"executor slurm on {len(nodes)} nodes, but the study's MLflow server would bind {host}, which "
                f"the compute nodes cannot reach: set study.tracking_host (local.yaml) or MASKFORMER_TRACKING_HOST "
                f"to this host's cluster address (or `auto`), or MLFLOW_TRACKING_URI to a shared server")
        return
    for unit in plan.grid.train.values():
        if not unit.config["run"].get("tracking", True):
            continue
        uri = resolve_tracking_uri(unit.config["run"].get("tracking_uri"))
        host = urlparse(uri).hostname
        if uri.startswith(("http://", "https://")) and host and is_loopback(host):
            raise UserError(
                f"executor slurm on {len(nodes)} nodes, but cell {unit.train_id} would log to {uri}, a loopback "
                f"address the compute nodes cannot reach: set MLFLOW_TRACKING_URI (or run.tracking_uri) to the "
                f"server's cluster address, or let the study serve it (study.tracking_host)")
        return


def make_snapshot(plan: StudyPlan) -> Path | None:
    """A copy of the repository's tracked files for this study run (submitit's RsyncSnapshot), which the
    SLURM jobs import (PYTHONPATH, pipeline.executor) also after a requeue; None outside a git checkout."""
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    import submitit.helpers

    try:
        # The checkout this code comes from (the study may run with another working directory).
        root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True,
                              timeout=30, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    target = (plan.runs_dir / "_snapshots" / plan.run_id).resolve()
    if not submitit.helpers.RsyncSnapshot.available():
        raise UserError("executor slurm takes a code snapshot per study run with rsync: install rsync "
                        "(apt-get install rsync)")
    with submitit.helpers.RsyncSnapshot(snapshot_dir=target, root_dir=Path(root)):
        pass  # copies the tracked files (working-tree state); we stay in our folder
    return target


def job_name_for(plan: StudyPlan, unit_id: str) -> str:
    """`<tables>-<dataset>-<cell id>`: squeue/sacct say which table and dataset a job belongs to."""
    unit = plan.unit(unit_id)
    tables = sorted({r.table for r in plan.grid.rows
                     if any(plan.grid.evals[e].train_id == unit.train_id or e == unit_id for e in r.eval_ids)})
    return f"{'+'.join(tables) or 'cell'}-{unit.config['data']['dataset']}-{unit_id}"


def recorded_live_job(plan: StudyPlan, unit_id: str) -> Any:
    """The cell's job recorded in cell.json when SLURM says it is still live (re-attach), else None."""
    if plan.executor != "slurm":
        return None
    unit = plan.unit(unit_id)
    record = read_json(Path(unit.run_dir) / CELL_FILE)
    if not isinstance(record, dict) or not record.get("job_id") or record.get("executor", "slurm") != "slurm":
        return None
    job_id = str(record["job_id"])
    if not job_id.split("_")[0].isdigit():
        return None
    folder = Path(record["stdout"]).parent if record.get("stdout") else plan.log_folder(unit_id)
    state = job_state(job_id, folder)
    if not is_live_state(state):
        return None
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    import submitit

    return submitit.SlurmJob(folder=folder, job_id=job_id)


def shared_sqlite_uri(plan: StudyPlan) -> str | None:
    """The local `sqlite:///` URI the cells would write concurrently, when `study.tracking_server` asks
    for a server in front of it; else None (serial study, tracking off, an HTTP URI, or mode `never`).

    `auto`: only with the slurm executor (cells on other nodes, often over NFS); `always`: any executor.
    """
    mode = plan.params.study.tracking_server
    if mode == "never" or plan.max_concurrent <= 1:
        return None
    if mode == "auto" and plan.executor != "slurm":
        return None
    units = [plan.grid.train[i] for i in plan.train_ids()]
    tracked = [u for u in units if u.config["run"].get("tracking", True)]
    if not tracked:
        return None
    uri = resolve_tracking_uri(tracked[0].config["run"].get("tracking_uri"))
    return uri if uri.startswith("sqlite:///") else None


def unit_rows(plan: StudyPlan, unit_id: str) -> list[Any]:
    """The table rows a cell serves: rows evaluating it directly, else rows whose evaluation variant it trains."""
    direct = [r for r in plan.grid.rows if unit_id in r.eval_ids]
    if direct:
        return direct
    return [r for r in plan.grid.rows if any(plan.grid.evals[e].train_id == unit_id for e in r.eval_ids)]


def study_tags(plan: StudyPlan, unit_id: str) -> dict[str, str]:
    """MLflow tags of a cell's run from the study: `table` and `row` (the first row it serves; a
    deduplicated cell serves several, all in `rows` as `table:row; ...`), `study_run` and, when the
    study opened one, `mlflow.parentRunId` (MLflow nests the run under the study's run)."""
    rows = unit_rows(plan, unit_id)
    tags = {"study_run": plan.run_id, "profile": plan.profile}
    if rows:
        tags.update(table=rows[0].table, row=rows[0].row, rows="; ".join(f"{r.table}:{r.row}" for r in rows))
    if plan.parent_run_id:
        tags["mlflow.parentRunId"] = plan.parent_run_id
    return tags


def cell_config(plan: StudyPlan, unit: TrainUnit | EvalUnit) -> dict[str, Any]:
    """The config a cell's job gets: the unit's, with the study's tags (`study_tags`; `run.tags` is left
    out of the result hash) and the study's tracking server URI when there is one."""
    unit_id = unit.eval_id if isinstance(unit, EvalUnit) else unit.train_id
    run = {**unit.config["run"], "tags": {**(unit.config["run"].get("tags") or {}), **study_tags(plan, unit_id)}}
    if plan.tracking_uri:
        run["tracking_uri"] = plan.tracking_uri
    return {**unit.config, "run": run}


def open_parent_run(plan: StudyPlan, source_name: str = "pipeline.study") -> Any:
    """Open the MLflow run of this study run (tags `profile`, `tables`, `study_run`) in the cells'
    experiment and store its id in `plan.parent_run_id`; None when the cells are not tracked.
    Returns the `Tracker` to close with `close_parent_run`."""
    units = list(plan.grid.train.values())
    tracked = [u for u in units if u.config["run"].get("tracking", True)]
    if not tracked:
        return None
    run = tracked[0].config["run"]
    tracker = Tracker(plan.tracking_uri or run.get("tracking_uri"), run.get("experiment", "maskformer"))
    tags = {"profile": plan.profile, "tables": ",".join(plan.grid.tables()), "study_run": plan.run_id,
            "executor": plan.executor}
    params = {"profile": plan.profile, "tables": plan.grid.tables(), "executor": plan.executor,
              "max_concurrent": plan.max_concurrent, "cells": len(plan.grid.train) + len(plan.variant_ids())}
    plan.parent_run_id = tracker.start(params, tags, run_name=f"study-{plan.run_id}", source_name=source_name)
    return tracker


def log_report(html_path: str | os.PathLike, cells_json: str | os.PathLike | None = None) -> str | None:
    """Log the report (`index.html` and its `figures/`) to the MLflow run of the study run that wrote
    `reports/study/cells.json` (`mlflow_run_id`); returns that run id, None when there is none or the
    store cannot be reached (the report itself is written either way)."""
    html_path = Path(html_path)
    record = read_json(Path(cells_json) if cells_json else html_path.parent / "study" / "cells.json") or {}
    run_id = record.get("mlflow_run_id")
    if not run_id:
        return None
    tracker = Tracker()
    try:
        tracker.client.get_run(run_id)
        tracker.run_id = run_id
        tracker.log_artifacts([html_path], artifact_path="report")
        tracker.log_artifacts(sorted((html_path.parent / "figures").glob("*.png")), artifact_path="report/figures")
    except Exception as exc:  # noqa: BLE001 - tracking is a copy; the report on disk is the result
        print(f"report: not logged to MLflow run {run_id}: {exc}", file=sys.stderr)
        return None
    return run_id


def close_parent_run(plan: StudyPlan, tracker: Any, counts: dict[str, int] | None, status: str) -> None:
    """Log the study's counts and records (cells.json, metrics.json) to its run and close it with `status`."""
    if tracker is None:
        return
    try:
        if counts:
            tracker.log_final({f"study/{k}": v for k, v in counts.items()}, 0)
        tracker.log_artifacts([plan.reports_dir / "study" / "cells.json", plan.reports_dir / "metrics.json"])
    finally:
        tracker.end(status)


def write_record(path: Path, data: Any) -> None:
    """A study record (cell.json, reports/study/cells.json, reports/metrics.json): atomic, keys in order."""
    write_json(path, data, indent=1, sort_keys=False, allow_nan=True, default=str)


def unit_state(run_dir: str | Path) -> tuple[str, str]:
    """(state, reason) of a run folder: done | failed | interrupted | running | missing."""
    run_dir = Path(run_dir)
    status = read_json(run_dir / STATUS_FILE)
    if status is None:
        return "missing", ""
    state = str(status.get("status", "unknown"))
    if state == "done" and not (run_dir / METRICS_FILE).is_file():
        return "failed", "status.json says done but metrics.json is missing"
    return state, str(status.get("reason", ""))


def is_done(unit: TrainUnit | EvalUnit) -> bool:
    return unit_state(unit.run_dir)[0] == "done"


def _reason(run_dir: Path, exc: BaseException, job_id: str | None = None, since: float | None = None) -> str:
    """The exception message the job recorded (executor.record_failure), else the failed status's reason.

    The failure.json counts when it names this job, or was written after this job was submitted (`since`):
    in-process debug jobs share one environment, so their job ids can be mixed up between threads.
    """
    path = run_dir / FAILURE_FILE
    failure = read_json(path)
    if isinstance(failure, dict) and failure.get("reason"):
        fresh = since is None or path.stat().st_mtime >= since - 1.0
        if (job_id is not None and failure.get("job_id") == job_id) or (fresh and since is not None) or \
                (job_id is None and since is None):
            return str(failure["reason"])[:REASON_CHARS]
    state, reason = unit_state(run_dir)
    if reason and state == "failed":
        return reason
    text = str(exc).strip().splitlines()
    # submitit's FailedJobError ends with the remote traceback's last line: the actual error.
    tail = [line for line in text if line.strip()][-1:] if text else []
    return (tail[0] if tail else type(exc).__name__)[:REASON_CHARS]


def run_unit(plan: StudyPlan, executor: Any, unit_id: str, job: Any = None) -> dict[str, Any]:
    """Run one cell (blocking on `job.result()`); returns its outcome or raises `CellFailed(reason)`.

    `job` is a job already submitted in a SLURM array (first attempt); retries submit a fresh job.
    """
    unit = plan.unit(unit_id)
    run_dir = Path(unit.run_dir)
    # A job already submitted in an array was pending at submission: when it finished before this task
    # started, the cell is done by this study run, not skipped; its result is collected below.
    if job is None and is_done(unit):
        return {"cell_id": unit_id, "status": "done", "skipped": True, "seconds": 0.0}
    if plan.stop.is_set():  # queued when the study was interrupted: never started
        if job is not None:  # already submitted in a SLURM array: cancel it
            _stop_job(job)
        return {"cell_id": unit_id, "status": "interrupted", "reason": f"not started: {plan.stop.reason}"}
    init_from = None
    if isinstance(unit, EvalUnit) and unit.is_variant:
        train = plan.grid.train[unit.train_id]
        if not is_done(train):
            state, reason = unit_state(train.run_dir)
            failure = read_json(Path(train.run_dir) / FAILURE_FILE)  # the training job's own exception
            if state != "failed" and isinstance(failure, dict) and failure.get("reason"):
                state, reason = "failed", str(failure["reason"])[:REASON_CHARS]
            raise CellFailed(f"training cell {unit.train_id} is {state}" + (f": {reason}" if reason else ""))
        init_from = train.run_dir
    start = time.time()
    since = plan.created if job is not None else start  # a failure.json older than this job's submission is stale
    reattached = False
    if job is None:
        job = recorded_live_job(plan, unit_id)  # an earlier study run's job still queued or running
        reattached = job is not None
    if job is None:
        job = executor.submit(cell_config(plan, unit), log_folder=plan.log_folder(unit_id), init_from=init_from,
                              name=job_name_for(plan, unit_id))
    previous = read_json(run_dir / CELL_FILE) if reattached else None
    write_record(
        run_dir / CELL_FILE,
        {
            "cell_id": unit_id,
            "train_id": unit.train_id,
            "study_run": plan.run_id,
            "executor": plan.executor,
            "reattached_from": (previous or {}).get("study_run") if reattached else None,
            "code_snapshot": (previous or {}).get("code_snapshot") if reattached else getattr(executor, "snapshot", None),
            "job_id": str(job.job_id),
            "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr),
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    plan.stop.register(unit_id, job)
    try:
        wait_result(job, plan.stop)  # returns within seconds of a stop request (pipeline/job_wait.py)
    except Exception as exc:  # noqa: BLE001 - any job failure becomes the cell's recorded reason
        if plan.stop.is_set() and not is_done(unit):
            return _interrupted(plan, unit_id, job, start)
        raise CellFailed(_reason(run_dir, exc, str(job.job_id), since)) from None
    finally:
        plan.stop.unregister(unit_id)
    state, reason = unit_state(run_dir)
    if state != "done" and plan.stop.is_set():
        return _interrupted(plan, unit_id, job, start)
    if state != "done":
        raise CellFailed(f"job finished but status is {state}" + (f": {reason}" if reason else ""))
    return {
        "cell_id": unit_id,
        "status": "done",
        "skipped": False,
        "seconds": round(time.time() - start, 1),
        "job_id": str(job.job_id),
        "stdout": str(job.paths.stdout),
    }


def _interrupted(plan: StudyPlan, unit_id: str, job: Any, start: float) -> dict[str, Any]:
    """The outcome of a cell stopped by the study's interruption (resumes from its checkpoint next run)."""
    return {
        "cell_id": unit_id,
        "status": "interrupted",
        "reason": plan.stop.reason,
        "seconds": round(time.time() - start, 1),
        "job_id": str(job.job_id),
        "stdout": str(job.paths.stdout),
    }


def pending(plan: StudyPlan, ids: list[str]) -> list[str]:
    return [i for i in ids if not is_done(plan.unit(i))]


# ---------------------------------------------------------------------------------------------------
# Recording


def full_grid(plan: StudyPlan) -> Grid:
    """The grid of every table of the profile, expanded once by `plan_study` (a partial run, `--table N` or a
    deployment of some tables, records into the whole study's files)."""
    return plan.full if plan.full is not None else plan.grid


def _count(cells: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "total": len(cells),
        "done": sum(c["status"] == "done" for c in cells),
        "failed": sum(c["status"] not in ("done", "interrupted") for c in cells),
        "interrupted": sum(c["status"] == "interrupted" for c in cells),
        "skipped": sum(c["skipped"] for c in cells),
    }


def summarize(plan: StudyPlan, outcomes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write cells.json, metrics.json and the queries plot; return this run's counts {total, done, failed, skipped}.

    The files always describe the whole study of the profile (every table): a partial run (`--table N`,
    a deployment of some tables) updates its cells' records and its tables' metrics; the other cells keep
    their recorded outcome (skipped, seconds, logs) and their state is read from their run folders, the
    other tables' metrics from their cells' metrics.json, so `dvc metrics show` keeps every table.
    """
    grid = full_grid(plan)
    previous = read_json(plan.reports_dir / "study" / "cells.json") or {}
    before = ({c["cell_id"]: c for c in previous.get("cells", []) if isinstance(c, dict) and "cell_id" in c}
              if previous.get("profile") == plan.profile else {})
    mine = set(plan.grid.train) | set(plan.variant_ids())
    cells = []
    for uid, unit in list(grid.train.items()) + [(e, u) for e, u in grid.evals.items() if u.is_variant]:
        state, reason = unit_state(unit.run_dir)
        out = outcomes.get(uid, {}) if uid in mine else before.get(uid, {})
        if out.get("status") in ("failed", "interrupted") and state != "done":
            state, reason = out["status"], out.get("reason") or reason
        rows = [f"{r.table}:{r.row}" for r in grid.rows if uid in r.eval_ids]
        cells.append(
            {
                "cell_id": uid,
                "train_id": unit.train_id,
                "kind": "eval" if isinstance(unit, EvalUnit) else "train",
                "status": state,
                "reason": reason,
                "skipped": bool(out.get("skipped")),
                "seconds": out.get("seconds"),
                "run_dir": unit.run_dir,
                "stdout": _portable(out.get("stdout")),
                "rows": rows,
            }
        )
    counts = _count([c for c in cells if c["cell_id"] in mine])
    write_record(
        plan.reports_dir / "study" / "cells.json",
        {"profile": plan.profile, "study_run": plan.run_id, "tables": plan.grid.tables(),
         "mlflow_run_id": plan.parent_run_id, "counts": _count(cells), "cells": cells},
    )
    metrics = key_metrics(grid)
    write_record(plan.reports_dir / "metrics.json", metrics)
    write_table_metrics(metrics, plan.reports_dir / "metrics")
    write_queries_plot(grid, plan.reports_dir / "plots" / "queries.csv")
    return counts


def _portable(path: str | None) -> str | None:
    """`path` relative to the working folder when it lies inside it (as `run_dir` is), so a committed
    cells.json names no folder of the machine that ran the study; other paths stay absolute."""
    if not path:
        return path
    p, here = Path(path).absolute(), Path.cwd()
    return str(p.relative_to(here)) if p.is_relative_to(here) else str(p)


def write_table_metrics(metrics: dict[str, Any], folder: Path) -> None:
    """One `<table>.json` ({row: {column: median}}) per table: the DVC metrics (dvc.yaml), so
    `dvc metrics show reports/metrics/table1.json` / `dvc metrics diff --targets ...` read one table.
    The folder exists even when no row has finished (it is a stage output); stale tables are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for table, rows in metrics.items():
        write_record(folder / f"{table}.json", rows)
    for stale in folder.glob("*.json"):
        if stale.stem not in metrics:
            stale.unlink()


def row_values(grid: Grid, row: Any, metric: str) -> list[float]:
    """The metric of every seed of a row that finished (missing ones left out)."""
    return metric_values((read_metrics(grid.evals[eid].run_dir) for eid in row.eval_ids), metric)


def key_metrics(grid: Grid) -> dict[str, Any]:
    """{table: {row: {column: median}}} of every finished row (the first column is the key metric)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in grid.rows:
        for col, metric in row.columns.items():
            values = row_values(grid, row, metric)
            if values:
                out.setdefault(row.table, {}).setdefault(row.row, {})[col] = round(median_over_seeds(values), 3)
    return out


def write_queries_plot(grid: Grid, path: Path) -> None:
    """Table 6 as a plot source: dataset, queries, mIoU (median over seeds) in `path`, and the same lines
    per dataset in `<path folder>/queries/<dataset>.csv` (queries, mIoU): DVC draws one line per file, so
    `dvc plots show` (dvc.yaml top-level `plots:`) draws one line per dataset."""
    lines = ["dataset,queries,mIoU"]
    per_dataset: dict[str, list[str]] = {}
    for row in grid.rows:
        if row.table != "table6" or row.cell.model != "maskformer":
            continue
        values = row_values(grid, row, "val/mIoU")
        if values:
            q = grid.train[grid.evals[row.eval_ids[0]].train_id].config["model"]["num_queries"]
            lines.append(f"{row.cell.dataset},{q},{median_over_seeds(values):.3f}")
            per_dataset.setdefault(row.cell.dataset, ["queries,mIoU"]).append(f"{q},{median_over_seeds(values):.3f}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    folder = path.parent / "queries"  # a DVC output of the study stage: exists even without Table 6
    folder.mkdir(parents=True, exist_ok=True)
    for dataset, rows in per_dataset.items():
        atomic_write_text(folder / f"{dataset}.csv", "\n".join(rows) + "\n")
    for stale in folder.glob("*.csv"):  # a dataset no longer in Table 6 (this folder is written only here)
        if stale.stem not in per_dataset:
            stale.unlink()


def dry_run_text(plan: StudyPlan) -> str:
    """What `study` would submit, nothing submitted: per phase (training, then evaluation variants) and
    dataset one SLURM array with its `#SBATCH` header (the profile's resources, pipeline.params
    `slurm_resources`) and its cells; with a local executor the cells only. Done cells are marked skip."""
    from pipeline.executor import CellExecutor, sbatch_header

    executor = CellExecutor(plan.params, plan.executor, cell_fn=plan.cell_fn, threads=plan.threads,
                            profile=plan.profile) if plan.executor == "slurm" else None
    lines = [f"profile {plan.profile}, executor {plan.executor}, {len(plan.grid.train)} training cells, "
             f"{len(plan.variant_ids())} evaluation variants (dry run: nothing submitted)"]
    for phase, ids in (("training", plan.train_ids()), ("evaluation variants", plan.variant_ids())):
        by_dataset: dict[str, list[str]] = {}
        for uid in ids:
            by_dataset.setdefault(plan.unit(uid).config["data"]["dataset"], []).append(uid)
        for dataset, uids in by_dataset.items():
            todo = [u for u in uids if not is_done(plan.unit(u))]
            lines += ["", f"# {phase}, {dataset}: {len(todo)} to run, {len(uids) - len(todo)} done"]
            if executor is not None and todo:
                tables = sorted({r.table for r in plan.grid.rows if r.cell.dataset == dataset})
                lines.append(sbatch_header(executor, cell_config(plan, plan.unit(todo[0])),
                                           f"{'+'.join(tables)}-{dataset}-array", len(todo), plan.array_folder() / dataset))
            lines += [f"  {'run ' if u in todo else 'skip'} {u}" for u in uids]
    return "\n".join(lines)


def final_message(counts: dict[str, int]) -> str:
    msg = f"{counts['total']} cells: {counts['done']} done ({counts['skipped']} skipped as already done), {counts['failed']} failed"
    if counts.get("interrupted"):
        msg += f", {counts['interrupted']} interrupted (run again to resume)"
    return msg
