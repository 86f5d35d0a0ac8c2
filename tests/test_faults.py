"""Fault injection (issue 7): kills, NaN, truncated checkpoints, concurrent tracking, interrupted studies.

Every test drives the real command line in subprocesses (`python -m pipeline train --config ...`) on
a synthetic ADE20K twin with the SmokeR18 smoke model, and compares against an uninterrupted run:
final weights, the training log (without wall-clock times) and the evaluation metrics (without
timings) must be identical. Kill points are drawn from a fixed seed (FAULT_SEED, default 0, so a CI
failure reproduces); the seed is printed in every failure message and FAULT_SEED=<int> tries others.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import services

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
# Fault points are drawn from a fixed seed (a run is reproducible); FAULT_SEED=<n> explores others.
SEED = int(os.environ.get("FAULT_SEED", "0"))
MAX_ITER = 24
CKPT_PERIOD = 4
EXIT_PREEMPTED = 75  # pipeline.engine.EXIT_PREEMPTED (EX_TEMPFAIL)


def write_config(path: Path, twin: Path, out: Path, **solver) -> Path:
    """SmokeR18, 64-wide decoder, 32x32 crops, batch 4, a checkpoint every 4 iterations, tracking off."""
    raw = {
        "model": {"backbone": "SmokeR18", "hidden_dim": 64, "mask_dim": 64, "conv_dim": 64, "dim_feedforward": 128,
                  "nheads": 4, "num_queries": 10, "dec_layers": 2},
        "data": {"dataset": "ade20k", "root": str(twin), "crop_size": [32, 32], "short_sizes": [32, 40],
                 "max_size": 128, "test_short_size": 32, "test_max_size": 128, "num_workers": 0},
        "solver": {"max_iter": MAX_ITER, "ims_per_batch": 4, "base_lr": 1e-3, **solver},
        "test": {"fps_images": 2, "fps_warmup": 1, "max_images": 3},
        "run": {"output_dir": str(out), "log_period": 1, "checkpoint_period": CKPT_PERIOD, "tracking": False,
                "device": "cpu", "threads": 1},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def train_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "--config", str(config)]


def train(config: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(config), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def log_lines(out: Path) -> int:
    path = out / "train_log.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_at(config: Path, out: Path, iteration: int, sig: int, timeout: float = 600) -> tuple[int, str]:
    """Start training, send ``sig`` once ``iteration`` iterations are logged; return (exit code, stderr)."""
    proc = subprocess.Popen(train_cmd(config), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while log_lines(out) < iteration:
            assert proc.poll() is None, f"training ended before iteration {iteration}: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "training too slow"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def fingerprint(out: Path) -> dict:
    """What must not depend on interruptions: final weights, training log without times, metrics without perf/."""
    state = torch.load(out / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    log = [{k: v for k, v in json.loads(line).items() if k != "time_s"}
           for line in (out / "train_log.jsonl").read_text().splitlines()]
    metrics = {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if not k.startswith("perf/")}
    return {"model": state["model"], "iteration": state["iteration"], "log": log, "metrics": metrics}


def assert_same_run(out: Path, ref: dict, context: str) -> None:
    got = fingerprint(out)
    assert got["iteration"] == ref["iteration"] == MAX_ITER, context
    assert [e["iter"] for e in got["log"]] == list(range(1, MAX_ITER + 1)), context
    assert got["log"] == ref["log"], context
    assert got["metrics"] == ref["metrics"], context
    assert got["model"].keys() == ref["model"].keys(), context
    for name, tensor in ref["model"].items():
        assert torch.equal(got["model"][name], tensor), f"{context}: weights differ in {name}"
    assert json.loads((out / "status.json").read_text())["status"] == "done", context


@pytest.fixture(scope="module")
def reference(twin_root, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("fault_ref")
    proc = train(write_config(base / "cfg.yaml", twin_root, base / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return fingerprint(base / "run")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_training_resumes_identically(twin_root, reference, tmp_path, sig):
    rng = random.Random(f"{SEED}-{sig}")
    at = rng.randint(2, MAX_ITER - 2)
    context = f"{signal.Signals(sig).name} after iteration {at} (FAULT_SEED={SEED})"
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", twin_root, out)
    code, err = kill_at(config, out, at, sig)
    status = json.loads((out / "status.json").read_text())
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, context
        assert status["status"] == "running", context  # nobody could write anything else
    else:
        # SIGTERM = preemption: state saved at the iteration boundary, exit EX_TEMPFAIL for a requeue.
        assert code == EXIT_PREEMPTED, f"{context}: exit {code}\n{err[-2000:]}"
        assert status["status"] == "interrupted" and "SIGTERM" in status["reason"], context
    assert not (out / "checkpoints" / "final.pt").exists(), context
    rerun = train(config)
    assert rerun.returncode == 0, f"{context}\n{rerun.stderr[-3000:]}"
    assert_same_run(out, reference, context)


@pytest.mark.slow
def test_truncated_checkpoint_is_detected_and_previous_used(twin_root, reference, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "cfg.yaml", twin_root, out)
    code, _ = kill_at(config, out, 2 * CKPT_PERIOD + 1, signal.SIGKILL)
    assert code == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert (ckpts / "last.pt").exists() and (ckpts / "prev.pt").exists()
    prev_iter = torch.load(ckpts / "prev.pt", weights_only=True)["iteration"]
    data = (ckpts / "last.pt").read_bytes()
    (ckpts / "last.pt").write_bytes(data[: len(data) // 2])  # a disk that filled up mid-write
    rerun = train(config)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "sha256" in rerun.stderr and "last.pt" in rerun.stderr  # the fallback is said out loud
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert prev_iter < 2 * CKPT_PERIOD + 1 and log[-1]["iter"] == MAX_ITER
    assert_same_run(out, reference, "after truncating last.pt")


def test_nan_loss_stops_with_a_clear_message(twin_root, tmp_path):
    out = tmp_path / "run"
    # An absurd learning rate blows the weights up: the loss turns NaN within a few iterations.
    proc = train(write_config(tmp_path / "cfg.yaml", twin_root, out, base_lr=1e30, max_iter=12))
    assert proc.returncode == 2, proc.stderr[-3000:]  # a user-facing failure: `error: ...`, no traceback
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    assert "loss became nan" in last.lower() or "loss became inf" in last.lower(), last
    assert "iteration" in last
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "loss became" in status["reason"]
    assert not (out / "metrics.json").exists() and not (out / "checkpoints" / "final.pt").exists()


LOGGER = r"""
import sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
uri, exp, name, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = MlflowClient(tracking_uri=uri)
run = client.create_run(exp, run_name=name)
for start in range(0, steps, 25):  # the engine's pattern: synchronous batches at log/checkpoint time
    batch = [Metric(key, float(s * 10 + k), int(time.time() * 1000), s)
             for s in range(start, min(start + 25, steps)) for k, key in enumerate(("train/loss_ce", "train/loss_mask", "train/loss_dice"))]
    client.log_batch(run.info.run_id, metrics=batch)
client.set_terminated(run.info.run_id)
print(run.info.run_id)
"""


@pytest.mark.slow
def test_eight_concurrent_loggers_lose_no_metric(tmp_path):
    """8 processes log at once to a local SQLite URI: the study's tracking server takes the writes."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import ensure_store

    db_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(db_uri)
    exp = MlflowClient(tracking_uri=db_uri).create_experiment("faults", artifact_location=(tmp_path / "a").as_uri())
    steps = 200
    with services.tracking_server(db_uri, concurrency=8) as uri:
        assert uri.startswith("http://127.0.0.1:")
        procs = [subprocess.Popen([sys.executable, "-c", LOGGER, uri, exp, f"writer{i}", str(steps)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
        results = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, [r[1][-1500:] for r in results]
    client = MlflowClient(tracking_uri=db_uri)  # read back from the SQLite file itself
    runs = client.search_runs([exp], max_results=100)
    assert sorted(r.info.run_name for r in runs) == [f"writer{i}" for i in range(8)]
    for run in runs:
        for k, key in enumerate(("train/loss_ce", "train/loss_mask", "train/loss_dice")):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted((m.step, m.value) for m in history) == [(s, float(s * 10 + k)) for s in range(steps)]
