"""Waiting for a cell's submitit job without outliving a stop request (Ctrl-C / SIGTERM on the study).

submitit's `job.result()` polls the job's state through sacct at most every min(60 s, half the job's
age) (`InfoWatcher.update_if_long_enough`) and, once the job is gone, waits up to
`Job._results_timeout_s` (15 s) for a result file that a cancelled job never writes: after the study
cancelled its SLURM array it took 44 s to return (tests/test_slurm_interrupt.py, before this module).
Here the wait polls `job.done()` itself; once the study's stop is set, every poll forces the sacct
check, and a job without a result file ends the wait at once (`JobStopped`, recorded `interrupted`).
"""
from __future__ import annotations

import time
from typing import Any

POLL_S = 1.0  # submitit's own Job.wait() interval between result-file / state checks
# After the stop request: how long a SLURM job may stay RUNNING/PENDING in sacct (scancel sends SIGTERM at
# once; the cluster's KillWait, 30 s by default, only bounds the SIGKILL) before the study stops waiting.
STOP_GRACE_S = 5.0


class JobStopped(RuntimeError):
    """The study was stopped while this job ran; it has no result (the cell is recorded interrupted)."""


def _parts(job: Any) -> list[Any]:
    return list(getattr(job, "_sub_jobs", None) or [job])  # multi-task jobs: one sub-job per task


def wait_result(job: Any, stop: Any = None) -> Any:
    """`pipeline.executor.job_result(job)`, but returning within seconds of `stop.is_set()`.

    Local jobs (a `_process`) are waited for as before: the stop request sends their process SIGTERM
    and the engine saves `last.pt` before it exits, which the study waits for.
    """
    from pipeline.executor import job_result

    local = getattr(job, "_process", None) is not None
    stopped_at: float | None = None
    while True:
        stopping = stop is not None and stop.is_set()
        if stopping and stopped_at is None:
            stopped_at = time.monotonic()
        if all(part.done(force_check=stopping and not local) for part in _parts(job)):
            break
        if stopping and not local and time.monotonic() - stopped_at > STOP_GRACE_S:
            raise JobStopped(f"job {job.job_id} still listed {STOP_GRACE_S:.0f} s after the stop request")
        time.sleep(POLL_S)
    if stopping and not local and not all(part.paths.result_pickle.exists() for part in _parts(job)):
        raise JobStopped(f"job {job.job_id} ended by the stop request without a result")
    return job_result(job)
