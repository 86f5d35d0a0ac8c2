"""State of every cell of a study profile (done / running / failed / interrupted / missing) from its run folders.

Reads only the files the engine leaves in each run folder (docs/ARCHITECTURE.md "Run folder"):
``status.json`` (``{"status": running|done|failed|interrupted, "time", "reason"?, "iteration"?,
"mlflow_run_id"?}``), ``mlflow_run_id``, ``config.yaml``, ``metrics.json`` and ``train_log.jsonl``.
The expected cells come from the study's plan file (``reports/study/plan.json``, ``pipeline.plan``),
never from re-expanding params.yaml's grid; a cell without a folder is ``missing``. Each cell gets a link into the MLflow UI: ``<ui>/#/experiments/<id>/runs/<run_id>``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.plan import load_plan
from pipeline.runfolder import CELL_FILE, CONFIG_FILE, METRICS_FILE, RUN_ID_FILE, STATUS_FILE, TRAIN_LOG, read_json

STATES = ("done", "running", "interrupted", "failed", "missing")
# Where a person opens the MLflow UI when tracking goes to a local SQLite file (`mlflow ui` default).
DEFAULT_UI_URL = "http://127.0.0.1:5000"


@dataclass
class CellState:
    """One cell's run folder, parsed. ``config``/``metrics`` are {} when the files are absent."""

    cell_id: str
    path: Path
    state: str
    reason: str = ""
    time: str = ""
    iteration: int | None = None
    mlflow_run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[str] = field(default_factory=list)  # "table3: MaskFormer R50+6Enc" labels from the grid
    link: str | None = None
    job_id: str | None = None  # the job that last ran the cell (cell.json, written by the study)
    job_state: str | None = None  # SLURM's view while the job is queued or running: PENDING, RUNNING, ...
    job_reason: str | None = None  # SLURM's pending reason (squeue %r), e.g. Priority, PartitionConfig

    def train_log(self) -> list[dict[str, Any]]:
        """``train_log.jsonl`` entries (``iter``, ``train/total_loss``, ``train/lr``, ...); bad lines skipped."""
        path = self.path / TRAIN_LOG
        entries = []
        if not path.is_file():
            return entries
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill; the engine truncates it on resume
            if isinstance(entry, dict) and "iter" in entry:
                entries.append(entry)
        return entries

    @property
    def max_iter(self) -> int | None:
        return (self.config.get("solver") or {}).get("max_iter")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_cell(path: Path, cell_id: str | None = None) -> CellState:
    """Parse one run folder (which may not exist: state ``missing``)."""
    path = Path(path)
    cell_id = cell_id or path.name
    if not path.is_dir():
        return CellState(cell_id, path, "missing")
    status = read_json(path / STATUS_FILE)
    metrics = read_json(path / METRICS_FILE)
    config = _read_yaml(path / CONFIG_FILE)
    run_id = None
    run_id_file = path / RUN_ID_FILE
    if run_id_file.is_file():
        run_id = run_id_file.read_text().strip() or None
    if not isinstance(status, dict) or status.get("status") not in STATES:
        # A folder without a readable status.json: created, but the run never got going.
        state, reason, when, iteration = "missing", "no status.json", "", None
    else:
        state = status["status"]
        reason = str(status.get("reason", ""))
        when = str(status.get("time", ""))
        iteration = status.get("iteration")
        run_id = run_id or status.get("mlflow_run_id")
    if state == "done" and not isinstance(metrics, dict):
        state, reason = "failed", "status.json says done but metrics.json is missing or unreadable"
    if state == "running" and isinstance(status, dict):
        gone = owner_gone(status)
        if gone:  # killed (SIGKILL, OOM killer, node lost) before it could write its final status
            state, reason = "interrupted", f"status.json says running, but {gone}; run the study again to resume"
    return CellState(cell_id, path, state, reason, when, iteration, run_id, config,
                     metrics if isinstance(metrics, dict) else {})


def owner_gone(status: dict[str, Any]) -> str | None:
    """Why the process that wrote a `running` status.json is no longer running, or None (alive or unknown).

    SLURM jobs (`slurm_job_id`) are looked up with `squeue`; a local run by its `pid` when it ran on this
    host (`host`). A status without an owner (older run folders) or an unreachable scheduler: None.
    """
    job = status.get("slurm_job_id")
    if job:
        import shutil
        import subprocess

        if not shutil.which("squeue"):
            return None
        try:
            out = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True,
                                 timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0 and not out.stdout.strip():
            return f"SLURM job {job} is no longer in the queue"
        if out.returncode != 0 and "Invalid job id" in out.stderr:
            return f"SLURM job {job} is no longer in the queue"
        return None
    pid, host = status.get("pid"), status.get("host")
    if not isinstance(pid, int) or not host:
        return None
    import socket

    if host != socket.gethostname():
        return None
    from pipeline.reaper import alive

    return None if alive(pid) else f"its process {pid} on {host} is gone"


