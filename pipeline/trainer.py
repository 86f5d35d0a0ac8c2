"""The training loop of one run (`Trainer`): AdamW, LR schedule, clipping, deep supervision, checkpoints, preemption.

The loop follows the official recipe (paper Sec. 4 "Training settings"; facebookresearch/MaskFormer
train_net.py + mask_former/config.py): AdamW with per-parameter groups, per-iteration poly / multi-step
schedule, full-model gradient clipping at 0.01 (SOLVER.CLIP_GRADIENTS), fp32, deep supervision through the
criterion, total batch `solver.ims_per_batch` split over the processes (and, with `solver.micro_batch`,
over forward passes whose gradients are accumulated, each normalised like one official GPU), infinite
shuffled sampler.

Determinism: the n-th training sample is augmented with `default_rng([seed, n])` (data package), the
sample order depends only on (seed, n) and the torch RNG (dropout, drop path) is re-seeded from
(seed, iteration, rank) at every iteration. Together with checkpoints of the full optimiser state, an
interrupted and resumed CPU run ends bit-identical to an uninterrupted one.

The run's lifecycle around the loop (data checks, tracking, status.json, evaluation) is pipeline/engine.py.
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskformer_core.criterion import build_criterion
from maskformer_core.data.datasets import MapDataset, collate_list
from maskformer_core.data.mappers import build_mapper
from maskformer_core.data.sampler import TrainingSampler
from maskformer_core.errors import CheckpointError
from maskformer_core.models import build_model
from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline.config import RunConfig, atomic_write_text
from pipeline.errors import TrainingDiverged, UserError
from pipeline.evaluation import progress_bar
from pipeline.runfolder import TRAIN_LOG, git_commit
from pipeline.solver import build_optimizer, build_scheduler
from pipeline.tracking import Tracker

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
    """SOLVER.IMS_PER_BATCH is the total over processes (detectron2 defaults.py); it must divide evenly."""
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
    """Mapper dicts -> (images [B,3,Hp,Wp] normalised, targets with masks zero-padded to (Hp, Wp))."""
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
    kwargs = cfg.model.build_kwargs(meta.num_classes)
    model = build_model(**kwargs).to(device)
    criterion = build_criterion(
        cfg.model.arch, kwargs["num_classes"], matching=cfg.loss.matching, ignore_label=meta.ignore_label,
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
    """Σ weight·loss over the terms with a weight (detectron2 sums the weighted loss dict, as MaskFormer's train_net.py)."""
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
        # official configs: training is fp32 (SOLVER.AMP.ENABLED False); with solver.amp on CUDA, fp16 autocast + loss scaling.
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
            "git_commit": git_commit(),
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
                    clip_full_model(params, solver.clip_value)  # SOLVER.CLIP_GRADIENTS.CLIP_VALUE 0.01 (official configs)
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
