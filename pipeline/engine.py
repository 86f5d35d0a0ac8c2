"""Training engine and the `run_cell` entry point: train (resuming after preemption), evaluate, track, write the run folder.

`run_cell(config)` is what the study layer calls for one grid cell. The training loop follows the
official recipe (FACTS A.0, C): AdamW with per-parameter groups, per-iteration poly / multi-step
schedule, full-model gradient clipping at 0.01, fp32, deep supervision through the criterion, total
batch `solver.ims_per_batch` split over the processes (and, with `solver.micro_batch`, over forward passes
whose gradients are accumulated, each normalised like one official GPU), infinite shuffled sampler.

Determinism: the n-th training sample is augmented with `default_rng([seed, n])` (data package), the
sample order depends only on (seed, n) and the torch RNG (dropout, drop path) is re-seeded from
(seed, iteration, rank) at every iteration. Together with checkpoints of the full optimiser state, an
interrupted and resumed CPU run ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskformer_core.errors import CheckpointError, DataError
from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline import released
from pipeline.cluster import owner_info
from pipeline.config import RunConfig, atomic_write_text, dump_config, resolve_defaults
from pipeline.errors import TrainingDiverged, UserError
from pipeline.tracking import Tracker, resolve_tracking_uri

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again" — a requeued job resumes from checkpoints/last.pt
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def preempt_signals() -> tuple[int, ...]:
    """SIGTERM, SIGUSR1 and the signal submitit is configured with (`SUBMITIT_PREEMPT_SIGNAL`, USR2 by
    default: sbatch `--signal=USR2@<executor.slurm.signal_delay_s>` before a time limit or preemption).

    The engine saves `last.pt` at the next iteration boundary, then hands the signal to submitit's own
    handler, which requeues the job (pipeline.executor.CellJob.checkpoint).
    """
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    extra = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", signal.SIGUSR2)
    return tuple(dict.fromkeys(PREEMPT_SIGNALS + (extra,)))
STATUS_FILE, METRICS_FILE, TRAIN_LOG, RUN_ID_FILE, CONFIG_FILE = (
    "status.json", "metrics.json", "train_log.jsonl", "mlflow_run_id", "config.yaml")


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 after saving `last.pt`; run again to continue (exit code 75)."""

    def __init__(self, iteration: int, signum: int | None, checkpoint: Path | None):
        self.iteration, self.signum, self.checkpoint = iteration, signum, checkpoint
        name = signal.Signals(signum).name if signum else "stop request"
        super().__init__(f"{name} received: stopped after iteration {iteration}, state saved to {checkpoint}")


class NonFiniteLoss(TrainingDiverged, FloatingPointError):
    """The total loss became NaN/Inf; the message names the iteration and the last good checkpoint.

    A `pipeline.errors.TrainingDiverged` (a UserError: the CLI prints `error: ...` and exits 2, no
    traceback); still a FloatingPointError for callers that catch that.
    """


