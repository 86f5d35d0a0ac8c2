"""MLflow tracking of one training run: params, per-step losses, final metrics, artifacts, status.

One MLflow run per training run. `Tracker` talks to MLflow through an explicit `MlflowClient` (no
fluent global state). A resumed training run continues the same MLflow run: its id is stored in the
checkpoint and in `<run folder>/mlflow_run_id`.

Tracking URI: `MLFLOW_TRACKING_URI`, else `run.tracking_uri` from the config, else
`sqlite:///<repo>/mlruns/mlflow.db` with artifacts under `<repo>/mlruns/artifacts`. A new SQLite
store is created under a file lock before anyone logs (several processes racing to create a store
crash, see shared INFRA notes). Metrics are logged synchronously in batches (`log_batch`).

Browse: `bash scripts/services.sh up` (or `python -m pipeline.services up --only mlflow`) starts one
light `mlflow server` (1 worker, job execution off) over this same store; README "Browse MLflow".
"""
from __future__ import annotations

import fcntl
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_PARAM_LEN = 500  # MLflow param value limit (characters)
BATCH = 900  # MLflow log_batch limit is 1000 metrics / 100 params per call
PARAM_BATCH = 100


def default_tracking_uri() -> str:
    """The repository's store: `sqlite:///<repo>/mlruns/mlflow.db` (artifacts in `<repo>/mlruns/artifacts`)."""
    return f"sqlite:///{REPO_ROOT / 'mlruns' / 'mlflow.db'}"


def backend_store_uri() -> str:
    """The store the services' MLflow server serves (scripts/services.sh): `MLFLOW_BACKEND_STORE_URI`,
    else the repository's store, i.e. the very file `dvc repro` writes when no server is configured."""
    return os.environ.get("MLFLOW_BACKEND_STORE_URI") or default_tracking_uri()


def resolve_tracking_uri(config_uri: str | None = None) -> str:
    """The one place every entry point (dvc repro, CLI, deployments, SLURM cells, status and report
    links) resolves the tracking URI: `MLFLOW_TRACKING_URI` > config `run.tracking_uri` > repository
    default (sqlite). With scripts/services.env sourced, `MLFLOW_TRACKING_URI` is the services' server,
    which serves the repository default store (`backend_store_uri`), so both paths reach one store.
    SLURM cells inherit the variable (sbatch exports the submitting environment)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config_uri or default_tracking_uri()


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def default_artifact_root(uri: str) -> str | None:
    """`<db folder>/artifacts` as a file URI for a sqlite store; None (server decides) otherwise."""
    db = _sqlite_path(uri)
    return (db.parent / "artifacts").resolve().as_uri() if db else None


def ensure_store(uri: str) -> None:
    """Create the SQLite store (schema migrations) once, under an exclusive file lock.

    Call this in the parent before starting concurrent writers; it is cheap when the store exists.
    """
    from mlflow.tracking import MlflowClient

    db = _sqlite_path(uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow-store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def system_tags(source_name: str) -> dict[str, str]:
    """MLflow's own tags, as its fluent API would set them: source commit, user, entry point, source type.

    Set explicitly because the explicit `MlflowClient` (no fluent global state) does not add them.
    """
    import getpass

    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    from pipeline.runfolder import git_commit

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid())
    tags = {MLFLOW_USER: user, MLFLOW_SOURCE_NAME: source_name, MLFLOW_SOURCE_TYPE: "LOCAL"}
    commit = git_commit()
    if commit and commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"solver.base_lr": "0.0001", ...}; values cut to MLflow's 500-character limit."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, name + "."))
        else:
            text = "None" if value is None else str(value)
            out[name] = text[:MAX_PARAM_LEN]
    return out


class Tracker:
    """One MLflow run. Use `start`, `log_step`, `log_final`, `log_artifacts`, `end(status)`.

    `disabled=True` gives a tracker whose methods do nothing (non-zero ranks, tracking off).
    """

    def __init__(self, uri: str | None = None, experiment: str = "maskformer", disabled: bool = False):
        self.disabled = disabled
        self.uri = resolve_tracking_uri(uri)
        self.experiment = experiment
        self.run_id: str | None = None
        self._pending: list = []
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=default_artifact_root(self.uri))
        except Exception:  # another process created it first
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, params: dict[str, Any], tags: dict[str, str], run_id: str | None = None,
              run_name: str | None = None, source_name: str = "pipeline.engine.run_cell") -> str | None:
        """Open (or, with `run_id`, reopen) the MLflow run; log params and tags once. Returns the run id.

        MLflow's system tags (`system_tags(source_name)`) come first, `tags` override them; a
        `mlflow.parentRunId` tag nests the run under the study's parent run. A reopened run gets the
        study tags again (a later study run becomes its parent).
        """
        if self.disabled:
            return None
        from mlflow.entities import Param, RunTag

        ensure_store(self.uri)
        tags = {**system_tags(source_name), **{k: str(v) for k, v in tags.items()}}
        resumed = False
        if run_id:
            try:
                self.client.get_run(run_id)
                resumed = True
            except Exception:
                run_id = None  # the store was wiped: start a fresh run
        if resumed:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**tags, "resumed": "true"}.items()])
            return run_id
        run = self.client.create_run(self._experiment_id(), tags=dict(tags), run_name=run_name)
        self.run_id = run.info.run_id
        flat = flatten_params(params)
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for i in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + PARAM_BATCH])
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return self.run_id

    def log_step(self, metrics: dict[str, float], step: int) -> None:
        """Queue finite scalar metrics for `step`; sent by `flush` (call it at log/checkpoint time)."""
        if self.disabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self._pending.append(Metric(key, value, ts, int(step)))
        if len(self._pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.disabled or self.run_id is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), BATCH):
            self.client.log_batch(self.run_id, metrics=pending[i : i + BATCH])

    def log_final(self, metrics: dict[str, Any], step: int) -> None:
        """Log the scalar entries of a metrics dict (non-numeric entries such as `analysis/...` are skipped)."""
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log_step(scalars, step)
        self.flush()

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        """Copy the existing files of `paths` into the run's artifacts (under `artifact_path`)."""
        if self.disabled or self.run_id is None:
            return
        for path in paths:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, version: str, source: str | Path, context: str = "train") -> None:
        """Log the dataset the run reads as an MLflow input (the run page's "Datasets"): `name` (e.g.
        `ade20k`), `version` as its digest (the DVC md5 or twin hash, `pipeline.grid.data_version`),
        `source` the data folder, `context` train or eval."""
        if self.disabled or self.run_id is None:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # a local folder matches the registry's local source twice: same class
            warnings.simplefilter("ignore", UserWarning)
            src = resolve_dataset_source(str(Path(source).resolve()))
        dataset = MetaDataset(src, name=name, digest=version)
        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException as exc:
            # Two cells of one dataset starting together (a SLURM array) both insert the experiment's dataset
            # row; the loser gets "UNIQUE constraint failed: datasets..." (SQL store's get-or-create is not
            # atomic; seen in tests/test_cluster2.py). The row exists now: logging again links it.
            if "UNIQUE constraint failed: datasets" not in str(exc):
                raise
            self.client.log_inputs(self.run_id, datasets=inputs)

    def end(self, status: str) -> None:
        """Flush and close the run as FINISHED, FAILED or KILLED."""
        if self.disabled or self.run_id is None:
            return
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)
