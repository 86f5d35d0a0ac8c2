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


@pytest.mark.slow
def test_services_mlflow_serves_the_store_dvc_repro_writes(tmp_path, monkeypatch):
    """The services' MLflow server (scripts/services.sh -> standard_servers) serves the same SQLite store
    a serverless `dvc repro` writes: a run logged straight into the file is listed by the server with
    its artifact, and a run logged through the server lands in the file with its artifact beside it."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import Tracker

    db = tmp_path / "repo" / "mlruns" / "mlflow.db"
    sqlite_uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", sqlite_uri)
    monkeypatch.setenv("MLFLOW_PORT", str(services.free_port()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "note.txt").write_text("direct\n")
    direct = Tracker(sqlite_uri, experiment="one-store")
    direct_id = direct.start({"a": 1}, {"cell": "direct"}, run_name="direct")
    direct.log_artifacts([tmp_path / "note.txt"])
    direct.end("FINISHED")

    server = services.standard_servers(tmp_path / "state")["mlflow"]
    assert server.backend_uri == sqlite_uri
    assert "--no-serve-artifacts" in server.command() and "--workers" in server.command()
    services.start(server)
    try:
        http = MlflowClient(tracking_uri=server.url)
        exp = http.get_experiment_by_name("one-store")
        runs = http.search_runs([exp.experiment_id])
        assert [r.info.run_id for r in runs] == [direct_id]
        got = http.download_artifacts(direct_id, "note.txt", str(tmp_path))
        assert Path(got).read_text() == "direct\n"

        (tmp_path / "served.txt").write_text("served\n")
        served = Tracker(server.url, experiment="one-store")
        served_id = served.start({"a": 2}, {"cell": "served"}, run_name="served")
        served.log_artifacts([tmp_path / "served.txt"])
        served.end("FINISHED")
    finally:
        services.stop(server)
    local = MlflowClient(tracking_uri=sqlite_uri)
    assert local.get_run(served_id).data.tags["cell"] == "served"
    uri = local.get_run(served_id).info.artifact_uri
    assert uri.startswith((db.parent / "artifacts").as_uri())
    assert (Path(uri[len("file://"):]) / "served.txt").read_text() == "served\n"


@pytest.mark.slow
def test_prefect_ui_api_url_has_the_port_and_down_stops_flows_serve(tmp_path):
    """A Prefect server on a moved port tells its UI that port (PREFECT_UI_API_URL); `services.sh serve`
    starts the deployments' process with a pid file and `services.sh down` stops it (and the server)."""
    import os
    import signal

    root = tmp_path / "root"
    server = services.Server("prefect", root / "prefect", port=services.free_port())
    assert server.environment()["PREFECT_UI_API_URL"] == server.url + "/api"
    services.start(server)
    try:
        with urllib.request.urlopen(server.url + "/ui-settings", timeout=30) as resp:  # noqa: S310
            assert json.loads(resp.read())["api_url"] == server.url + "/api"
        env_file = tmp_path / "services.env"
        env_file.write_text(f"export PREFECT_API_URL={server.url}/api\nexport PREFECT_HOME={root / 'prefect' / 'home'}\n"
                            "export SUBMITIT_LOG_LEVEL=NOCONFIG\nexport PREFECT_SERVER_ANALYTICS_ENABLED=false\n")
        env = dict(os.environ, SERVICES_ROOT=str(root), SERVICES_ENV_FILE=str(env_file), VENV=str(VENV_BIN.parent),
                   PREFECT_PORT=str(server.port), MLFLOW_PORT=str(services.free_port()))
        script = str(Path(__file__).resolve().parents[1] / "scripts" / "services.sh")
        out = subprocess.run(["bash", script, "serve"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        pid_file = root / "pids" / "prefect_serve.pid"
        pid = int(pid_file.read_text())
        assert services.pid_alive(pid)
        try:
            out = subprocess.run(["bash", script, "down"], env=env, capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stderr
            assert not services.pid_alive(pid) and not pid_file.exists()
            assert "prefect: stopped" in out.stdout
        finally:
            if services.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    finally:
        services.stop(server)
