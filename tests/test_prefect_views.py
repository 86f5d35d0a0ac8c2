"""The study's Prefect views on the services' Prefect server: task runs tagged by table/row/dataset,
already-done cells in a state named Skipped, a progress artifact, a markdown summary, one table
artifact per table, and the report refreshed by the `tables` flow."""
from __future__ import annotations

import pytest

from tests._study_helpers import STAND_IN, write_params


@pytest.mark.slow
def test_study_and_tables_flows_leave_tagged_tasks_skipped_states_and_artifacts(tmp_path, services_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, TaskRunFilter, \
        TaskRunFilterFlowRunId

    from flows.study import run_cells, tables

    params_path = write_params(tmp_path)  # table7[0:3]: 2 training cells + 1 evaluation variant
    kwargs = dict(profile="smoke", cell_fn=STAND_IN, executor="debug", params_path=str(params_path),
                  reports_dir=str(tmp_path / "reports"), return_state=True)
    first = run_cells(**kwargs)
    again = run_cells(**kwargs)
    assert first.is_completed() and again.is_completed()
    assert again.message == "3 cells: 3 done (3 skipped as already done), 0 failed"

    with get_client(sync_client=True) as client:
        def task_runs(state):
            return client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id])))

        def artifacts(flow_run_id):
            return {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}

        ran, skipped = task_runs(first), task_runs(again)
        assert sorted(t.state.name for t in ran) == ["Completed"] * 3
        assert sorted(t.state.name for t in skipped) == ["Skipped"] * 3
        assert all(t.state.type.value == "COMPLETED" for t in skipped)
        for t in ran:
            assert "dataset:ade20k" in t.tags and "table:table7" in t.tags
            assert any(tag.startswith("row:") for tag in t.tags)
        first_artifacts = artifacts(first.state_details.flow_run_id)
        assert first_artifacts["study-progress"].type == "progress"
        assert float(first_artifacts["study-progress"].data) == 100.0
        summary = first_artifacts["study-summary"]
        assert summary.type == "markdown" and "3 cells: 3 done" in summary.data
        assert "## table7" in summary.data
        assert "skipped (done)" in artifacts(again.state_details.flow_run_id)["study-summary"].data

        html = tmp_path / "reports" / "index.html"
        assert not html.exists()
        done = tables(profile="smoke", params_path=str(params_path), reports_dir=str(tmp_path / "reports"),
                      return_state=True)
        assert done.is_completed()
        made = artifacts(done.state_details.flow_run_id)
        assert made["smoke-table7"].type == "table"
        assert "general ADE20K" in made["smoke-table7"].data
        assert "tables-summary" in made
        assert html.is_file()  # the tables flow refreshed the report
