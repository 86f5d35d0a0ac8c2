"""The lifecycle of one run: `run_cell` (train, resuming after preemption, then evaluate) and `evaluate_cell`.

`run_cell(config)` is what the study layer calls for one grid cell. Around the training loop
(pipeline/trainer.py) it checks the data, takes the run folder's writer lock, starts the tracking run and
writes the run folder (pipeline/runfolder.py). `run_lifecycle` is the one context manager that always
closes the tracking run (FINISHED / KILLED / FAILED) and leaves the final status.json (done / interrupted /
failed + reason), for training and evaluation alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from maskformer_core.data.datasets import load_split
from maskformer_core.data.metadata import get_metadata
from maskformer_core.data.validate import validate as validate_split
from maskformer_core.errors import CheckpointError, DataError
from maskformer_core.models import build_model
from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline import released
from pipeline.cluster import WriterLock
from pipeline.config import RunConfig, atomic_write_text, check_against_metadata, dump_config, resolve_defaults
from pipeline.evaluation import GTCache, evaluate
from pipeline.runfolder import (
    CONFIG_FILE,
    METRICS_FILE,
    RUN_ID_FILE,
    TRAIN_LOG,
    check_run_folder,
    git_commit,
    read_status,
    write_json,
    write_status,
)
from pipeline.tracking import Tracker, ensure_store, resolve_tracking_uri
from pipeline.trainer import (  # noqa: F401 - EXIT_PREEMPTED, NonFiniteLoss, preempt_signals: re-exported for callers of run_cell
    EXIT_PREEMPTED,
    NonFiniteLoss,
    Preempted,
    StopFlag,
    Trainer,
    configure_determinism,
    preempt_signals,
)

log = logging.getLogger(__name__)


def run_info(tracker: Tracker) -> dict[str, Any]:
    """`git_commit` and `tracking_uri` (None when tracking is off) for status.json."""
    info = {"git_commit": git_commit(), "tracking_uri": None if tracker.disabled else tracker.uri}
    if os.environ.get("MASKFORMER_CODE_SNAPSHOT"):
        info["code_snapshot"] = os.environ["MASKFORMER_CODE_SNAPSHOT"]
    return info


@dataclasses.dataclass
class RunOutcome:
    """What the body of `run_lifecycle` tells it: the tracking run id, and (`finish`) the extras of `done`."""

    info: dict[str, Any]
    mlflow_run_id: str | None = None
    done: dict[str, Any] | None = None

    def finish(self, **extra: Any) -> None:
        """The run succeeded: status.json becomes `done` with these extras when the block exits."""
        self.done = extra


@contextlib.contextmanager
def run_lifecycle(tracker: Tracker, output_dir: Path, *, write: bool, info: dict[str, Any],
                  mlflow_run_id: str | None = None) -> Iterator[RunOutcome]:
    """Always close the tracking run and leave the final status.json (lightning-hydra-template's task_wrapper).

    - the block calls `outcome.finish(**extra)`: status `done` (+ extra), tracking run FINISHED;
    - `Preempted`: status `interrupted` (iteration, reason), KILLED; `KeyboardInterrupt`: `interrupted`, KILLED;
    - any other exception: status `failed` with the reason and traceback, FAILED.
    The exception is re-raised. `write`: whether this process writes status.json (rank 0 / own folder);
    every status carries `mlflow_run_id` and `info` (run_info: git commit, tracking URI).
    """
    outcome = RunOutcome(info=info, mlflow_run_id=mlflow_run_id)
    tracking_status = "FAILED"

    def status(state: str, **extra: Any) -> None:
        if write and output_dir.exists():
            write_status(output_dir, state, **extra, mlflow_run_id=outcome.mlflow_run_id, **outcome.info)

    try:
        yield outcome
        if outcome.done is not None:
            status("done", **outcome.done)
        tracking_status = "FINISHED"
    except Preempted as exc:
        tracking_status = "KILLED"
        status("interrupted", iteration=exc.iteration, reason=str(exc))
        raise
    except KeyboardInterrupt:
        tracking_status = "KILLED"
        status("interrupted", reason="KeyboardInterrupt")
        raise
    except BaseException as exc:
        status("failed", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=20))
        raise
    finally:
        with contextlib.suppress(Exception):
            tracker.end(tracking_status)


def check_data(cfg: RunConfig, validate: Iterable[str] = ()):
    """Metadata + the config + train/val records, or an error before anything starts: DataError naming the
    missing dataset, UserError naming the config key the data on disk disagrees with (K, split names).

    `validate`: which of ("train", "val") to pass through `maskformer_core.data.validate` first (full
    image decode, label range, image/label sizes, panoptic PNG/JSON agreement); its DataError names the
    file. Cost: one decode of every image of the split (about a second on the smoke twins; minutes on a
    full ADE20K/COCO train split, still small next to any real training run).
    """
    root = Path(cfg.data.root)
    if not root.exists():
        raise DataError(f"dataset {cfg.data.dataset!r} not found: data.root {root} does not exist "
                        f"(prepare it with `python -m pipeline data ...` first)")
    meta = get_metadata(cfg.data.dataset, root)
    # The grid resolved the config at plan time (pipeline.grid.resolve_cell): here the data on disk must
    # agree with it (UserError naming the key). `resolve_defaults` then changes nothing for a planned
    # cell; it completes a hand-built config of a direct API call.
    check_against_metadata(cfg, meta, source=f"cell {cfg.run.run_name or Path(cfg.run.output_dir).name}")
    resolved = resolve_defaults(cfg, meta)
    splits = {"train": resolved.data.train_split, "val": resolved.data.val_split}
    for split in dict.fromkeys(splits[k] for k in validate):  # unique, in order
        validate_split(cfg.data.dataset, root, split, meta=meta)
    train = load_split(cfg.data.dataset, root, resolved.data.train_split)
    val = load_split(cfg.data.dataset, root, resolved.data.val_split)
    if not train:
        raise DataError(f"{root}: split {resolved.data.train_split!r} of {cfg.data.dataset} has no images")
    return meta, resolved, train, val


def _tags(cfg: RunConfig) -> dict[str, str]:
    # `config_hash`: pipeline.config.result_hash (scope "eval"); `group` pools the seeds of a row (the
    # same hash without the seed); the study adds `table`, `row`,
    # `rows`, `study_run` and `mlflow.parentRunId` through run.tags (pipeline.study.cell_config).
    tags = {"git_commit": git_commit(), "seed": str(cfg.run.seed), "dataset": cfg.data.dataset,
            "config_hash": cfg.config_hash(), "group": cfg.group_hash(),
            "cell": cfg.run.tags.get("cell_id") or Path(cfg.run.output_dir).name,
            "output_dir": str(Path(cfg.run.output_dir).resolve())}
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    if os.environ.get("MASKFORMER_CODE_SNAPSHOT"):  # the study's code snapshot this job imports
        tags["code_snapshot"] = os.environ["MASKFORMER_CODE_SNAPSHOT"]
    tags["world_size"] = str(cfg.run.num_gpus)
    tags.update({k: str(v) for k, v in cfg.run.tags.items()})
    return tags


def _log_datasets(tracker: Tracker, cfg: RunConfig, contexts: tuple[str, ...]) -> None:
    """The cell's dataset and its version (`data.version`) as MLflow inputs, one per split read."""
    version = cfg.data.version or cfg.run.tags.get("data_version") or "none"
    for context in contexts:
        tracker.log_dataset(cfg.data.dataset, version, cfg.data.root, context=context)


def run_cell(config: RunConfig, *, hooks: Iterable[Callable[[int], None]] = (), tta: bool | None = None) -> dict[str, Any]:
    """Train (or resume) and evaluate one grid cell; returns the final metrics dict.

    Contract (for the study layer):
    - Idempotent: when `<output_dir>/status.json` says `done` and `metrics.json` exists for the same
      training config, returns those metrics without work. Otherwise it resumes from
      `checkpoints/last.pt` (falling back to `prev.pt` if the hash fails) or starts fresh.
    - Writes in `config.run.output_dir` (rank 0 only): `config.yaml` (resolved), `checkpoints/`,
      `train_log.jsonl`, `metrics.json` (flat slash names, see pipeline.evaluation), `status.json`
      (`running` | `done` | `failed` + `reason` | `interrupted` + `iteration`; always `mlflow_run_id`,
      `git_commit`, `tracking_uri`), `mlflow_run_id`.
    - Distributed: inside torchrun/submitit multi-task jobs every task calls `run_cell`; with
      `run.num_gpus > 1` and no launcher it spawns that many local processes itself.
    - Raises: `DataError`/`UserError` (bad data or config, before anything is written; the train and val
      splits go through `maskformer_core.data.validate` first),
      `CheckpointError` (checkpoint of another config; keys named), `NonFiniteLoss` (a TrainingDiverged: iteration and last good checkpoint named),
      `Preempted` (SIGTERM/SIGUSR1: state saved, MLflow run KILLED, status `interrupted`; call again to
      continue; CLI exit code 75). MLflow is always closed with FINISHED / FAILED / KILLED.
    - `hooks`: callables `hook(iteration)` run after every iteration (tests, progress).
    """
    check_run_folder(config.run.output_dir)
    if config.model.weights is not None:  # evaluation-only cell: a released checkpoint (the `zoo` profile)
        try:
            return evaluate_cell(config, checkpoint=config.model.weights)
        except CheckpointError as exc:  # file missing / corrupt / of another model: the cell's failure marker
            Path(config.run.output_dir).mkdir(parents=True, exist_ok=True)
            write_status(Path(config.run.output_dir), "failed", reason=str(exc))
            raise
    env = dist_utils.detect()
    if env.world_size == 1 and config.run.num_gpus > 1:
        check_data(config, validate=("train", "val"))  # bad data is reported before any process is launched
        uri = resolve_tracking_uri(config.run.tracking_uri)
        if config.run.tracking:
            ensure_store(uri)  # create the store once, before the workers write to it
        raw = config.to_dict()
        raw["run"]["tracking_uri"] = uri
        try:
            dist_utils.launch_local(_spawned_worker, config.run.num_gpus, args=(raw, tta))
        except Exception as exc:  # a worker raised; status.json says what happened
            status = read_status(config.run.output_dir) or {}
            if status.get("status") == "interrupted":
                raise Preempted(int(status.get("iteration", 0)), None, None) from exc
            raise RuntimeError(f"distributed run failed: {status.get('reason', exc)}") from exc
        status = read_status(config.run.output_dir) or {}
        if status.get("status") != "done":
            raise RuntimeError(f"distributed run ended with status {status}")
        return json.loads((Path(config.run.output_dir) / METRICS_FILE).read_text())
    return _run_process(config, env, hooks=hooks, tta=tta)


def _spawned_worker(config_dict: dict, tta: bool | None) -> None:
    # The launching process validated the data already.
    _run_process(RunConfig.model_validate(config_dict), dist_utils.detect(), hooks=(), tta=tta, validate=())


def _existing_result(output_dir: Path, cfg: RunConfig) -> dict | None:
    status = read_status(output_dir)
    metrics_path = output_dir / METRICS_FILE
    if not status or status.get("status") != "done" or not metrics_path.exists():
        return None
    loaded = ckpt.load_latest(ckpt.checkpoint_dir(output_dir))
    if loaded is not None:
        ckpt.check_config(loaded[0], cfg.to_dict(), loaded[1])
    return json.loads(metrics_path.read_text())


def _run_process(config: RunConfig, env: dist_utils.DistEnv, *, hooks=(), tta=None,
                 validate: Iterable[str] = ("train", "val")) -> dict[str, Any]:
    # Every rank validates before the process group exists, so all ranks fail alike (no rank left waiting).
    meta, cfg, train_records, val_records = check_data(config, validate=validate)
    output_dir = Path(cfg.run.output_dir)
    device = dist_utils.select_device(cfg.run.device, env)
    configure_determinism(cfg, device)
    dist_utils.init(env, device)
    lock = WriterLock(output_dir)
    try:
        if env.is_main:
            # One writer per run folder (concurrent studies, deployments, CLI runs): wait for another
            # live writer, then find its result (a stale lock of a dead job is cleared).
            lock.acquire()
            done = _existing_result(output_dir, cfg)
        else:
            done = None
        done = dist_utils.broadcast_object(done, env)
        if done is not None:
            return done
        torch.manual_seed(cfg.run.seed)  # model init (the official configs' SEED -1 is random; we fix it per cell)
        tracker = Tracker(cfg.run.tracking_uri, cfg.run.experiment, disabled=not (cfg.run.tracking and env.is_main))
        trainer = Trainer(cfg, meta, env, device, tracker, output_dir, hooks=hooks)
        loaded = ckpt.load_latest(trainer.ckpt_dir, map_location=device)
        restart = None
        if loaded is not None:
            trainer.load_state(*loaded)
        else:
            restart = _restart_note(trainer.ckpt_dir, output_dir)
            if restart and env.is_main:
                log.warning("%s", restart)
        run_id_file = output_dir / RUN_ID_FILE
        if trainer.mlflow_run_id is None and run_id_file.exists():
            trainer.mlflow_run_id = run_id_file.read_text().strip() or None
        if env.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, output_dir / CONFIG_FILE)
            trainer.mlflow_run_id = tracker.start(cfg.to_dict(), _tags(cfg), run_id=trainer.mlflow_run_id,
                                                  run_name=cfg.run.run_name or output_dir.name)
            if trainer.mlflow_run_id:
                atomic_write_text(run_id_file, trainer.mlflow_run_id + "\n")
                _log_datasets(tracker, cfg, ("train", "val"))
            write_status(output_dir, "running", iteration=trainer.start_iter, mlflow_run_id=trainer.mlflow_run_id,
                         **({"restart": restart} if restart else {}), **run_info(tracker))
        return _train_and_evaluate(cfg, meta, env, device, tracker, trainer, output_dir, train_records,
                                   val_records, tta)
    finally:
        lock.release()
        dist_utils.cleanup()


