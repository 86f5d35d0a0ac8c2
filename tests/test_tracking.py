"""MLflow tracking of a training run in a temporary SQLite store: params, step metrics, final metrics,
artifacts, status, and a resumed run continuing the same MLflow run."""
from __future__ import annotations

import os
import signal

import pytest

from pipeline.engine import Preempted, read_status, run_cell
from pipeline.tracking import flatten_params
from tests.test_engine import smoke_config


def test_flatten_params_cuts_long_values():
    flat = flatten_params({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x" * 600})
    assert flat == {"a.b": "1", "a.c": "None", "a.d": "[1, 2]", "e": "x" * 500}


def test_run_is_tracked_and_resume_continues_the_same_mlflow_run(twin_root, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    out = tmp_path / "run"
    cfg = smoke_config(twin_root, out, solver={"max_iter": 6},
                       run={"tracking": True, "tracking_uri": uri, "experiment": "engine-test",
                            "checkpoint_period": 2, "tags": {"profile": "smoke", "cell_id": "cell-1"}})

    def stop_at_3(it: int) -> None:
        if it == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        run_cell(cfg, hooks=[stop_at_3])
    client = MlflowClient(tracking_uri=uri)
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"
    assert read_status(out)["status"] == "interrupted"

    metrics = run_cell(cfg)
    assert (out / "mlflow_run_id").read_text().strip() == run_id
    runs = client.search_runs([client.get_experiment_by_name("engine-test").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one MLflow run for the whole training run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["solver.base_lr"] == "0.001"
    assert run.data.params["model.backbone"] == "SmokeR18"
    assert run.data.params["data.crop_size"] == "[32, 32]"
    assert run.data.tags["profile"] == "smoke" and run.data.tags["cell_id"] == "cell-1"
    assert run.data.tags["seed"] == "0" and "git_commit" in run.data.tags
    history = client.get_metric_history(run_id, "train/total_loss")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]
    assert {m.step for m in client.get_metric_history(run_id, "train/lr")} == {1, 2, 3, 4, 5, 6}
    assert run.data.metrics["val/mIoU"] == pytest.approx(metrics["val/mIoU"])
    assert "val/PQSt" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.json", "train_log.jsonl"} <= artifacts
    assert (tmp_path / "store" / "artifacts").is_dir()
