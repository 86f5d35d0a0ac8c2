"""Ctrl-C on a study whose cells run on the real SLURM (marked services): the study cancels its jobs and
returns within seconds, not after submitit's sacct polling (up to 60 s between checks) and its wait for
a result file (15 s per job) that a cancelled job never writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._study_helpers import REPO, write_params
from tests.test_slurm import _require_slurm

RETURN_WITHIN_S = 10.0  # after SIGINT: scancel + one forced sacct check + the study's records


def _job_ids(runs: Path) -> list[str]:
    ids = []
    for rec in runs.glob("smoke/*/cell.json"):
        try:
            ids.append(json.loads(rec.read_text())["job_id"])
        except (ValueError, KeyError):
            pass  # being written
    return sorted(ids)


def _states(job_ids: list[str], env: dict) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(j.split("_")[0] for j in job_ids)],
                         env=env, capture_output=True, text=True, timeout=30).stdout
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return {j: states.get(j, "?").split()[0] for j in job_ids}


@pytest.mark.services
def test_ctrl_c_cancels_the_slurm_jobs_and_returns_within_seconds(tmp_path, services_env):
    env = dict(os.environ, CLUSTER_TEST_SLEEP_S="600", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    _require_slurm(env)
    params = write_params(tmp_path, {"table7": slice(0, 2)})  # two training cells (smoke max_concurrent 2), one SLURM array
    log = (tmp_path / "study.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "study", "--profile", "smoke", "--executor", "slurm",
         "--cell-fn", "tests.cluster_cells:slow_stand_in", "--params", str(params), "--reports", str(tmp_path / "reports")],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    ids: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # every cell's job submitted and running on the node
            ids = _job_ids(tmp_path / "runs")
            if len(ids) == 2 and set(_states(ids, env).values()) == {"RUNNING"}:
                break
            assert proc.poll() is None, (tmp_path / "study.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail(f"jobs not running after 180 s: {_states(ids, env) if ids else 'none submitted'}")
        time.sleep(20)  # long enough for submitit's sacct refresh interval to grow (half the job's age)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
        took = time.monotonic() - start
        print(f"study returned {took:.1f} s after SIGINT")  # shown with -s (README "Ctrl-C")
        text = (tmp_path / "study.log").read_text()
        assert rc == 128 + signal.SIGINT, text[-3000:]
        assert took < RETURN_WITHIN_S, f"returned {took:.1f} s after SIGINT\n{text[-3000:]}"
        deadline = time.monotonic() + 30
        while set(states := _states(ids, env)).__len__() and set(states.values()) != {"CANCELLED"}:
            assert time.monotonic() < deadline, states
            time.sleep(1)
        cells = json.loads((tmp_path / "reports" / "study" / "cells.json").read_text())
        assert cells["counts"]["interrupted"] == cells["counts"]["total"], cells["counts"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if ids:  # only the jobs this test submitted
            subprocess.run(["scancel", *[j.split("_")[0] for j in ids]], env=env, capture_output=True, timeout=30)
