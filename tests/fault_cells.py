"""Cell functions for the study-level fault tests (injected through `study.cell_fn`).

`slow_cell` is the orchestration stand-in `tests.study_cells.config_cell` (numbers computed from the
config, the engine's run-folder contract) preceded by a pause of FAULT_CELL_SLEEP seconds, so a
`dvc repro` can be interrupted while cells are in flight. Every call appends the cell's folder name
to the file named by FAULT_CALLS_LOG, so a test can count how often each cell really ran.

A cell whose folder name contains FAULT_BLOCK waits until the file FAULT_RELEASE exists (at most
BLOCK_LIMIT_S, then it fails): a test can then interrupt a study that provably has an unfinished cell.
While it waits it stops on SIGTERM as the engine does (status `interrupted`, an exception ends the job;
submitit's own handler only logs SIGTERM).
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path

from tests.study_cells import config_cell

BLOCK_LIMIT_S = 600.0


def slow_cell(config) -> dict:
    out = Path(config.run.output_dir)
    block = os.environ.get("FAULT_BLOCK")
    blocked = bool(block) and block in out.name
    if blocked:
        # Installed before the call is logged: a test that sees the call may stop the cell at once.
        def stop(signum, frame):
            out.mkdir(parents=True, exist_ok=True)
            (out / "status.json").write_text(json.dumps({"status": "interrupted", "reason": "SIGTERM while blocked"}))
            raise RuntimeError("blocked cell stopped by SIGTERM")

        signal.signal(signal.SIGTERM, stop)
    log = os.environ.get("FAULT_CALLS_LOG")
    if log:
        with open(log, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(out.name + "\n")
    time.sleep(float(os.environ.get("FAULT_CELL_SLEEP", "0")))
    if blocked:
        release = Path(os.environ["FAULT_RELEASE"])
        deadline = time.monotonic() + BLOCK_LIMIT_S
        while not release.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"blocked cell never released ({release} missing after {BLOCK_LIMIT_S} s)")
            time.sleep(0.1)
    return config_cell(config)