def live_leftovers(run_dirs) -> list[str]:
    """One line per run folder whose `running` status.json names a process or SLURM job that is still alive.

    Called when a study starts: such a cell belongs to an earlier study that died (SIGKILL, OOM killer)
    without stopping its children; the new study reports it instead of silently running a second writer.
    """
    lines = []
    for run_dir in run_dirs:
        status = read_json(Path(run_dir) / STATUS_FILE)
        if not isinstance(status, dict) or status.get("status") != "running":
            continue
        if not (status.get("pid") or status.get("slurm_job_id")) or owner_gone(status):
            continue
        who = (f"SLURM job {status['slurm_job_id']}" if status.get("slurm_job_id")
               else f"pid {status['pid']} on {status.get('host')}")
        lines.append(f"{run_dir}: still running as {who}, left by an earlier study that was killed; "
                     f"stop it (kill / scancel) or wait for it before trusting this cell's result")
    return lines


def expected_cells(profile: str, plan_path: str | os.PathLike) -> dict[str, tuple[Path, list[str]]]:
    """``{eval_id: (run folder, [row labels])}`` of the study's plan (UserError naming the file when it is
    missing or of another profile)."""
    plan = load_plan(plan_path, profile)
    labels = plan.row_labels()
    return {eval_id: (Path(unit.run_dir), labels.get(eval_id, [])) for eval_id, unit in plan.evals.items()}


def scan(profile: str, runs_root: str | os.PathLike = "runs", plan_path: str | os.PathLike | None = "reports/study/plan.json",
         ui_url: str | None = None, resolve_links: bool = True) -> tuple[list[CellState], str | None]:
    """Every cell of ``profile``: the plan's cells (``missing`` when absent) plus any other folder found.

    Returns ``(cells, note)``; ``note`` says why the plan was not read (then: run folders only).
    """
    cells: dict[str, CellState] = {}
    note = None
    if plan_path is not None:
        try:
            for eval_id, (run_dir, rows) in expected_cells(profile, plan_path).items():
                # The folder under the runs root asked for (the plan's own paths use study.runs_root).
                cell = read_cell(Path(runs_root) / profile / run_dir.name, eval_id)
                cell.rows = rows
                cells[eval_id] = cell
        except UserError as exc:  # status must still show what is on disk
            note = f"{exc}; showing run folders only"
    root = Path(runs_root) / profile
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name not in cells:
                cells[folder.name] = read_cell(folder)
    result = sorted(cells.values(), key=lambda c: (STATES.index(c.state), c.cell_id))
    attach_jobs(result)
    if resolve_links:
        attach_links(result, ui_url, runs_root)
    return result, note


def ui_base_url(tracking_uri: str | None = None, ui_url: str | None = None) -> str:
    """The MLflow UI a person opens: ``MLFLOW_UI_URL``, else an http tracking URI, else ``mlflow ui``'s default."""
    if ui_url:
        return ui_url.rstrip("/")
    if os.environ.get("MLFLOW_UI_URL"):
        return os.environ["MLFLOW_UI_URL"].rstrip("/")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    # A local store: the services' server (scripts/services.sh) serves it on MLFLOW_PORT.
    port = os.environ.get("MLFLOW_PORT")
    return f"http://127.0.0.1:{int(port)}" if port and port.isdigit() else DEFAULT_UI_URL


