"""A cell's run folder: its file names, atomic JSON, status.json, and the median of a metric over seeds.

The one place the run folder's layout is spelled (docs/ARCHITECTURE.md "Run folder"); the engine writes it,
the study, status, tables, report and models store read it:

    <runs_root>/<profile>/<cell id>/
        config.yaml        resolved RunConfig (pipeline.config)
        status.json        running | done | failed | interrupted (+ reason, iteration, mlflow_run_id, ...)
        metrics.json       flat slash-named metrics (pipeline.evaluation)
        train_log.jsonl    one line per logged iteration
        mlflow_run_id      the MLflow run the cell logs to
        checkpoints/       last.pt, prev.pt, final.pt (+ .sha256; pipeline.checkpoint)
        cell.json          written by the study: which study run submitted it, job id, logs
        failure.json       written by the executor when the job raised
        logs/<study run>/  submitit stdout/stderr
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

from pipeline.cluster import owner_info
from pipeline.config import atomic_write_text
from pipeline.errors import UserError

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
TRAIN_LOG = "train_log.jsonl"
RUN_ID_FILE = "mlflow_run_id"
CELL_FILE = "cell.json"
FAILURE_FILE = "failure.json"
CKPT_DIR = "checkpoints"
LOGS_DIR = "logs"
# What marks a folder as a run folder of this pipeline (the engine's files, or the study's for the cell).
RUN_FOLDER_MARKERS = (STATUS_FILE, CONFIG_FILE, TRAIN_LOG, CKPT_DIR, CELL_FILE, FAILURE_FILE, LOGS_DIR)


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2, sort_keys: bool = True,
               allow_nan: bool = False, default: Any = None) -> None:
    """`data` as JSON in `path`, atomically (pipeline.config.atomic_write_text: readers see old or new)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default)
    atomic_write_text(Path(path), text + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The parsed file, or None when it is missing or not valid JSON (a half-written file of a dead writer)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_status(output_dir: str | os.PathLike, status: str, **extra: Any) -> None:
    """`status.json`: {"status": running|done|failed|interrupted, "time", ...extra}.

    The engine's extras: `reason`, `iteration`, `mlflow_run_id`, `git_commit` and `tracking_uri` (the
    resolved MLflow store the run logs to; null with tracking off), so that status and report link a
    folder to its MLflow run without re-resolving the URI. A `running` status also records who runs it
    (pipeline.cluster.owner_info, as the writer lock does), so `status` can tell a live run from a dead one.
    """
    if status == "running":
        extra = {**owner_info(), **extra}
    write_json(Path(output_dir) / STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def read_status(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """status.json of a run folder (None when there is none or it does not parse)."""
    status = read_json(Path(output_dir) / STATUS_FILE)
    return status if isinstance(status, dict) else None


def read_metrics(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """metrics.json of a run folder (None when there is none or it does not parse)."""
    metrics = read_json(Path(output_dir) / METRICS_FILE)
    return metrics if isinstance(metrics, dict) else None


def check_run_folder(output_dir: str | os.PathLike) -> None:
    """UserError naming `output_dir` when it is a non-empty folder that is not a run folder (the user's files).

    The engine writes status.json, metrics.json, config.yaml, ... into it: never over someone else's.
    """
    out = Path(output_dir)
    if not out.is_dir() or any((out / m).exists() for m in RUN_FOLDER_MARKERS):
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        raise UserError(f"run.output_dir {out}: folder is not empty ({', '.join(entries[:3])}"
                        f"{' ...' if len(entries) > 3 else ''}) and holds no run (no {STATUS_FILE}, {CONFIG_FILE}, "
                        f"{CKPT_DIR}/); refusing to write into it; choose another --output-dir")


def metric_values(metrics: Iterable[dict[str, Any] | None], key: str) -> list[float]:
    """The numeric value of `key` in each metrics dict that has one (seeds that did not finish left out)."""
    return [float(m[key]) for m in metrics
            if m is not None and isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)]


def median_over_seeds(values: list[float]) -> float:
    """A table row's number: the median over its seeds (paper Sec. 4 "Evaluation metrics": median of 3 runs, 5 on Cityscapes)."""
    if not values:
        raise ValueError("median over no seeds")
    return statistics.median(values)


# Tracked files the pipeline itself writes during `dvc repro`: a change there does not make the code dirty.
OUTPUT_PATHS = ("reports", "dvc.lock")


def git_commit(repo: str | os.PathLike | None = None, *, short: bool | int = False, mark_dirty: bool = False) -> str:
    """HEAD commit of `repo` (default: the repository holding this code); "unknown" outside git.

    `short`: True for git's abbreviation, an int for that many hex digits; `mark_dirty`: append "+dirty"
    when tracked files are modified, the pipeline's own outputs (`OUTPUT_PATHS`: reports/, dvc.lock,
    which `dvc repro` rewrites before the tables and report read the commit) left out.
    """
    repo = Path(repo) if repo else Path(__file__).resolve().parents[1]
    flag = ["--short"] if short is True else [f"--short={short}"] if short else []
    try:
        sha = subprocess.run(["git", "rev-parse", *flag, "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not sha:
        return "unknown"
    if mark_dirty:
        try:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                    *(f":(exclude){p}" for p in OUTPUT_PATHS)],
                                   cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return sha
        if dirty.returncode == 0 and dirty.stdout.strip():
            sha += "+dirty"
    return sha