# ----------------------------------------------------------------------------------------- helpers


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far and how it was measured (CUDA max_memory_allocated, else process peak RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "resource.getrusage(RUSAGE_SELF).ru_maxrss (process peak RSS)"


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_status(output_dir: Path, status: str, **extra: Any) -> None:
    """`status.json`: {"status": running|done|failed|interrupted, "time", ...extra}.

    The engine's extras: `reason`, `iteration`, `mlflow_run_id`, and from `run_info` `git_commit` and
    `tracking_uri` (the resolved MLflow store the run logs to; null with tracking off), so that status
    and report link a folder to its MLflow run without re-resolving the URI.
    """
    if status == "running":  # who runs it: `status` checks this process / SLURM job is alive (pipeline.status)
        extra = {**owner_info(), **extra}  # pipeline.cluster.owner_info: the writer lock records the same
    write_json_atomic(output_dir / STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def run_info(tracker: Tracker) -> dict[str, Any]:
    """`git_commit` and `tracking_uri` (None when tracking is off) for status.json."""
    info = {"git_commit": ckpt.git_commit(), "tracking_uri": None if tracker.disabled else tracker.uri}
    if os.environ.get("MASKFORMER_CODE_SNAPSHOT"):
        info["code_snapshot"] = os.environ["MASKFORMER_CODE_SNAPSHOT"]
    return info


def read_status(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(output_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StopFlag:
    """Set by SIGTERM/SIGUSR1/submitit's signal (USR2); the loop checks it at iteration boundaries. Restores old handlers on exit."""

    def __init__(self, signals: Iterable[int] | None = None):
        self.signals = tuple(preempt_signals() if signals is None else signals)
        self.signum: int | None = None
        self.requested = False
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.requested, self.signum = True, signum

    def request(self, signum: int | None = None) -> None:
        self.requested, self.signum = True, signum

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self.previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)

    def chain_previous(self) -> None:
        """Call the handler that was installed before ours (e.g. submitit's requeue handler) for the signal."""
        handler = self.previous.get(self.signum) if self.signum else None
        if callable(handler):
            handler(self.signum, None)


def configure_determinism(cfg: RunConfig, device: torch.device) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic and device.type == "cuda":
        # CPU kernels used here are already deterministic (the resume test checks bit-identity), and the
        # flag costs a ~4 s torch._dynamo import per process, so it is only switched on for CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


# ----------------------------------------------------------------------------------------- data


def per_process_batch(total: int, world_size: int) -> int:
    """SOLVER.IMS_PER_BATCH is the total over processes (A.0); it must divide evenly."""
    if total % world_size:
        raise UserError(f"solver.ims_per_batch={total} is not divisible by the number of processes {world_size}")
    return total // world_size


def micro_batch_count(per_process: int, micro_batch: int | None) -> int:
    """Forward passes per iteration on one process: per-process batch / `solver.micro_batch` (1 when None)."""
    if micro_batch is None or micro_batch >= per_process:
        return 1
    if per_process % micro_batch:
        raise UserError(f"solver.micro_batch={micro_batch} does not divide the per-process batch {per_process} "
                        f"(solver.ims_per_batch / processes)")
    return per_process // micro_batch


def step_num_masks(targets: list[dict], passes: int, env: dist_utils.DistEnv, device: torch.device) -> float:
    """The mask-loss normaliser of one official GPU when an iteration runs as `passes` forward passes per
    process: GT masks of the whole step (all processes) / (passes x processes), clamped >= 1 (official criterion.py:
    num_masks = masks all-reduced / world size). Each pass's loss is then divided by `passes`, so the
    summed gradient equals the official mean over GPUs."""
    num = torch.tensor([float(sum(len(t["labels"]) for t in targets if "labels" in t))], device=device)
    if env.distributed:
        torch.distributed.all_reduce(num)
    return max(float(num.item()) / (passes * env.world_size), 1.0)


def build_train_loader(cfg: RunConfig, meta, records: list[dict], env: dist_utils.DistEnv, start_iter: int):
    """Endless iterator of per-process batches (lists of mapper dicts), starting after `start_iter` iterations."""
    from maskformer_core.data.mappers import build_mapper
    from maskformer_core.data.datasets import MapDataset, collate_list
    from maskformer_core.data.sampler import TrainingSampler

    d = cfg.data
    mapper = build_mapper(meta, is_train=True, crop_size=d.crop_size, short_sizes=d.short_sizes,
                          max_size=d.max_size, size_divisibility=d.size_divisibility, color_aug=d.color_aug)
    batch = per_process_batch(cfg.solver.ims_per_batch, env.world_size)
    sampler = TrainingSampler(len(records), seed=cfg.run.seed, shuffle=True, rank=env.rank,
                              world_size=env.world_size, start=start_iter * batch)
    dataset = MapDataset(records, mapper, seed=cfg.run.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=sampler, collate_fn=collate_list, num_workers=d.num_workers,
        persistent_workers=False, drop_last=True,
        multiprocessing_context="fork" if d.num_workers > 0 and os.name == "posix" else None)
    return loader, sampler, batch


def prepare_batch(batch: list[dict], model: nn.Module, device: torch.device, ignore_label: int):
    """Mapper dicts -> (images [B,3,Hp,Wp] normalised, targets with masks zero-padded to (Hp, Wp) (C))."""
    images, _ = model.preprocess([b["image"].to(device, non_blocking=True) for b in batch])
    hp, wp = images.shape[-2:]
    targets = []
    for b in batch:
        t = dict(b.get("targets") or {})
        if "masks" in t:
            m = t["masks"].to(device)
            if m.shape[-2:] != (hp, wp):
                padded = torch.zeros((m.shape[0], hp, wp), dtype=m.dtype, device=device)
                padded[:, : m.shape[-2], : m.shape[-1]] = m
                m = padded
            t["masks"] = m
            t["labels"] = t["labels"].to(device)
        if "sem_seg" in b:
            s = b["sem_seg"].to(device)
            if s.shape[-2:] != (hp, wp):
                padded = torch.full((hp, wp), ignore_label, dtype=s.dtype, device=device)
                padded[: s.shape[-2], : s.shape[-1]] = s
                s = padded
            t["sem_seg"] = s
        targets.append(t)
    return images, targets


# ----------------------------------------------------------------------------------------- model


def build_components(cfg: RunConfig, meta, device: torch.device):
    """Model, criterion (maskformer_core), optimizer and scheduler (pipeline.solver) for a resolved config."""
    from maskformer_core.criterion import build_criterion
    from maskformer_core.models import build_model

    from pipeline.solver import build_optimizer, build_scheduler

    kwargs = cfg.model.build_kwargs(meta.num_classes)
    model = build_model(**kwargs).to(device)
    criterion = build_criterion(
        cfg.model.arch, kwargs["num_classes"], matching=cfg.loss.core_matching, ignore_label=meta.ignore_label,
        deep_supervision=cfg.model.deep_supervision, dec_layers=cfg.model.dec_layers,
        num_queries=kwargs["num_queries"], no_object_weight=cfg.loss.no_object_weight,
        mask_weight=cfg.loss.mask_weight, dice_weight=cfg.loss.dice_weight).to(device)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)
    return model, criterion, optimizer, scheduler


def _all_finite(outputs: Any) -> bool:
    """True when every tensor in a (nested) model output is finite."""
    if isinstance(outputs, torch.Tensor):
        return bool(torch.isfinite(outputs).all())
    if isinstance(outputs, dict):
        return all(_all_finite(v) for v in outputs.values())
    if isinstance(outputs, (list, tuple)):
        return all(_all_finite(v) for v in outputs)
    return True


def total_loss(loss_dict: dict[str, torch.Tensor], weight_dict: dict[str, float]) -> torch.Tensor:
    """Σ weight·loss over the terms with a weight (detectron2 sums the weighted dict, C)."""
    terms = [loss_dict[k] * weight_dict[k] for k in sorted(loss_dict) if k in weight_dict]
    if not terms:
        raise ValueError(f"criterion returned no weighted loss; keys {sorted(loss_dict)}")
    return torch.stack(terms).sum()


# ----------------------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainResult:
    iteration: int
    final_checkpoint: Path | None
    train_peak_mem_mb: float
    train_mem_protocol: str
    history: list[dict]


class Trainer:
    """Runs iterations [start, max_iter) of one resolved config on one process of the job."""

    def __init__(self, cfg: RunConfig, meta, env: dist_utils.DistEnv, device: torch.device,
                 tracker: Tracker, output_dir: Path, hooks: Iterable[Callable[[int], None]] = ()):
        self.cfg, self.meta, self.env, self.device = cfg, meta, env, device
        self.tracker, self.output_dir = tracker, output_dir
        self.ckpt_dir = ckpt.checkpoint_dir(output_dir)
        self.hooks = list(hooks)
        self.model, self.criterion, self.optimizer, self.scheduler = build_components(cfg, meta, device)
        self.start_iter = 0
        # A.0: training is fp32 (AMP off); with solver.amp on CUDA, fp16 autocast + loss scaling.
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.solver.amp and device.type == "cuda")
        self.ddp: nn.Module = self.model
        self.mlflow_run_id: str | None = None
        self.last_good: Path | None = None

    # -- state
    def state_dict(self, iteration: int, sampler_position: int) -> dict[str, Any]:
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": int(iteration),
            "rng": ckpt.rng_state(),
            "sampler": {"seed": int(self.cfg.run.seed), "position": int(sampler_position)},
            "config": self.cfg.to_dict(),
            "git_commit": ckpt.git_commit(),
            "mlflow_run_id": self.mlflow_run_id or "",
            "world_size": int(self.env.world_size),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
        }

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        ckpt.check_config(state, self.cfg.to_dict(), path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: does not fit this model ({exc})") from exc
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.start_iter = int(state["iteration"])
        self.mlflow_run_id = state.get("mlflow_run_id") or None
        self.last_good = path

    def save(self, iteration: int, batch: int, name: str = "last") -> Path | None:
        path = None
        if self.env.is_main:
            state = self.state_dict(iteration, iteration * batch)
            path = ckpt.save_checkpoint(state, self.ckpt_dir, name)
            if name == "last":
                self.last_good = path
        dist_utils.barrier(self.env)
        return path

    # -- loop
    def train(self, records: list[dict], stop: StopFlag, evaluate_fn: Callable[[int], dict] | None = None) -> TrainResult:
        cfg, solver, device = self.cfg, self.cfg.solver, self.device
        if self.env.distributed:
            ids = [self.device.index] if device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        loader, _sampler, batch = build_train_loader(cfg, self.meta, records, self.env, self.start_iter)
        passes = micro_batch_count(batch, solver.micro_batch)
        weight_dict = self.criterion.weight_dict
        params = [p for p in self.model.parameters() if p.requires_grad]
        history: list[dict] = []
        log_path = self.output_dir / TRAIN_LOG
        if self.env.is_main:
            self._truncate_log(log_path, self.start_iter)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.model.train()
        it = self.start_iter
        data_iter = iter(loader) if it < solver.max_iter else None
        t_last = time.perf_counter()
        from pipeline.evaluation import progress_bar

        # rank 0 only; off on non-terminals (see progress_bar)
        with progress_bar(solver.max_iter, f"train {self.output_dir.name}", initial=it,
                          enabled=self.env.is_main) as bar:
            while it < solver.max_iter:
                torch.manual_seed(_mix_seed(cfg.run.seed, it, self.env.rank))  # dropout/drop-path keyed by iteration
                items = next(data_iter)
                self.optimizer.zero_grad(set_to_none=True)
                # solver.micro_batch: several forward passes per iteration, each one official GPU's batch,
                # gradients accumulated (COCO panoptic: 1 image per pass, never padded, as on 64 GPUs).
                chunks = [items[i:i + len(items) // passes] for i in range(0, len(items), len(items) // passes)]
                num_masks = None
                if passes > 1:
                    num_masks = step_num_masks([b.get("targets") or {} for b in items], passes, self.env, device)
                value, parts = 0.0, []
                for ci, chunk in enumerate(chunks):
                    images, targets = prepare_batch(chunk, self.model, device, self.meta.ignore_label)
                    last = ci == len(chunks) - 1
                    sync = contextlib.nullcontext() if last or not self.env.distributed else self.ddp.no_sync()
                    with sync:
                        with torch.autocast(device.type, enabled=solver.amp):
                            outputs = self.ddp(images)
                            try:
                                loss_dict = self.criterion(outputs, targets, num_masks=num_masks)
                                loss = total_loss(loss_dict, weight_dict) / len(chunks)
                                part = float(loss.detach())
                            except ValueError:
                                # The matcher refuses NaN costs; with non-finite predictions that is a diverged loss.
                                if _all_finite(outputs):
                                    raise
                                loss, part = None, float("nan")
                        value += part
                        # every rank learns of a non-finite loss before any backward (DDP syncs in backward)
                        stop_flag, bad = dist_utils.all_reduce_max(
                            [1.0 if stop.requested else 0.0, 0.0 if math.isfinite(part) else 1.0], self.env)
                        if bad:
                            where = self.last_good or "none written yet"
                            raise NonFiniteLoss(
                                f"loss became {value if not math.isfinite(value) else 'non-finite on another rank'} at "
                                f"iteration {it} (0-based; {it} iterations done); stopped without saving, last good "
                                f"checkpoint kept: {where}", iteration=it, checkpoint=self.last_good)
                        self.scaler.scale(loss).backward()
                    if len(chunks) > 1:
                        parts.append({k: v.detach() / len(chunks) for k, v in loss_dict.items()})
                if parts:  # the step's loss terms: mean over its forward passes
                    loss_dict = {k: sum(p[k] for p in parts) for k in parts[0]}
                    loss = torch.tensor(value, device=device)
                if solver.clip_type == "full_model" and solver.clip_value > 0:
                    from pipeline.solver import clip_full_model

                    self.scaler.unscale_(self.optimizer)
                    clip_full_model(params, solver.clip_value)  # A.0 CLIP_VALUE 0.01
                self.scaler.step(self.optimizer)
                self.scaler.update()
                lr = max(self.scheduler.get_last_lr())
                self.scheduler.step()
                it += 1
                bar.update(1)
                if it % cfg.run.log_period == 0 or it == solver.max_iter:
                    entry = self._log_entry(it, loss, loss_dict, lr, time.perf_counter() - t_last)
                    t_last = time.perf_counter()
                    history.append(entry)
                    bar.set_postfix(loss=f"{entry['train/total_loss']:.4g}", lr=f"{lr:.3g}", refresh=False)
                    if self.env.is_main:
                        with open(log_path, "a") as fh:
                            fh.write(json.dumps(entry, sort_keys=True) + "\n")
                        self.tracker.log_step({k: v for k, v in entry.items() if k.startswith("train/")}, it)
                for hook in self.hooks:
                    hook(it)
                stop_now = stop_flag or (stop.requested and not self.env.distributed)
                if stop_now or (cfg.run.checkpoint_period and it % cfg.run.checkpoint_period == 0) or it == solver.max_iter:
                    self.tracker.flush()
                    path = self.save(it, batch)
                    if stop_now:
                        raise Preempted(it, stop.signum, path)
                if evaluate_fn is not None and cfg.run.eval_period and it % cfg.run.eval_period == 0 and it < solver.max_iter:
                    evaluate_fn(it)
                    self.model.train()
        mem, how = peak_memory_mb(device)
        final = None
        if self.env.is_main:
            final = self.ckpt_dir / "final.pt"
            if self.start_iter < solver.max_iter or not ckpt.verify(final):
                final = ckpt.save_checkpoint(self.state_dict(it, it * batch), self.ckpt_dir, "final")
        dist_utils.barrier(self.env)
        return TrainResult(it, final, mem, how, history)

    def _log_entry(self, it: int, loss: torch.Tensor, loss_dict: dict[str, torch.Tensor], lr: float, seconds: float) -> dict:
        names = sorted(loss_dict)
        values = torch.stack([loss.detach().float()] + [loss_dict[k].detach().float() for k in names])
        if self.env.distributed:
            torch.distributed.all_reduce(values)
            values /= self.env.world_size
        vals = values.tolist()
        entry = {"iter": it, "train/total_loss": vals[0], "train/lr": lr, "time_s": seconds}
        entry.update({f"train/{k}": v for k, v in zip(names, vals[1:])})
        return entry

    @staticmethod
    def _truncate_log(path: Path, start_iter: int) -> None:
        """Drop log lines past the checkpoint we resume from (they will be produced again, identically)."""
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) <= start_iter:
                    keep.append(line)
            except ValueError:
                continue
        atomic_write_text(path, "".join(x + "\n" for x in keep))


# ----------------------------------------------------------------------------------------- run_cell


def check_data(cfg: RunConfig, validate: Iterable[str] = ()):
    """Metadata + train/val records, or a DataError naming the missing dataset, before anything starts.

    `validate`: which of ("train", "val") to pass through `maskformer_core.data.validate` first (full
    image decode, label range, image/label sizes, panoptic PNG/JSON agreement); its DataError names the
    file. Cost: one decode of every image of the split (about a second on the smoke twins; minutes on a
    full ADE20K/COCO train split, still small next to any real training run).
    """
    from maskformer_core.data.datasets import load_split
    from maskformer_core.data.metadata import get_metadata
    from maskformer_core.data.validate import validate as validate_split

    root = Path(cfg.data.root)
    if not root.exists():
        raise DataError(f"dataset {cfg.data.dataset!r} not found: data.root {root} does not exist "
                        f"(prepare it with `python -m pipeline data ...` first)")
    meta = get_metadata(cfg.data.dataset, root)
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
    # `group` pools the seeds of a row (config hash without the seed); the study adds `table`, `row`,
    # `rows`, `study_run` and `mlflow.parentRunId` through run.tags (pipeline.study.cell_config).
    tags = {"git_commit": ckpt.git_commit(), "seed": str(cfg.run.seed), "dataset": cfg.data.dataset,
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
    """The cell's dataset and its version (`run.tags.data_version`) as MLflow inputs, one per split read."""
    version = cfg.run.tags.get("data_version") or "none"
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
            from pipeline.tracking import ensure_store

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
    from pipeline.evaluation import evaluate

    # Every rank validates before the process group exists, so all ranks fail alike (no rank left waiting).
    meta, cfg, train_records, val_records = check_data(config, validate=validate)
    output_dir = Path(cfg.run.output_dir)
    device = dist_utils.select_device(cfg.run.device, env)
    configure_determinism(cfg, device)
    dist_utils.init(env, device)
    from pipeline.cluster import WriterLock

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
        torch.manual_seed(cfg.run.seed)  # model init (A.0 SEED -1 is random; we fix it per cell)
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
                                   val_records, tta, evaluate)
    finally:
        lock.release()
        dist_utils.cleanup()


def _train_and_evaluate(cfg, meta, env, device, tracker, trainer, output_dir, train_records, val_records, tta, evaluate):
    status = "FAILED"
    stop = StopFlag()
    info = run_info(tracker) if env.is_main else {}
    try:
        with stop:
            def periodic_eval(it: int) -> dict:
                metrics = {}
                if env.is_main:
                    metrics = evaluate(trainer.model, cfg, meta, device, tta=False, records=val_records, measure_fps=False)
                    tracker.log_step({k: v for k, v in metrics.items() if isinstance(v, float)}, it)
                dist_utils.barrier(env)
                return metrics

            result = trainer.train(train_records, stop, periodic_eval)
        metrics: dict[str, Any] = {}
        if env.is_main:
            metrics = evaluate(trainer.model, cfg, meta, device, tta=tta, records=val_records)
            metrics["perf/train_peak_mem_mb"] = result.train_peak_mem_mb
            metrics["perf/train_peak_mem_protocol"] = {
                "device": str(device), "measure": result.train_mem_protocol,
                "ims_per_batch_per_process": cfg.solver.ims_per_batch // env.world_size,
                "images_per_pass": min(cfg.solver.micro_batch or cfg.solver.ims_per_batch,
                                       cfg.solver.ims_per_batch // env.world_size),
                "crop_size": list(cfg.data.crop_size or []), "amp": cfg.solver.amp}
            metrics["train/iterations"] = result.iteration
            write_json_atomic(output_dir / METRICS_FILE, metrics)
            tracker.log_final(metrics, result.iteration)
            tracker.log_artifacts([output_dir / CONFIG_FILE, output_dir / METRICS_FILE, output_dir / TRAIN_LOG])
            tracker.log_artifacts([trainer.ckpt_dir / "final.pt"], artifact_path="checkpoints")
            write_status(output_dir, "done", iteration=result.iteration, mlflow_run_id=trainer.mlflow_run_id, **info)
        dist_utils.barrier(env)
        metrics = dist_utils.broadcast_object(metrics, env)
        status = "FINISHED"
        return metrics
    except Preempted as exc:
        status = "KILLED"
        if env.is_main:
            write_status(output_dir, "interrupted", iteration=exc.iteration, reason=str(exc),
                         mlflow_run_id=trainer.mlflow_run_id, **info)
        with contextlib.suppress(Exception):
            tracker.end(status)
        status = None  # closed
        # Bookkeeping is done: hand the signal to the handler that was there before ours (e.g. submitit's
        # checkpoint_and_try_requeue, which requeues the job and exits).
        stop.chain_previous()
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        if env.is_main:
            write_status(output_dir, "interrupted", reason="KeyboardInterrupt", mlflow_run_id=trainer.mlflow_run_id,
                         **info)
        raise
    except BaseException as exc:
        if env.is_main:
            write_status(output_dir, "failed", reason=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=20), mlflow_run_id=trainer.mlflow_run_id, **info)
        raise
    finally:
        if status is not None:
            with contextlib.suppress(Exception):
                tracker.end(status)


# What marks a folder as a run folder of this pipeline (the engine's files, or the study's for the cell).
RUN_FOLDER_MARKERS = (STATUS_FILE, CONFIG_FILE, TRAIN_LOG, ckpt.CKPT_DIR, "cell.json", "failure.json", "logs")


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
                        f"{ckpt.CKPT_DIR}/); refusing to write into it; choose another --output-dir")


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
    from maskformer_core.models import build_model

    from pipeline.evaluation import evaluate

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
    info = run_info(tracker)
    status = "FAILED"
    try:
        run_id = tracker.start(cfg.to_dict(), tags, run_id=run_id, run_name=cfg.run.run_name or output_dir.name,
                               source_name="pipeline.engine.evaluate_cell")
        _log_datasets(tracker, cfg, ("val",))
        if own_folder:
            output_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, output_dir / CONFIG_FILE)
            if run_id:
                atomic_write_text(run_id_file, run_id + "\n")
            write_status(output_dir, "running", mlflow_run_id=run_id, **info)
        metrics = evaluate(model, cfg, meta, device, tta=tta, records=val_records)
        metrics["train/iterations"] = int(state.get("iteration", 0))
        if "released" in state:  # tables mark these rows apart from trained ones
            metrics["provenance"] = released.PROVENANCE
            metrics["released"] = state["released"]
        write_json_atomic(out_path, metrics)
        tracker.log_final(metrics, int(state.get("iteration", 0)))
        tracker.log_artifacts([out_path] + ([output_dir / CONFIG_FILE] if own_folder else []))
        if own_folder:
            write_status(output_dir, "done", checkpoint=str(path), mlflow_run_id=run_id, **info)
        status = "FINISHED"
        return metrics
    except BaseException as exc:
        if own_folder and output_dir.exists():
            write_status(output_dir, "failed", reason=f"{type(exc).__name__}: {exc}", mlflow_run_id=run_id, **info)
        if isinstance(exc, KeyboardInterrupt):
            status = "KILLED"
        raise
    finally:
        if status is not None:
            with contextlib.suppress(Exception):
                tracker.end(status)
