"""Study-level fault injection (issue 7): a failing grid cell is retried, then reported while the study
finishes; `dvc repro` interrupted (SIGINT / SIGTERM to dvc's process group) during the study stage and run
again completes without redoing finished cells.

Runs in a clone of the repository with the real DVC pipeline, the Prefect study flow and the local
submitit executor; the cells are the orchestration stand-in (`tests.fault_cells.slow_cell`), so the
test is about the orchestration, not training.
"""
from __future__ import annotations

import collections
import json
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
PROFILE = "smoke"


def _clone(dest: Path, tables: list[str], cell_sleep: float, only_dataset: str | None = None) -> tuple[Path, dict[str, str]]:
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=300)
    (dest / ".venv").symlink_to(REPO / ".venv")
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["study"]["cell_fn"] = "tests.fault_cells:slow_cell"
    params["study"]["retry_delay_s"] = 0
    for spec in params["data"].values():
        spec["num_images"] = 8  # the stand-in cells never read the images
    params["grid"] = {name: params["grid"][name] for name in tables}
    if only_dataset:
        for table in params["grid"].values():
            table["cells"] = [c for c in table["cells"] if c["dataset"] == only_dataset]
    # Only the twins the cells name (dvc.yaml's `data` stages are one per `data` key): each other one
    # would add a `pipeline data make` process to the first `dvc repro` and nothing this test checks.
    used = {c["dataset"] for table in params["grid"].values() for c in table["cells"]}
    params["data"] = {name: spec for name, spec in params["data"].items() if name in used}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API_URL"))}
    env.update(PYTHONPATH=str(dest), FAULT_CALLS_LOG=str(dest / "calls.log"), FAULT_CELL_SLEEP=str(cell_sleep),
               DVC_NO_ANALYTICS="1", PATH=f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
               # Prefect's default 20 s for the temporary API server to answer failed on a loaded 2-core
               # machine ("Timed out while attempting to connect to ephemeral Prefect API server").
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    return dest, env


def _calls(repo: Path) -> collections.Counter:
    log = repo / "calls.log"
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()


def _done(repo: Path) -> set[str]:
    done = set()
    for status in (repo / "runs" / PROFILE).glob("*/status.json"):
        try:
            if json.loads(status.read_text()).get("status") == "done":
                done.add(status.parent.name)
        except ValueError:
            pass
    return done


def test_failing_cell_is_retried_then_reported_and_study_finishes(tmp_path):
    repo, env = _clone(tmp_path / "repo", ["table4"], cell_sleep=0)
    env["STUDY_TEST_FAIL"] = "-fixed-"  # the table4 "MaskFormer-fixed" cell raises every time
    proc = subprocess.run([sys.executable, "-m", "pipeline", "study", "--profile", PROFILE, "--retries", "1"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]  # finished, with a failure to report
    calls = _calls(repo)
    failing = [c for c in calls if "-fixed-" in c]
    assert len(failing) == 1 and calls[failing[0]] == 2, calls  # first try + 1 retry
    assert all(n == 1 for c, n in calls.items() if c not in failing), calls  # the others ran once
    cells = json.loads((repo / "reports" / "study" / "cells.json").read_text())
    records = cells["cells"] if isinstance(cells, dict) else cells
    by_state = collections.defaultdict(list)
    for record in records:
        by_state[record["status"]].append(record)
    assert [r["cell_id"] for r in by_state["failed"]] == failing
    assert "injected failure" in by_state["failed"][0]["reason"]
    assert len(by_state["done"]) == len(records) - 1 >= 2
    # A person sees it in `status` too.
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", "--json"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-2000:]
    states = {c["cell_id"]: c for c in json.loads(status.stdout)}
    assert states[failing[0]]["state"] == "failed" and "injected failure" in states[failing[0]]["reason"]


BLOCK = "-q1000-"  # table6 "Q1000 ADE20K": blocks until released (tests.fault_cells)


def _interrupt(repo: Path, env: dict[str, str], dvc: str, sig: int, blocked_calls: int) -> str:
    """Start `dvc repro study`, wait until the blocked cell has started for the `blocked_calls`-th time
    and 2 cells are done, send `sig` to dvc's process group; returns the blocked cell's id."""
    proc = subprocess.Popen([dvc, "repro", "study"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        # Precondition, not timing: the blocked cell has started and cannot finish before `release`
        # exists, so the interrupt lands on a study with an unfinished cell.
        while len(_done(repo)) < 2 or sum(n for c, n in _calls(repo).items() if BLOCK in c) < blocked_calls:
            assert proc.poll() is None, f"dvc repro ended early:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "study too slow to reach 2 finished cells and the blocked one"
            time.sleep(0.2)
        blocked = [c for c in _calls(repo) if BLOCK in c]
        assert len(blocked) == 1 and blocked[0] not in _done(repo)
        # To dvc's process group, as a terminal's Ctrl-C (SIGINT) or a batch scheduler (SIGTERM) does:
        # dvc itself ignores SIGINT while its stage command runs and leaves the handling to the stage.
        os.killpg(proc.pid, sig)
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dvc repro did not stop within 180 s of {signal.Signals(sig).name}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, out[-3000:]
    time.sleep(3)  # let any cell process orphaned by the interruption finish or die
    return blocked[0]


def test_interrupted_dvc_repro_resumes_without_redoing_cells(tmp_path):
    """SIGINT (a terminal's Ctrl-C) stops `dvc repro` mid-study; the resumed study redoes no finished cell
    and is itself stopped by SIGTERM (a batch scheduler); the next run completes, still redoing none.
    One clone serves both signals: each interrupt lands on a study with a started, unfinished cell."""
    repo, env = _clone(tmp_path / "repo", ["table6"], cell_sleep=0.5, only_dataset="ade20k")  # 7 cells
    release = tmp_path / "release"
    env.update(FAULT_BLOCK=BLOCK, FAULT_RELEASE=str(release))
    dvc = str(REPO / ".venv" / "bin" / "dvc")
    history = []  # (calls, done) after each interrupt
    for attempt, sig in enumerate([signal.SIGINT, signal.SIGTERM], start=1):
        blocked = [_interrupt(repo, env, dvc, sig, blocked_calls=attempt)]
        calls_before = _calls(repo)
        done_before = _done(repo)
        assert blocked[0] not in done_before  # the study really was left unfinished
        states = {c["cell_id"]: c["state"] for c in json.loads(subprocess.run(
            [sys.executable, "-m", "pipeline", "status", "--json"], cwd=repo, env=env, capture_output=True,
            text=True, timeout=300, check=True).stdout)}
        assert states[blocked[0]] != "done" and len(states) == 7, states
        if history:  # the interrupted resume redid none of the cells finished before
            for cell in history[-1][1]:
                assert calls_before[cell] == history[-1][0][cell], f"{cell} was redone after SIGINT"
            assert calls_before[blocked[0]] == history[-1][0][blocked[0]] + 1
        history.append((calls_before, done_before))

    release.touch()
    rerun = subprocess.run([dvc, "repro", "study"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    after = json.loads(subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "--json"], cwd=repo, env=env, capture_output=True, text=True,
        timeout=300, check=True).stdout)
    assert {c["state"] for c in after} == {"done"}, [c for c in after if c["state"] != "done"]
    calls_after = _calls(repo)
    for cell in done_before:
        assert calls_after[cell] == calls_before[cell], f"{cell} was redone"
    assert calls_after[blocked[0]] == calls_before[blocked[0]] + 1  # the unfinished cell ran again
    assert all(calls_after[c["cell_id"]] >= 1 for c in after)
    # A further `dvc repro` has nothing to do.
    again = subprocess.run([dvc, "repro", "study"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and _calls(repo) == calls_after
