"""Cell caching: an unchanged cell is skipped, a changed one re-runs; variants reuse the trained checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.executor import CellExecutor
from pipeline.study import CellFailed, plan_study, run_unit, summarize
from tests._study_helpers import STAND_IN, write_params


def _calls(run_dir) -> int:
    path = Path(run_dir) / "calls.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _run_all(plan):
    ex = CellExecutor(plan.params, "debug", cell_fn=plan.cell_fn)  # submitit in-process executor
    outcomes = {}
    for uid in plan.train_ids() + plan.variant_ids():
        try:
            outcomes[uid] = run_unit(plan, ex, uid)
        except CellFailed as exc:
            outcomes[uid] = {"status": "failed", "reason": str(exc)}
    return outcomes


def test_unchanged_cells_are_skipped_and_changed_cells_rerun(tmp_path):
    params_path = write_params(tmp_path)
    plan = plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=tmp_path / "reports")
    assert len(plan.train_ids()) == 2 and len(plan.variant_ids()) == 1  # table7 general = eval-only
    first = _run_all(plan)
    assert all(o["status"] == "done" and not o["skipped"] for o in first.values())
    dirs = {uid: plan.grid.evals.get(uid, None) or plan.grid.train[uid] for uid in first}
    calls = {uid: _calls(u.run_dir) for uid, u in dirs.items()}
    assert set(calls.values()) == {1}
    variant = plan.grid.evals[plan.variant_ids()[0]]
    assert (Path(variant.run_dir) / "checkpoints" / "last.pt").is_file()  # linked, not retrained

    again = _run_all(plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=tmp_path / "reports"))
    assert all(o["skipped"] for o in again.values())
    assert {uid: _calls(u.run_dir) for uid, u in dirs.items()} == calls

    raw = yaml.safe_load(params_path.read_text())
    raw["grid"]["table7"]["cells"][2]["dec_layers"] = 3  # change one cell ("semantic ADE20K")
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    plan3 = plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=tmp_path / "reports")
    third = _run_all(plan3)
    rerun = sorted(uid for uid, o in third.items() if not o["skipped"])
    assert len(rerun) == 1 and "-d3-" in rerun[0]
    counts = summarize(plan3, third)
    assert counts == {"total": 4, "done": 4, "failed": 0, "interrupted": 0, "skipped": 3}  # the variant keeps its d6 training
    # reports/metrics.json (`dvc metrics`): each row's columns, medians over seeds, from the stand-in's numbers
    # (mIoU = 30 + Q/10 + seed, +1 for the general_semantic variant; PQSt = mIoU / 2; Q = K = 8 for PP+;
    # Q = 20 for MaskFormer: the smoke profile's default_queries).
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == {"table7": {
        "PerPixelBaseline+ ADE20K": {"mIoU": 30.8, "PQSt": 15.4},
        "general ADE20K": {"mIoU": 33.0, "PQSt": 16.5},
        "semantic ADE20K": {"mIoU": 32.0, "PQSt": 16.0}}}


def test_done_status_without_metrics_is_run_again(tmp_path):
    """A folder whose status.json says done but has no metrics.json (a crash between the two writes) is
    not a result: that cell runs again, the others are skipped."""
    params_path = write_params(tmp_path)
    first = _run_all(plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=tmp_path / "reports"))
    assert all(o["status"] == "done" for o in first.values())
    plan = plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=tmp_path / "reports")
    broken = plan.train_ids()[0]
    run_dir = Path(plan.grid.train[broken].run_dir)
    (run_dir / "metrics.json").unlink()
    again = _run_all(plan)
    assert [uid for uid, o in again.items() if not o["skipped"]] == [broken]
    assert _calls(run_dir) == 2 and (run_dir / "metrics.json").is_file()


def test_variant_of_a_failed_training_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_TEST_FAIL", "ade20k-mf")
    plan = plan_study(params_path=write_params(tmp_path), cell_fn=STAND_IN, reports_dir=tmp_path / "reports")
    out = _run_all(plan)
    failed = {uid: o["reason"] for uid, o in out.items() if o["status"] == "failed"}
    assert len(failed) == 2
    variant = plan.variant_ids()[0]
    assert failed[variant].startswith("training cell ") and "injected failure" in failed[variant]


def test_unknown_cell_function_fails_before_submitting(tmp_path):
    from pipeline.errors import UserError

    plan = plan_study(params_path=write_params(tmp_path), cell_fn="tests.study_cells:nope")
    with pytest.raises(UserError, match="has no callable 'nope'"):
        CellExecutor(plan.params, "local", cell_fn=plan.cell_fn)


def test_stopped_study_submits_nothing_and_records_interrupted(tmp_path):
    """After SIGINT/SIGTERM (StudyStop.request) no cell is submitted; the records say interrupted, not failed."""
    import signal

    plan = plan_study(params_path=write_params(tmp_path), cell_fn=STAND_IN, reports_dir=tmp_path / "reports")
    plan.stop.hard_timeout_s = 3600  # the safety-net exit must not fire inside the test process
    plan.stop.request(signal.SIGINT)
    outcomes = _run_all(plan)
    assert {o["status"] for o in outcomes.values()} == {"interrupted"}
    assert all(_calls(plan.grid.train[u].run_dir) == 0 for u in plan.train_ids())
    counts = summarize(plan, outcomes)
    assert counts["interrupted"] == counts["total"] and counts["failed"] == 0
    assert plan.stop.exit_code() == 130


@pytest.mark.parametrize("mode,executor,concurrent,served", [
    ("auto", "local", 2, False), ("auto", "slurm", 2, True), ("auto", "slurm", 1, False),
    ("always", "local", 2, True), ("always", "local", 1, False), ("never", "slurm", 4, False),
])
def test_tracking_server_only_for_concurrent_sqlite_cells(tmp_path, monkeypatch, mode, executor, concurrent, served):
    from pipeline.study import cell_config, shared_sqlite_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    raw = yaml.safe_load(write_params(tmp_path).read_text())
    raw["study"]["tracking_server"] = mode
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = plan_study(params_path=tmp_path / "params.yaml", executor=executor, max_concurrent=concurrent,
                      cell_fn=STAND_IN)
    uri = shared_sqlite_uri(plan)
    assert uri == (f"sqlite:///{tmp_path}/mlflow.db" if served else None)
    unit = plan.grid.train[plan.train_ids()[0]]
    plan.tracking_uri = "http://127.0.0.1:5999"
    assert cell_config(plan, unit)["run"]["tracking_uri"] == "http://127.0.0.1:5999"
    assert unit.config["run"].get("tracking_uri") != "http://127.0.0.1:5999"  # the unit itself is unchanged


def test_a_partial_study_plans_the_profile_once_and_records_the_whole_plan(tmp_path, monkeypatch):
    """`--table 7` runs table 7's cells, yet the grid is expanded once (every table), and the plan file and
    cells.json describe the whole profile from that one expansion (no re-expansion when recording)."""
    from pipeline import study as st
    from pipeline.plan import load_plan

    expansions = []
    real_expand = st.expand
    monkeypatch.setattr(st, "expand", lambda *a, **k: expansions.append(a[2:] or k.get("tables")) or real_expand(*a, **k))
    params_path = write_params(tmp_path, {"table7": slice(0, 2), "table6": slice(0, 2)})
    plan = plan_study(params_path=params_path, tables=["7"], cell_fn=STAND_IN, reports_dir=tmp_path / "reports")
    assert plan.grid.tables() == ["table7"] and sorted(plan.full.tables()) == ["table6", "table7"]
    written = st.record_plan(plan)
    summarize(plan, _run_all(plan))
    assert len(expansions) == 1  # plan_study's one expansion of the whole profile
    record = load_plan(written, "smoke")
    assert sorted(record.tables()) == ["table6", "table7"] and record.tables_run == ["table7"]
    assert set(record.evals) == set(plan.full.evals) and set(record.train) == set(plan.full.train)
    assert record.provenance.study_run == plan.run_id and record.provenance.synthetic is True
    cells = json.loads((tmp_path / "reports" / "study" / "cells.json").read_text())["cells"]
    assert {c["cell_id"] for c in cells} == set(plan.full.train) | {e for e, u in plan.full.evals.items() if u.is_variant}
    assert all(c["status"] == "done" for c in cells if any(r.startswith("table7:") for r in c["rows"]))
