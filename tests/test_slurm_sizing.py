"""SLURM sizing against the real local SLURM: the smoke profile's jobs ask for one CPU and 30 minutes
(not 8 GPUs and 3 days), `study --dry-run` prints that #SBATCH header without submitting, and `status`
shows a cell's job id with SLURM's pending reason and warns when that reason never clears."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._study_helpers import REPO, STAND_IN, write_params
from tests.test_slurm import _require_slurm


def _sacct(job_id: str, env: dict, wait_s: float = 20.0) -> list[str]:
    """sacct's allocation rows of a job. slurmdbd records a finished array task before its request
    details arrive (a row `||COMPLETED`), so wait until every row carries its ReqTRES (bounded)."""
    deadline = time.monotonic() + wait_s
    while True:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "ReqTRES,Timelimit,State"], env=env,
                             capture_output=True, text=True, timeout=30)
        rows = [line for line in out.stdout.splitlines() if line.strip()]
        if (rows and all(row.split("|")[0] for row in rows)) or time.monotonic() > deadline:
            return rows
        time.sleep(1.0)


@pytest.mark.services
def test_smoke_profile_jobs_ask_for_a_cpu_and_minutes(tmp_path, services_env):
    import os

    from flows.study import study

    env = dict(os.environ)
    _require_slurm(env)
    params_path = write_params(tmp_path)  # params.yaml's smoke profile, its `slurm:` resources untouched
    dry = subprocess.run([sys.executable, "-m", "pipeline", "study", "--profile", "smoke", "--executor", "slurm",
                          "--params", str(params_path), "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    for line in ("#SBATCH --cpus-per-task=1", "#SBATCH --time=30", "#SBATCH --mem=2GB", "#SBATCH --gpus-per-node=0"):
        assert line in dry.stdout
    assert "run  ade20k-ppp" in dry.stdout and not (tmp_path / "runs").exists()  # nothing submitted

    state = study(profile="smoke", executor="slurm", cell_fn=STAND_IN, params_path=str(params_path),
                  reports_dir=str(tmp_path / "reports"), return_state=True)
    assert state.is_completed(), state.message
    cells = json.loads((tmp_path / "reports" / "study" / "cells.json").read_text())["cells"]
    job_ids = {json.loads((Path(c["run_dir"]) / "cell.json").read_text())["job_id"] for c in cells}
    assert job_ids
    for job in job_ids:
        rows = _sacct(job.split("_")[0], env)
        assert rows, f"sacct knows no job {job}"
        for row in rows:
            tres, limit, _state = row.split("|")
            assert "cpu=1" in tres and "gres/gpu" not in tres and limit == "00:30:00", row


@pytest.mark.services
def test_status_shows_job_and_warns_about_a_pending_reason_that_never_clears(tmp_path, services_env, run_cli):
    import os

    env = dict(os.environ)
    _require_slurm(env)
    params_path = write_params(tmp_path)
    failed = subprocess.run(["sbatch", "--parsable", "-t", "1", "-c", "1", "-o", str(tmp_path / "a.out"),
                             "--wrap", "exit 1"], env=env, capture_output=True, text=True, timeout=30)
    first = failed.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while not any("FAILED" in r for r in _sacct(first, env)):
        assert time.monotonic() < deadline, _sacct(first, env)
        time.sleep(0.5)
    blocked = subprocess.run(["sbatch", "--parsable", "-t", "1", "-c", "1", "-o", str(tmp_path / "b.out"),
                              f"--dependency=afterok:{first}", "--wrap", "true"], env=env, capture_output=True,
                             text=True, timeout=30)
    job = blocked.stdout.strip().split(";")[0]
    try:
        cell = tmp_path / "runs" / "smoke" / "ade20k-mf-SmokeR18-q100-d6-s0-stuck"
        cell.mkdir(parents=True)
        (cell / "status.json").write_text(json.dumps({"status": "running"}))
        (cell / "cell.json").write_text(json.dumps({"cell_id": cell.name, "job_id": job}))
        deadline = time.monotonic() + 90
        while True:  # the scheduler marks the dependency on its next pass
            out = run_cli("status", "--profile", "smoke", "--params", str(params_path), "--runs-root",
                          str(tmp_path / "runs"), env=env)
            if "DependencyNeverSatisfied" in out.stdout or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert out.returncode == 0, out.stderr
        assert f"job {job} PENDING (DependencyNeverSatisfied)" in out.stdout
        assert f"warning: job {job} ({cell.name}) pends for DependencyNeverSatisfied" in out.stderr
    finally:
        subprocess.run(["scancel", job], env=env, timeout=30)


def test_profile_resources_replace_executor_slurm_and_the_environment_wins(tmp_path):
    from pipeline.params import load_params, slurm_resources

    params = load_params(write_params(tmp_path), environ={})
    smoke = slurm_resources(params, "smoke", environ={})
    assert (smoke.gpus_per_node, smoke.cpus_per_task, smoke.mem_gb, smoke.timeout_min) == (0, 1, 2, 30)
    paper = slurm_resources(params, "paper", environ={})
    assert (paper.gpus_per_node, paper.timeout_min) == (8, 4320)  # the official 8 GPUs, 3 days
    cluster = slurm_resources(params, "smoke", environ={"MASKFORMER_SLURM_TIMEOUT_MIN": "60",
                                                        "MASKFORMER_SLURM_GPUS_PER_NODE": "1"})
    assert cluster.timeout_min == params.executor.slurm.timeout_min and cluster.cpus_per_task == 1
    assert cluster.gpus_per_node == params.executor.slurm.gpus_per_node