def _train_and_evaluate(cfg, meta, env, device, tracker, trainer, output_dir, train_records, val_records, tta):
    stop = StopFlag()
    gt_cache = GTCache()  # panoptic GT prepared once for all evaluations of this run, within its byte budget
    try:
        with run_lifecycle(tracker, output_dir, write=env.is_main, info=run_info(tracker) if env.is_main else {},
                           mlflow_run_id=trainer.mlflow_run_id) as outcome:
            def periodic_eval(it: int) -> dict:
                metrics = {}
                if env.is_main:
                    metrics = evaluate(trainer.model, cfg, meta, device, tta=False, records=val_records, measure_fps=False,
                                       gt_cache=gt_cache)
                    tracker.log_step({k: v for k, v in metrics.items() if isinstance(v, float)}, it)
                dist_utils.barrier(env)
                return metrics

            with stop:  # preemption signals set the flag during training only
                result = trainer.train(train_records, stop, periodic_eval)
            metrics: dict[str, Any] = {}
            if env.is_main:
                metrics = evaluate(trainer.model, cfg, meta, device, tta=tta, records=val_records, gt_cache=gt_cache)
                metrics["perf/train_peak_mem_mb"] = result.train_peak_mem_mb
                metrics["perf/train_peak_mem_protocol"] = {
                    "device": str(device), "measure": result.train_mem_protocol,
                    "ims_per_batch_per_process": cfg.solver.ims_per_batch // env.world_size,
                    "images_per_pass": min(cfg.solver.micro_batch or cfg.solver.ims_per_batch,
                                           cfg.solver.ims_per_batch // env.world_size),
                    "crop_size": list(cfg.data.crop_size or []), "amp": cfg.solver.amp}
                metrics["train/iterations"] = result.iteration
                write_json(output_dir / METRICS_FILE, metrics)
                tracker.log_final(metrics, result.iteration)
                tracker.log_artifacts([output_dir / CONFIG_FILE, output_dir / METRICS_FILE, output_dir / TRAIN_LOG])
                tracker.log_artifacts([trainer.ckpt_dir / "final.pt"], artifact_path="checkpoints")
                outcome.finish(iteration=result.iteration)
            dist_utils.barrier(env)
            return dist_utils.broadcast_object(metrics, env)
    except Preempted:
        # Bookkeeping is done (status interrupted, tracking run KILLED): hand the signal to the handler that
        # was there before ours (e.g. submitit's checkpoint_and_try_requeue, which requeues the job and exits).
        stop.chain_previous()
        raise


def _restart_note(ckpt_dir: Path, output_dir: Path) -> str | None:
    """The line announcing a start from iteration 0 over an earlier attempt's files (None for a fresh folder)."""
    found = sorted(p.name for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    log_path = output_dir / TRAIN_LOG
    if found:
        return (f"{output_dir}: starting over from iteration 0: no checkpoint in {ckpt_dir} verifies "
                f"({', '.join(found)} fail their sha256 check or do not load); they and {TRAIN_LOG} will be overwritten")
    if log_path.is_file() and log_path.stat().st_size:
        return f"{output_dir}: starting over from iteration 0: {TRAIN_LOG} exists but no checkpoint does"
    return None


def default_checkpoint(output_dir: str | os.PathLike) -> Path:
    """`final.pt` when it verifies, else the newest verified of `last.pt` / `prev.pt`."""
    d = ckpt.checkpoint_dir(output_dir)
    ckpt.require_sidecars([d / "final.pt", d / "last.pt", d / "prev.pt"])
    for name in ("final.pt", "last.pt", "prev.pt"):
        if ckpt.verify(d / name):
            return d / name
    raise CheckpointError(f"no verified checkpoint in {d} (looked for final.pt, last.pt, prev.pt)")


def evaluate_cell(config: RunConfig, *, checkpoint: str | os.PathLike | None = None, tta: bool | None = None,
                  output: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate a trained checkpoint with `config.test` settings; returns (and writes) the metrics.

    - `checkpoint`: default `default_checkpoint(config.run.output_dir)`. For an evaluation-only variant
      (other `test:` settings, own output_dir) pass the training run's `checkpoints/final.pt`; the
      training keys of its config must equal `config`'s (test/run keys may differ).
    - Writes `output` (default `<output_dir>/metrics.json`) atomically; with the default output also
      `config.yaml` and `status.json`. Logged to MLflow (the folder's run if it has one, else a new run).
    """
    if output is None:
        check_run_folder(config.run.output_dir)  # metrics/config/status go there: never into the user's files
    # Only the split it reads: an evaluation-only variant must stay cheap (its training cell checked both).
    meta, cfg, _train, val_records = check_data(config, validate=("val",))
    output_dir = Path(cfg.run.output_dir)
    path = Path(checkpoint) if checkpoint else default_checkpoint(output_dir)
    digest = ckpt.digest_path(path)
    if checkpoint is None:
        ckpt.require_sidecars([path])
    if digest.exists() and not ckpt.verify(path):
        raise CheckpointError(f"{path} does not match its {digest.name}: truncated or corrupt")
    state = None
    if cfg.model.weights is None and not path.is_dir() and path.suffix.lower() != ".pkl":
        state = ckpt.load_file(path)
    if state is None or "released" in state:
        # HF folder / official .pkl / converted .pt / `model.weights`: its model options must equal the config's
        state = released.state_for_config(path, cfg.model.build_kwargs(meta.num_classes), cfg.run.tags,
                                          dataset_classes=meta.num_classes)
    else:
        ckpt.check_config(state, cfg.to_dict(), path)
    env = dist_utils.DistEnv()
    device = dist_utils.select_device(cfg.run.device, env)
    configure_determinism(cfg, device)
    model = build_model(**cfg.model.build_kwargs(meta.num_classes)).to(device)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: does not fit this model ({exc})") from exc
    out_path = Path(output) if output else output_dir / METRICS_FILE
    own_folder = output is None
    tracker = Tracker(cfg.run.tracking_uri, cfg.run.experiment, disabled=not cfg.run.tracking)
    run_id_file = output_dir / RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    tags = dict(_tags(cfg), evaluated_checkpoint=str(path.resolve()))
    with run_lifecycle(tracker, output_dir, write=own_folder, info=run_info(tracker),
                       mlflow_run_id=run_id) as outcome:
        run_id = outcome.mlflow_run_id = tracker.start(cfg.to_dict(), tags, run_id=run_id,
                                                       run_name=cfg.run.run_name or output_dir.name,
                                                       source_name="pipeline.engine.evaluate_cell")
        _log_datasets(tracker, cfg, ("val",))
        if own_folder:
            output_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, output_dir / CONFIG_FILE)
            if run_id:
                atomic_write_text(run_id_file, run_id + "\n")
            write_status(output_dir, "running", mlflow_run_id=run_id, **outcome.info)
        metrics = evaluate(model, cfg, meta, device, tta=tta, records=val_records)
        metrics["train/iterations"] = int(state.get("iteration", 0))
        if "released" in state:  # tables mark these rows apart from trained ones
            metrics["provenance"] = released.PROVENANCE
            metrics["released"] = state["released"]
        write_json(out_path, metrics)
        tracker.log_final(metrics, int(state.get("iteration", 0)))
        tracker.log_artifacts([out_path] + ([output_dir / CONFIG_FILE] if own_folder else []))
        outcome.finish(checkpoint=str(path))
        return metrics
