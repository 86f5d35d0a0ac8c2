"""A tiny real study (engine cells, 2 seeds of one Table 1 row) tracked on the services' MLflow server:
one parent run per study run with the cells nested, the row/seed tags, MLflow's system tags, the dataset
as an input, the final checkpoint as an artifact, and the seeds of a row pooled through the search API."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests._study_helpers import REPO, write_params

SOLVER = {"ims_per_batch": 2, "max_iter": 3, "warmup_iters": 1, "warmup_factor": 0.01, "base_lr": 5.0e-4,
          "backbone_multiplier": 1.0}


def tiny_study_params(tmp_path: Path) -> Path:
    """Table 1's first row (MaskFormer R50 ADE20K -> SmokeR18 in smoke) with 2 seeds, 3 iterations."""
    subprocess.run([sys.executable, "-m", "pipeline", "data", "make", "--dataset", "ade20k", "--params",
                    str(REPO / "params.yaml"), "--raw", str(tmp_path / "raw" / "ade20k"),
                    "--out", str(tmp_path / "data" / "ade20k")], check=True, capture_output=True, cwd=REPO)
    return write_params(tmp_path, {"table1": slice(0, 1)}, seeds={"default": 2}, solver=SOLVER,
                        test={"max_images": 2, "fps_images": 1, "fps_warmup": 0},
                        run={"eval_period": 0, "checkpoint_period": 100, "log_period": 1, "device": "cpu",
                             "threads": 1})


@pytest.mark.slow
def test_study_runs_nest_under_a_parent_and_group_by_row(tmp_path, services_env):
    from mlflow.tracking import MlflowClient

    from flows.study import study
    from pipeline.runfolder import git_commit

    params_path = tiny_study_params(tmp_path)
    state = study(profile="smoke", executor="debug", params_path=str(params_path),
                  reports_dir=str(tmp_path / "reports"), return_state=True)
    assert state.is_completed(), state.message
    cells = json.loads((tmp_path / "reports" / "study" / "cells.json").read_text())
    parent_id = cells["mlflow_run_id"]
    client = MlflowClient(tracking_uri=services_env.mlflow_uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["study_run"] == cells["study_run"]
    assert parent.data.metrics["study/done"] == 2
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"cells.json", "metrics.json"}

    exp = parent.info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 2
    assert {r.info.run_id for r in children} == {
        (Path(c["run_dir"]) / "mlflow_run_id").read_text().strip() for c in cells["cells"]}
    for run in children:
        tags = run.data.tags
        assert tags["table"] == "table1" and tags["row"] == "MaskFormer R50" and tags["profile"] == "smoke"
        assert tags["cell"] == Path(run.data.tags["output_dir"]).name
        assert tags["mlflow.source.git.commit"] == git_commit() and tags["mlflow.user"]
        assert tags["mlflow.source.name"] == "pipeline.engine.run_cell"
        inputs = run.inputs.dataset_inputs
        assert {i.dataset.name for i in inputs} == {"ade20k"}
        assert {i.dataset.digest for i in inputs} == {tags["data_version"]}
        assert "checkpoints/final.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {r.data.tags["seed"] for r in children} == {"0", "1"}
    assert len({r.data.tags["config_hash"] for r in children}) == 2  # the seed changes the result hash
    assert len({r.data.tags["group"] for r in children}) == 1  # ... not the group

    # Seeds pooled by row through MLflow's search API: the median the study wrote for the row.
    found = client.search_runs([exp], filter_string=f"tags.study_run = '{cells['study_run']}' and "
                                                    "tags.table = 'table1'")
    by_row: dict[str, list[float]] = {}
    for run in found:
        if run.data.tags.get("row"):
            by_row.setdefault(run.data.tags["row"], []).append(run.data.metrics["val/mIoU"])
    assert sorted(by_row) == ["MaskFormer R50"] and len(by_row["MaskFormer R50"]) == 2
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["table1"]["MaskFormer R50"]["mIoU (s.s.)"] == pytest.approx(
        round(statistics.median(by_row["MaskFormer R50"]), 3))

    # The report of that study run lands in the parent run (what `python -m pipeline report` does).
    from pipeline.params import load_params
    from pipeline.report import build_report
    from pipeline.study import log_report
    from pipeline.tables import build_tables

    reports = tmp_path / "reports"
    build_tables(params=load_params(params_path), reports_dir=reports)
    html = build_report("smoke", runs_root=tmp_path / "runs", tables_dir=reports / "tables", out_dir=reports,
                        params_path=params_path)
    assert log_report(html) == parent_id
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent_id, "report")}