def mlflow_link(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def attach_links(cells: list[CellState], ui_url: str | None = None, runs_root: str | os.PathLike | None = None) -> None:
    """Fill ``cell.link`` for cells with an MLflow run id, asking the tracking store for the experiment id.

    Without ``MLFLOW_TRACKING_URI`` or ``run.tracking_uri``, the engine logged to the default store of
    the checkout that ran it: ``<checkout>/mlruns/mlflow.db`` beside ``runs_root``.
    """
    from pipeline.tracking import default_tracking_uri, resolve_tracking_uri

    beside = Path(runs_root).resolve().parent / "mlruns" / "mlflow.db" if runs_root is not None else None

    with_ids = [c for c in cells if c.mlflow_run_id]
    if not with_ids:
        return
    clients: dict[str, Any] = {}
    for cell in with_ids:
        uri = resolve_tracking_uri((cell.config.get("run") or {}).get("tracking_uri"))
        if uri == default_tracking_uri() and beside is not None and beside.is_file():
            uri = f"sqlite:///{beside}"
        ui = ui_base_url(uri, ui_url)
        try:
            if uri not in clients:
                from mlflow.tracking import MlflowClient

                clients[uri] = MlflowClient(tracking_uri=uri)
            experiment_id = clients[uri].get_run(cell.mlflow_run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - the store may be down or wiped; show the run id alone
            cell.link = f"{ui} (run {cell.mlflow_run_id}; experiment not found in {uri})"
            continue
        cell.link = mlflow_link(ui, experiment_id, cell.mlflow_run_id)


# Pending reasons SLURM will not clear by waiting (squeue(1) "JOB REASON CODES"): the job asks for more
# than the partition allows, for nodes that are down/drained, or depends on a job that failed.
NEVER_CLEARS = ("PartitionConfig", "ReqNodeNotAvail", "PartitionNodeLimit", "PartitionTimeLimit",
                "DependencyNeverSatisfied", "BadConstraints", "InvalidAccount", "InvalidQOS", "PartitionDown",
                "PartitionInactive", "AssocMaxJobsLimit")


def attach_jobs(cells: list[CellState]) -> None:
    """Fill ``job_id`` from each run folder's ``cell.json`` and, where SLURM answers (``squeue``), the job's
    state and pending reason. Jobs SLURM no longer lists keep only their id."""
    import shutil
    import subprocess

    for cell in cells:
        record = read_json(cell.path / CELL_FILE)
        if isinstance(record, dict) and record.get("job_id"):
            cell.job_id = str(record["job_id"])
    ids = sorted({c.job_id for c in cells if c.job_id and c.job_id.replace("_", "").isdigit()})
    if not ids or shutil.which("squeue") is None:
        return
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    for cell in cells:
        if cell.job_id in jobs:
            cell.job_state, reason = jobs[cell.job_id]
            cell.job_reason = reason if reason and reason != "None" else None


def stuck_jobs(cells: list[CellState]) -> list[str]:
    """Warnings for jobs pending for a reason that never clears (``NEVER_CLEARS``), naming job and cell."""
    out = []
    for cell in cells:
        reason = cell.job_reason or ""
        if cell.job_state == "PENDING" and any(reason.startswith(r) for r in NEVER_CLEARS):
            out.append(f"warning: job {cell.job_id} ({cell.cell_id}) pends for {reason}, which SLURM will not clear "
                       f"by waiting: check its resources (`study --dry-run` shows the #SBATCH header) and "
                       f"`scontrol show job {cell.job_id}`, then scancel it")
    return out


def progress(cell: CellState) -> str:
    """``1234/5000`` iterations from the last train_log entry (running cells), else ''."""
    if cell.state not in ("running", "interrupted"):
        return ""
    log = cell.train_log()
    done = log[-1]["iter"] if log else (cell.iteration or 0)
    return f"{done}/{cell.max_iter}" if cell.max_iter else str(done)


def format_table(cells: list[CellState]) -> str:
    """A plain-text table: state, cell id, progress, headline metric, rows, reason, MLflow link."""
    lines = []
    counts = {s: sum(c.state == s for c in cells) for s in STATES}
    lines.append("  ".join(f"{s}: {n}" for s, n in counts.items()) + f"  (total {len(cells)})")
    for cell in cells:
        headline = ""
        for key in ("val/mIoU", "val/PQ", "val/PQSt"):
            value = cell.metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                headline = f"{key}={value:.2f}"
                break
        parts = [f"{cell.state:<11}", cell.cell_id]
        if progress(cell):
            parts.append(f"iter {progress(cell)}")
        if headline:
            parts.append(headline)
        if cell.rows:
            parts.append("[" + "; ".join(cell.rows[:2]) + ("; ..." if len(cell.rows) > 2 else "") + "]")
        if cell.reason and cell.state != "done":
            parts.append(f"reason: {cell.reason[:200]}")
        if cell.job_id and cell.state != "done":
            parts.append(f"job {cell.job_id}" + (f" {cell.job_state}" if cell.job_state else "")
                         + (f" ({cell.job_reason})" if cell.job_reason else ""))
        if cell.link:
            parts.append(cell.link)
        lines.append("  ".join(parts))
    return "\n".join(lines)
