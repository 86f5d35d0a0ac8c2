"""A watchdog process that stops what a study started when the study dies without stopping it.

A study killed with SIGKILL (by hand, by the OOM killer, or with `dvc` when it runs the stage) cannot
run its own cleanup: its local cell processes and its temporary Prefect API server would keep running
(the server blocks SIGTERM, pipeline's flows/study.py). `Reaper.start()` launches
`python -m pipeline.reaper <study pid> <grace s>` in its own session; the study tells it, over a pipe
only the study holds, which processes to stop and how (`watch`), and says `exit` when it ends normally.
When the pipe closes without `exit` (the kernel closes it when the study dies, however it dies), the
reaper sends each watched process its signal: SIGTERM to the cell processes (they save `last.pt` and
exit 75, `status` then shows them `interrupted`), SIGKILL to the Prefect server; whatever is still
alive after the grace period gets SIGKILL. What it does is written to the study's stderr (if still open)
and to its log file.

The pipe's write end is not inherited by the study's children (Python creates it non-inheritable), so
only the study's own death closes it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_ACTIVE: "Reaper | None" = None  # the reaper of this study process (one study per process)


def children(pid: int) -> list[int]:
    """Child process ids of `pid`, whichever of its threads started them (Linux /proc); [] when unknown."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid` (a snapshot)."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


class Reaper:
    """The study side: `watch(pid, sig)` / `forget(pid)` / `close()`; never raises (best effort)."""

    def __init__(self, process: subprocess.Popen | None) -> None:
        self.process = process

    @classmethod
    def start(cls, grace_s: float = 120.0, log_file: str | os.PathLike | None = None) -> "Reaper":
        """Start the watchdog for this process and make it the active one (see `active()`)."""
        global _ACTIVE
        cmd = [sys.executable, "-m", "pipeline.reaper", str(os.getpid()), str(float(grace_s))]
        if log_file is not None:
            cmd.append(str(log_file))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
                                    start_new_session=True)  # survives a kill of the study's process group
        except OSError:
            proc = None
        _ACTIVE = cls(proc)
        return _ACTIVE

    def _send(self, line: str) -> None:
        if self.process is None or self.process.stdin is None:
            return
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            pass

    def watch(self, pid: int, sig: int = signal.SIGTERM, *, its_children: bool = False, what: str = "") -> None:
        """On the study's death send `sig` to `pid` (or to its children, e.g. submitit's controller)."""
        self._send(f"watch {int(pid)} {int(sig)} {int(its_children)} {what}".rstrip())

    def forget(self, pid: int) -> None:
        self._send(f"forget {int(pid)}")

    def close(self) -> None:
        """The study ends normally: the reaper exits without touching anything."""
        global _ACTIVE
        self._send("exit")
        if self.process is not None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if _ACTIVE is self:
            _ACTIVE = None


def active() -> Reaper | None:
    """The reaper `Reaper.start()` made in this process, or None (flows served by a deployment, tests)."""
    return _ACTIVE


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    if Path("/proc/self/stat").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def main(argv: list[str]) -> int:
    study_pid, grace = int(argv[0]), float(argv[1])
    log_path = Path(argv[2]) if len(argv) > 2 else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the study, not for us
    watched: dict[int, tuple[int, bool, str]] = {}
    for line in sys.stdin:
        parts = line.split(maxsplit=4)
        if not parts:
            continue
        if parts[0] == "exit":
            return 0
        if parts[0] == "watch" and len(parts) >= 4:
            watched[int(parts[1])] = (int(parts[2]), parts[3] == "1", parts[4].strip() if len(parts) > 4 else "")
        elif parts[0] == "forget" and len(parts) >= 2:
            watched.pop(int(parts[1]), None)
    # EOF without "exit": the study died without its cleanup.
    lines = []
    targets: set[int] = set()  # everything that must be gone in the end: the watched trees
    for pid, (sig, kids, what) in watched.items():
        tree = descendants(pid)
        targets.update([pid, *tree])
        for target in (children(pid) or [pid]) if kids else [pid]:
            if alive(target):
                try:
                    os.kill(target, sig)
                except OSError:
                    continue
                lines.append(f"reaper: study {study_pid} died; sent {signal.Signals(sig).name} to {target} {what}".rstrip())
    deadline = time.monotonic() + grace
    while targets and time.monotonic() < deadline:
        targets = {t for t in targets if alive(t)}
        time.sleep(0.5)
    for target in sorted(t for t in targets if alive(t)):
        try:
            os.kill(target, signal.SIGKILL)
            lines.append(f"reaper: {target} still alive after {grace:.0f} s; sent SIGKILL")
        except OSError:
            pass
    _report(lines, log_path)
    return 0


def _report(lines: list[str], log_path: Path | None) -> None:
    """The study's stderr (often gone with it) and, when given, the log file."""
    for line in lines:
        try:
            print(line, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
    if log_path is not None and lines:
        try:
            with open(log_path, "a") as fh:
                fh.write("\n".join(lines) + "\n")
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
