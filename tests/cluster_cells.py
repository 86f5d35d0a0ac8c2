"""Cell functions for the two-node cluster tests (tests/test_cluster2.py): the real engine plus markers.

- `recorded_cell`: `pipeline.engine.run_cell` with a hook that appends `<pid> <host> <SLURM job> <first iteration> <pipeline package folder>` to
  `<output_dir>/trained_by.txt` after the first iteration a process trains (a cell trained twice shows
  two lines); numbers are the engine's own.
- `slow_first_attempt_cell`: the same, sleeping CLUSTER_TEST_SLEEP_S seconds after every iteration while
  no checkpoint has been saved (the test's period is longer than training: only the signal's save
  writes one), so a short time limit expires mid-training; the attempt after the save runs at full
  speed. Sleeping does not change any number the engine computes.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def _record(out: Path):
    done = []

    def hook(it: int) -> None:
        if not done:
            done.append(it)
            with open(out / "trained_by.txt", "a") as fh:
                import pipeline

                fh.write(f"{os.getpid()} {socket.gethostname()} {os.environ.get('SLURM_JOB_ID', '-')} {it} "
                         f"{Path(pipeline.__file__).parent}\n")
    return hook


def recorded_cell(config) -> dict:
    from pipeline.engine import run_cell

    return run_cell(config, hooks=[_record(Path(config.run.output_dir))])


def slow_first_attempt_cell(config) -> dict:
    from pipeline.engine import run_cell

    first = not (Path(config.run.output_dir) / "checkpoints" / "last.pt").exists()
    delay = float(os.environ.get("CLUSTER_TEST_SLEEP_S", "2"))

    def slow(it: int) -> None:
        if first:
            time.sleep(delay)
    return run_cell(config, hooks=[_record(Path(config.run.output_dir)), slow])


def slow_stand_in(config) -> dict:
    """tests.study_cells.config_cell after CLUSTER_TEST_SLEEP_S seconds (a job that outlives its orchestrator)."""
    from tests.study_cells import config_cell

    time.sleep(float(os.environ.get("CLUSTER_TEST_SLEEP_S", "30")))
    return config_cell(config)
