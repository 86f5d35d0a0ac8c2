"""One writer per run folder (pipeline.cluster.WriterLock), also across processes that share no study."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cluster import LOCK_FILE, WriterLock


def test_live_owner_blocks_a_dead_owner_is_cleared_and_a_requeued_job_takes_its_lock_back(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        lock = WriterLock(tmp_path, poll_s=0.1, timeout_s=0.5)
        assert lock.try_acquire()["pid"] == sleeper.pid  # a live writer holds it
        with pytest.raises(TimeoutError, match=str(sleeper.pid)):
            lock.acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with WriterLock(tmp_path, poll_s=0.1, timeout_s=5) as lock:  # its owner is dead now: stale, cleared
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()
    # A requeued SLURM job (same job id, new process) takes its own lock back without waiting.
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "slurm_job_id": "4242"}))
    os.environ["SLURM_JOB_ID"] = "4242"
    try:
        lock = WriterLock(tmp_path, poll_s=0.1, timeout_s=0.5)
        assert lock.try_acquire() is None
        lock.release()
    finally:
        del os.environ["SLURM_JOB_ID"]
    assert not (tmp_path / LOCK_FILE).exists()


def _train(root: str, out: str, barrier) -> None:
    from tests.cluster_cells import recorded_cell
    from tests.test_engine import smoke_config

    cfg = smoke_config(Path(root), Path(out), solver={"max_iter": 6})
    barrier.wait()
    recorded_cell(cfg)


@pytest.mark.slow
def test_two_processes_on_one_cell_train_it_once(twin_root, tmp_path):
    """Two CLI-like runs of the same cell at once: one trains, the other waits and reads its result."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_train, args=(str(twin_root), str(tmp_path / "run"), barrier))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len((tmp_path / "run" / "trained_by.txt").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "done"
    assert not (tmp_path / "run" / LOCK_FILE).exists()
