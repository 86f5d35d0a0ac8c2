"""Tests of pipeline/status.py and `python -m pipeline status`: states from run folders, MLflow links."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.status import format_table, mlflow_link, read_cell, scan, ui_base_url

REPO = Path(__file__).resolve().parents[1]


def _folder(root: Path, name: str, status: dict | None, metrics: dict | None = None, run_id: str | None = None) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if status is not None:
        (path / "status.json").write_text(json.dumps(status))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if run_id:
        (path / "mlflow_run_id").write_text(run_id + "\n")
    return path


def test_states_from_folders(tmp_path):
    root = tmp_path / "runs" / "p"
    _folder(root, "a-done", {"status": "done"}, {"val/mIoU": 12.345})
    _folder(root, "b-failed", {"status": "failed", "reason": "NonFiniteLoss: loss became nan at iteration 3"})
    _folder(root, "c-running", {"status": "running", "iteration": 0})
    (root / "c-running" / "config.yaml").write_text("solver: {max_iter: 100}\n")
    (root / "c-running" / "train_log.jsonl").write_text('{"iter": 20}\n{"iter": 40}\n{"iter": 6')  # cut by a kill
    _folder(root, "d-empty", None)
    _folder(root, "e-done-without-metrics", {"status": "done"})
    cells, note = scan("p", tmp_path / "runs", plan_path=None, resolve_links=False)
    assert note is None
    states = {c.cell_id: c.state for c in cells}
    assert states == {"a-done": "done", "b-failed": "failed", "c-running": "running", "d-empty": "missing",
                      "e-done-without-metrics": "failed"}
    text = format_table(cells)
    assert "done: 1  running: 1  interrupted: 0  failed: 2  missing: 1" in text
    assert "val/mIoU=12.35" in text and "iter 40/100" in text and "loss became nan" in text
    assert read_cell(tmp_path / "nowhere").state == "missing"


def test_link_points_at_the_run_in_the_ui(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("status-test", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    _folder(tmp_path / "runs" / "p", "cell", {"status": "done"}, {"val/mIoU": 1.0}, run_id=run_id)
    cells, _ = scan("p", tmp_path / "runs", plan_path=None)
    assert cells[0].link == f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run_id}"
    assert ui_base_url("http://10.0.0.1:5001/") == "http://10.0.0.1:5001"
    assert mlflow_link("http://h:1", "3", "abc") == "http://h:1/#/experiments/3/runs/abc"


def test_cli_lists_grid_cells_as_missing(run_cli, tmp_path):
    _folder(tmp_path / "smoke", "stray-cell", {"status": "failed", "reason": "boom"})
    reports = str(tmp_path / "reports")
    planned = run_cli("grid", "plan", "--profile", "smoke", "--reports", reports, cwd=REPO)  # what `study` writes first
    assert planned.returncode == 0, planned.stderr
    proc = run_cli("status", "--profile", "smoke", "--runs-root", str(tmp_path), "--reports", reports, "--json", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    cells = json.loads(proc.stdout)
    by_state: dict[str, list] = {}
    for c in cells:
        by_state.setdefault(c["state"], []).append(c)
    assert [c["cell_id"] for c in by_state["failed"]] == ["stray-cell"]
    assert len(by_state["missing"]) >= 10  # every cell of the smoke grid, none run in tmp_path
    assert all(c["rows"] for c in by_state["missing"])  # each names its table rows
