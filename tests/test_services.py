"""Tests of pipeline/services.py and the MLflow UI as the docs tell a person to start it."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline import services
from pipeline.errors import UserError

VENV_BIN = Path(sys.executable).parent


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (local test server)
        return json.loads(resp.read())


def _make_store_with_run(db: Path, run_name: str) -> tuple[str, str]:
    """A SQLite MLflow store with one finished run holding a metric; returns (experiment_id, run_id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp_id = client.create_experiment("svc-test", artifact_location=(db.parent / "art").as_uri())
    run = client.create_run(exp_id, run_name=run_name)
    client.log_metric(run.info.run_id, "val/mIoU", 42.5, step=3)
    client.set_terminated(run.info.run_id)
    return exp_id, run.info.run_id


def test_sqlite_path_only_for_local_sqlite():
    assert services.sqlite_path("sqlite:////tmp/x/mlflow.db") == Path("/tmp/x/mlflow.db")
    assert services.sqlite_path("http://127.0.0.1:5000") is None
    assert services.sqlite_path("file:///tmp/mlruns") is None


def test_single_process_keeps_local_uri(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert services.ensure_tracking_server(uri, concurrency=1) == (uri, None)
    assert services.ensure_tracking_server("http://127.0.0.1:1", concurrency=8) == ("http://127.0.0.1:1", None)
    assert not (tmp_path / ".mlflow.db.server").exists()


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        server = services.Server("mlflow", tmp_path / "mlflow", port=port)
        with pytest.raises(UserError, match=f"port {port}"):
            services.start(server, timeout=5)
    assert not server.pid_file.exists()


@pytest.mark.slow
def test_tracking_server_fronts_sqlite_and_stops(tmp_path):
    db = tmp_path / "mlflow.db"
    exp_id, run_id = _make_store_with_run(db, "fronted")
    uri = f"sqlite:///{db}"
    with services.tracking_server(uri, concurrency=4) as http_uri:
        assert http_uri.startswith("http://127.0.0.1:")
        server = services.tracking_server_for(uri)
        pid = services.read_pid(server.pid_file)
        assert pid is not None
        # A second caller reuses the running server instead of starting another one.
        again, started = services.ensure_tracking_server(uri, concurrency=4)
        assert (again, started) == (http_uri, None)
        found = _post(http_uri + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})
        assert [r["info"]["run_id"] for r in found["runs"]] == [run_id]
    assert not services.pid_alive(pid)
    assert services.read_pid(server.pid_file) is None


def _start_mlflow_ui(cwd: Path, env: dict, attempts: int = 3) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` on a free port; a port taken between `free_port()` and the server's bind (another
    process on this machine) makes the server exit: then try again on another port."""
    for _ in range(attempts):
        port = services.free_port()
        proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlruns/mlflow.db",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while proc.poll() is None and not services.healthy(base + "/health"):
            if time.monotonic() > deadline:
                services._signal_group(proc.pid, 15)
                proc.wait(timeout=30)
                pytest.fail("mlflow ui did not answer within 180 s")
            time.sleep(0.5)
        time.sleep(1.0)
        if proc.poll() is None:  # still running: the server that answered is ours
            return proc, base
    pytest.fail(f"mlflow ui exited on start {attempts} times (ports taken?)")


@pytest.mark.slow
def test_mlflow_ui_as_documented_lists_runs(tmp_path, chromium):
    """`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` (README / pipeline.tracking docs) on
    127.0.0.1 answers, its REST API lists the run, and the UI page shows the run's name."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    exp_id, run_id = _make_store_with_run(db, "documented-ui-run")
    env = services.Server("mlflow", tmp_path).environment()
    proc, base = _start_mlflow_ui(tmp_path, env)
    try:
        found = _post(base + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})
        assert [r["info"]["run_id"] for r in found["runs"]] == [run_id]
        with urllib.request.urlopen(base + "/", timeout=30) as resp:  # noqa: S310
            assert "<title>MLflow</title>" in resp.read().decode()
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=20000", "--dump-dom",
             f"{base}/#/experiments/{exp_id}/runs"],
            capture_output=True, text=True, timeout=180)
        assert "documented-ui-run" in dom.stdout
    finally:
        services._signal_group(proc.pid, 15)
        proc.wait(timeout=30)


def test_services_env_fixture_matches_live_servers(services):
    assert services.mlflow_uri.startswith("http://127.0.0.1:")
    assert services.prefect_api_url.startswith("http://127.0.0.1:") and services.prefect_api_url.endswith("/api")
    assert Path(services.slurm_conf).is_file()
    out = subprocess.run(["sinfo", "-h", "-o", "%G"], env=services.subprocess_env(), capture_output=True, text=True,
                         timeout=30)
    assert "gpu:2" in out.stdout  # the fake GPUs the SLURM executor requests with gpus_per_node
