"""SLURM integration (marked services): smoke cells go through the real local SLURM via the same flow code.

Fails, never skips, when CI is set and SLURM is unreachable (SLURM_CONF from scripts/services.env).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests._study_helpers import STAND_IN, write_params


def _require_slurm(env: dict, wait_s: float = 60.0) -> None:
    """Fail (CI) or skip unless SLURM answers with a usable node. A node still "completing" the jobs an
    earlier test cancelled (tests/test_slurm_interrupt.py) is waited for, up to `wait_s`."""
    ok, state = False, ""
    if shutil.which("sinfo") and env.get("SLURM_CONF"):
        deadline = time.monotonic() + wait_s
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
            state = out.stdout.strip() or out.stderr.strip()
            ok = out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))
            if ok or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    if not ok:
        msg = f"SLURM not reachable (SLURM_CONF={env.get('SLURM_CONF')!r}; sinfo: {state!r})"
        if os.environ.get("CI") or os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(msg + " with CI set")
        pytest.skip(msg)


@pytest.mark.services
def test_smoke_cells_run_as_a_slurm_job_array(tmp_path, services_env):
    from flows.study import study

    _require_slurm(dict(os.environ))
    params_path = write_params(tmp_path)
    # the fake node has no GPUs: ask for none, small memory and short time limits
    raw = params_path.read_text().replace("gpus_per_node: 8", "gpus_per_node: 0").replace("mem_gb: 64", "mem_gb: 1")
    raw = raw.replace("cpus_per_task: 10", "cpus_per_task: 1").replace("timeout_min: 4320", "timeout_min: 10")
    params_path.write_text(raw)
    state = study(profile="smoke", executor="slurm", cell_fn=STAND_IN, params_path=str(params_path),
                  reports_dir=str(tmp_path / "reports"), return_state=True)
    assert state.is_completed(), state.message
    cells = json.loads((tmp_path / "reports" / "study" / "cells.json").read_text())
    assert cells["counts"] == {"total": 3, "done": 3, "failed": 0, "interrupted": 0, "skipped": 0}
    for c in cells["cells"]:
        record = json.loads((tmp_path / "runs" / "smoke" / c["cell_id"] / "cell.json").read_text())
        assert record["job_id"].split("_")[0].isdigit()  # a SLURM job (array task ids look like 12_0)
    training = [c for c in cells["cells"] if c["kind"] == "train"]
    assert all("_" in json.loads((tmp_path / "runs" / "smoke" / c["cell_id"] / "cell.json").read_text())["job_id"]
               for c in training)  # training cells went out as one job array


@pytest.mark.services
def test_deployment_runs_through_the_prefect_cli(tmp_path, services_env):
    """`python -m flows.serve` + `prefect deployment run 'ablations/ablations' --watch` against the live server."""
    params_path = write_params(tmp_path, {"table4": slice(0, 2)})
    env = dict(os.environ, PREFECT_RUNNER_POLL_FREQUENCY="1")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    serve = subprocess.Popen([os.sys.executable, "-m", "flows.serve"], cwd=repo, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        prefect = os.path.join(os.path.dirname(os.sys.executable), "prefect")
        import time

        deadline = time.monotonic() + 120
        while True:  # wait until the deployments are registered; fail (not carry on) after 120 s
            ls = subprocess.run([prefect, "deployment", "ls"], env=env, capture_output=True, text=True, timeout=60)
            if "ablations/ablations" in ls.stdout:
                break
            if serve.poll() is not None:
                pytest.fail("flows.serve exited early")
            if time.monotonic() > deadline:
                pytest.fail(f"deployment ablations/ablations not registered within 120 s:\n{ls.stdout[-2000:]}")
            time.sleep(2)
        params = json.dumps({"profile": "smoke", "cell_fn": STAND_IN, "params_path": str(params_path),
                             "reports_dir": str(tmp_path / "reports")})
        run = subprocess.run([prefect, "deployment", "run", "ablations/ablations", "--params", params, "--watch"],
                             env=env, capture_output=True, text=True, timeout=240, cwd=repo)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        cells = json.loads((tmp_path / "reports" / "study" / "cells.json").read_text())
        assert cells["counts"]["done"] == cells["counts"]["total"] == 2
    finally:
        serve.terminate()  # SIGTERM before the server (INFRA.md)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
