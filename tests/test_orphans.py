"""Issue 15, class 5: a study killed with SIGKILL (by hand or by the OOM killer) leaves nothing running.

Through the real CLI (`python -m pipeline study`, local submitit executor, the temporary Prefect API
server it starts): once a cell is in flight the study process alone gets SIGKILL, as the OOM killer
does; its reaper (pipeline/reaper.py) must then stop every process the study had started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.faults, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (the study starts its jobs from worker threads: all tasks are read)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out.update(kids)
            todo.extend(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its (new) parent


def test_sigkilled_study_leaves_no_cell_and_no_prefect_server(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["grid"] = {"table7": dict(raw["grid"]["table7"], cells=raw["grid"]["table7"]["cells"][:1])}
    raw["study"]["cell_fn"] = "tests.fault_cells:slow_cell"  # ignores SIGTERM (submitit bypasses it): SIGKILL after
    raw["study"]["stop_timeout_s"] = 5                         # the grace period, here 5 s
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API_URL"))}
    env.update(PYTHONPATH=str(REPO), FAULT_CALLS_LOG=str(tmp_path / "calls.log"), FAULT_CELL_SLEEP="300")
    study = subprocess.Popen([sys.executable, "-m", "pipeline", "study", "--params", "params.yaml",
                              "--executor", "local", "--max-concurrent", "1"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "calls.log").exists():
            assert study.poll() is None, study.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no cell started"
            time.sleep(0.2)
        time.sleep(2)  # the study registers the job with its reaper right after submitting it
        started = _descendants(study.pid)
        reapers = {p for p in started if b"pipeline.reaper" in Path(f"/proc/{p}/cmdline").read_bytes()}
        names = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:150] for p in started}
        assert len(started - reapers) >= 3, names  # the cell's processes (sh, controller, job) + the Prefect server
        os.kill(study.pid, signal.SIGKILL)  # the study alone, as the OOM killer does
        study.wait(timeout=60)
        deadline = time.monotonic() + 90
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = sorted(p for p in started if _alive(p))
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for p in left]
    finally:
        for p in started | ({study.pid} if study.poll() is None else set()):
            if _alive(p):
                os.kill(p, signal.SIGKILL)
