"""Process-group setup for data-parallel training: torchrun (env://), submitit tasks, or local spawn.

One process per GPU (NCCL) or, on CPU, per requested worker (gloo). `detect()` reads the launcher's
environment: torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT first, then submitit's
`JobEnvironment` (imported lazily, only when SUBMITIT_* variables say we run inside a submitit job).
Only rank 0 writes checkpoints, MLflow entries and metrics.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import zlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"  # none | torchrun | submitit | spawn

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect() -> DistEnv:
    """The launcher's view of this process (single process when nothing is set)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SUBMITIT_EXECUTOR" in env or "SUBMITIT_FOLDER" in env:
        try:
            import submitit  # noqa: PLC0415 - only inside submitit jobs
        except ImportError:
            return DistEnv()
        try:
            job = submitit.JobEnvironment()
        except RuntimeError:  # not actually inside a job
            return DistEnv()
        if job.num_tasks > 1:
            job_id = str(job.job_id).split("_")[0]
            # A per-job port in the dynamic range so concurrent jobs on one node do not collide.
            port = 20000 + (int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())) % 20000
            return DistEnv(
                rank=job.global_rank,
                world_size=job.num_tasks,
                local_rank=job.local_rank,
                master_addr=job.hostnames[0],
                master_port=int(env.get("MASTER_PORT", port)),
                launcher="submitit",
            )
    return DistEnv()


def resolve_master_addr(name: str) -> str:
    """`name` when it resolves; else SLURM's NodeAddr for a node name that is not in DNS (`scontrol show node`).

    submitit's TorchDistributedEnvironment takes the first SLURM host *name* as MASTER_ADDR; on clusters
    whose node names are not resolvable (and on the two-node CI cluster, scripts/cluster2.sh) the node's
    address is what slurm.conf calls NodeAddr.
    """
    try:
        socket.getaddrinfo(name, None)
        return name
    except OSError:
        pass
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "node", name, "-o"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return name
    for field in out.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return name


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA, gloo for CPU) when the job has several processes."""
    if not env.distributed or dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def select_device(requested: str, env: DistEnv) -> torch.device:
    """`auto` picks CUDA when available; each process takes GPU `local_rank`."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is available")
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def all_reduce_max(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise maximum over ranks (used for the stop flags: preemption, non-finite loss)."""
    if not env.distributed or not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank."""
    if not env.distributed or not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(local_rank: int, fn: Callable, world_size: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(*args)


def launch_local(fn: Callable, world_size: int, args: tuple = ()) -> None:
    """Run `fn(*args)` in `world_size` fresh processes on this machine with torchrun-style variables."""
    import torch.multiprocessing as mp

    mp.start_processes(_spawn_entry, args=(fn, world_size, free_port(), args), nprocs=world_size,
                       join=True, start_method="spawn")
