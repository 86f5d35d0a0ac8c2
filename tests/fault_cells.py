"""Cell functions for the study-level fault tests (injected through `study.cell_fn`).

`slow_cell` is the orchestration stand-in `tests.study_cells.config_cell` (numbers computed from the
config, the engine's run-folder contract) preceded by a pause of FAULT_CELL_SLEEP seconds, so a
`dvc repro` can be interrupted while cells are in flight. Every call appends the cell's folder name
to the file named by FAULT_CALLS_LOG, so a test can count how often each cell really ran.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from tests.study_cells import config_cell


def slow_cell(config) -> dict:
    log = os.environ.get("FAULT_CALLS_LOG")
    if log:
        with open(log, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(Path(config.run.output_dir).name + "\n")
    time.sleep(float(os.environ.get("FAULT_CELL_SLEEP", "0")))
    return config_cell(config)
