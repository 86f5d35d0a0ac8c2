"""Cluster facts for the study: SLURM job states (through submitit), node addresses, the address the
nodes reach this host on, and the one-writer lock of a run folder.

- `job_state(job_id, folder)`: submitit's sacct-backed state of a recorded job (`RUNNING`, `PENDING`,
  `COMPLETED`, ..., `UNKNOWN` when SLURM does not know it); `is_live_state` says whether to wait on it.
- `WriterLock(run_dir)`: `<run_dir>/writer.lock` names the process that writes the folder (SLURM job id,
  pid, host). Acquired by hard-linking a complete record into place (atomic, fails if it exists); a
  lock whose owner is dead (SLURM job ended, or pid gone on this host) is stale and cleared with a log
  line; a requeued job (same SLURM job id) takes its own lock back. The engine takes it (rank 0) for
  every training run, so a cell has one writer across concurrent studies, Prefect deployments and CLI
  runs: a second writer waits, then finds the result done.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.config import atomic_write_text
from pipeline.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"
# sacct states of a job that may still run (or be requeued); anything else has ended.
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
                         "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED"})


def is_live_state(state: str) -> bool:
    return state.split()[0].upper() in LIVE_STATES if state else False


def job_state(job_id: str, folder: str | os.PathLike | None = None) -> str:
    """SLURM's state of `job_id` (array tasks as `<array>_<task>`) via submitit's sacct watcher."""
    if shutil.which("sacct") is None:
        return "UNKNOWN"
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    import submitit  # noqa: PLC0415 - only where SLURM is used

    job = submitit.SlurmJob(folder=Path(folder) if folder else Path("."), job_id=str(job_id))
    try:
        return str(job.watcher.get_state(str(job_id), mode="force"))
    except Exception:  # noqa: BLE001 - sacct unreachable: we cannot tell
        return "UNKNOWN"


def slurm_nodes() -> dict[str, str]:
    """{node name: NodeAddr} of the SLURM cluster this host submits to ({} without scontrol)."""
    if shutil.which("scontrol") is None:
        return {}
    try:
        out = subprocess.run(["scontrol", "show", "nodes", "-o"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    nodes = {}
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "NodeName" in fields:
            nodes[fields["NodeName"]] = fields.get("NodeAddr", fields["NodeName"])
    return nodes


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def address_towards(target: str) -> str:
    """This host's source address on the route to `target` (a UDP connect: no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((target, 9))
        return s.getsockname()[0]


def tracking_host(configured: str | None) -> str:
    """The address the study's MLflow server binds: `configured` (an address, or `auto`: this host's
    address towards the first SLURM node), else 127.0.0.1. MASKFORMER_TRACKING_HOST wins over params."""
    value = os.environ.get("MASKFORMER_TRACKING_HOST") or configured
    if not value:
        return "127.0.0.1"
    if value == "auto":
        nodes = slurm_nodes()
        remote = [a for a in nodes.values() if not is_loopback(a)]
        if not remote:
            raise UserError("study.tracking_host is 'auto' but no SLURM node has a non-loopback NodeAddr "
                            "(`scontrol show nodes`): set study.tracking_host to this host's cluster address")
        return address_towards(remote[0])
    return value


# ----------------------------------------------------------------------------------------- writer lock


def owner_info() -> dict[str, Any]:
    """`pid`, `host` and (inside SLURM) `slurm_job_id` (`<array job>_<task>` for array tasks) of this process:
    what the writer lock and a running `status.json` record, so liveness checks read one format."""
    owner: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        owner["slurm_job_id"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    elif os.environ.get("SLURM_JOB_ID"):
        owner["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return owner


def owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the lock's owner may still write: its SLURM job is live, or its pid exists on this host."""
    job_id = owner.get("slurm_job_id")
    if job_id:
        state = job_state(str(job_id))
        if state != "UNKNOWN":
            return is_live_state(state)
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True
    return True  # another host, no SLURM job to ask: assume alive


def _same_owner(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("slurm_job_id") or b.get("slurm_job_id"):
        return a.get("slurm_job_id") == b.get("slurm_job_id")  # a requeued job takes its lock back
    return a.get("pid") == b.get("pid") and a.get("host") == b.get("host")


class WriterLock:
    """`with WriterLock(run_dir):` one writer per run folder (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, *, poll_s: float = 2.0, timeout_s: float | None = None) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.owner = owner_info()
        self.held = False

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written by a writer that died mid-write: no live owner to name
        return data if isinstance(data, dict) else {}

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lock; returns None on success, else the live owner's record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**self.owner, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
        # The record is written to a private file first and hard-linked into place (atomic, fails when the
        # lock exists), so no other process ever reads a lock file that is still empty and takes it for a
        # dead writer's (two writers would then train one cell).
        tmp = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}.{threading.get_ident()}")
        for _ in range(3):
            tmp.write_text(text)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                current = self.read()
                if current is None:
                    continue  # released meanwhile
                if current and _same_owner(current, self.owner):
                    atomic_write_text(self.path, text)
                    self.held = True
                    return None
                if current and owner_alive(current):
                    return current
                log.warning("%s: stale lock of %s (no longer running) cleared", self.path, current or "an unreadable owner")
                self.path.unlink(missing_ok=True)
                continue
            finally:
                tmp.unlink(missing_ok=True)
            self.held = True
            return None
        return self.read() or {}

    def acquire(self) -> None:
        """Wait until the lock is ours (logging the owner once); TimeoutError after `timeout_s`."""
        start, announced = time.monotonic(), False
        while (owner := self.try_acquire()) is not None:
            if not announced:
                log.warning("%s: another writer holds this run folder (%s); waiting for it", self.path, owner)
                announced = True
            if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
                raise TimeoutError(f"{self.path}: still held by {owner} after {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)

    def release(self) -> None:
        if not self.held:
            return
        current = self.read()
        if current and _same_owner(current, self.owner):
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
