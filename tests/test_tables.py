"""Tables: paper number, median, std, seeds, delta, tolerance mark, cited rows, holes, captions, LaTeX."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.grid import expand
from pipeline.params import load_params
from pipeline.tables import SMOKE_NOTE, build_tables, load_paper_numbers
from tests._study_helpers import write_params, write_study_plan


def _write_metrics(run_dir: str, metrics: dict) -> None:
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "status.json").write_text(json.dumps({"status": "done"}))


def test_paper_numbers_cover_every_table_with_sources():
    rows = load_paper_numbers()
    tables = {r["table"] for r in rows}
    assert {f"table{i}" for i in range(1, 9)} <= tables
    assert {f"appendix{i}" for i in range(1, 7)} <= tables
    r50 = next(r for r in rows if r["table"] == "table1" and r["row"] == "MaskFormer R50" and r["metric"] == "mIoU (s.s.)")
    assert (float(r50["value"]), float(r50["std"]), r50["source"]) == (44.5, 0.5, "Table 1")
    assert all(r["status"] == "cited" for r in rows if r["row"].startswith(("DETR", "DeepLabV3+", "Swin-UperNet")))


def test_medians_std_delta_and_marks(tmp_path):
    # a real-data profile (not synthetic) so tolerance marks apply; three seeds per row
    params_path = write_params(tmp_path, {"table2": slice(0, 3)}, synthetic=False, seeds={"default": 3})
    params = load_params(params_path, environ={})
    grid = expand(params, "smoke")
    rows = {r.row: r for r in grid.rows}
    for eid, v in zip(rows["MaskFormer ADE20K"].eval_ids, (44.0, 45.0, 47.0)):
        _write_metrics(grid.evals[eid].run_dir, {"val/mIoU": v, "val/PQSt": 33.4})
    for eid, v in zip(rows["PerPixelBaseline ADE20K"].eval_ids, (30.0, 31.0, 32.0)):
        _write_metrics(grid.evals[eid].run_dir, {"val/mIoU": v})
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", tables=["table2"])
    text = (tmp_path / "reports" / "tables" / "table2.csv").read_text()
    assert text.startswith("# table2: ") and "profile smoke" in text and SMOKE_NOTE not in text
    df = pd.read_csv(tmp_path / "reports" / "tables" / "table2.csv", comment="#")
    mf = df[(df.row == "MaskFormer ADE20K") & (df.metric == "mIoU")].iloc[0]
    assert (mf.paper, mf.ours, mf.seeds, mf.delta, mf.mark) == (44.5, 45.0, 3, 0.5, "ok")
    assert mf.ours_std == round(pd.Series([44.0, 45.0, 47.0]).std(), 2)
    pp = df[(df.row == "PerPixelBaseline ADE20K") & (df.metric == "mIoU")].iloc[0]
    assert pp.mark == "outside" and pp.delta == -8.2
    pp_pq = df[(df.row == "PerPixelBaseline ADE20K") & (df.metric == "PQSt")].iloc[0]
    assert pp_pq.status == "failed" and "no val/PQSt" in pp_pq.reason
    missing = df[(df.row == "MaskFormer COCO-Stuff")].iloc[0]
    assert missing.status == "not run"
    tex = (tmp_path / "reports" / "tables" / "table2.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex


def test_smoke_tables_say_so_and_mark_cited_rows(tmp_path):
    params = load_params(write_params(tmp_path, {"table3": slice(0, 2)}), environ={})
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports")
    text = (tmp_path / "reports" / "tables" / "table3.csv").read_text()
    assert SMOKE_NOTE in text.splitlines()[0]
    df = pd.read_csv(tmp_path / "reports" / "tables" / "table3.csv", comment="#")
    assert set(df[df.row == "DETR R50+6Enc"].status) == {"cited"}
    assert set(df[(df.row == "MaskFormer R50+6Enc") & (df.metric == "PQ")].status) == {"missing"}
    assert set(df[df.row == "MaskFormer Swin-T"].status) == {"not run"}  # not in this trimmed grid
    assert (tmp_path / "reports" / "tables" / "appendix5.csv").is_file()  # test-server rows: cited / not run


def test_training_memory_column_and_the_paper_inconsistent_ade20k_full_number(tmp_path):
    """App. Table IIb memory: compared (relative tolerance) only when measured as in the paper; Table 2's
    ADE20K-Full MaskFormer 17.4 (the R101c value on an R50 row) is shown but never marked outside."""
    params = load_params(write_params(tmp_path, {"table2": slice(6, 9), "appendix2": slice(10, 15)},
                                      synthetic=False, seeds={"default": 1}, backbone_map={}), environ={})
    grid = expand(params, "smoke")
    rows = {(r.table, r.row): r for r in grid.rows}
    paper_way = {"device": "cuda:0", "measure": "torch.cuda.max_memory_allocated", "ims_per_batch_per_process": 2,
                 "images_per_pass": 2, "crop_size": [512, 512], "amp": False}
    cpu_way = dict(paper_way, device="cpu", measure="resource.getrusage(RUSAGE_SELF).ru_maxrss (process peak RSS)")
    for (table, row), metrics in {
        ("table2", "MaskFormer ADE20K-Full"): {"val/mIoU": 16.0},
        ("appendix2", "(b) MaskFormer R50"): {"val/mIoU": 16.0, "perf/train_peak_mem_mb": 6800.0,
                                              "perf/train_peak_mem_protocol": paper_way},
        ("appendix2", "(b) MaskFormer R101"): {"val/mIoU": 16.8, "perf/train_peak_mem_mb": 8000.0,
                                               "perf/train_peak_mem_protocol": paper_way},
        ("appendix2", "(b) MaskFormer R101c"): {"val/mIoU": 17.4, "perf/train_peak_mem_mb": 900.0,
                                                "perf/train_peak_mem_protocol": cpu_way},
    }.items():
        _write_metrics(grid.evals[rows[(table, row)].eval_ids[0]].run_dir, metrics)
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", tables=["table2", "appendix2"])
    t2 = pd.read_csv(tmp_path / "reports" / "tables" / "table2.csv", comment="#", keep_default_na=False, na_values=[""])
    full = t2[(t2.row == "MaskFormer ADE20K-Full") & (t2.metric == "mIoU")].iloc[0]
    assert (full.paper, full.ours, full.delta, full.mark) == (17.4, 16.0, -1.4, "n/a")
    assert "paper inconsistent" in full.reason
    a2 = pd.read_csv(tmp_path / "reports" / "tables" / "appendix2.csv", comment="#", keep_default_na=False, na_values=[""])
    mem = a2[a2.metric == "train memory (MB)"].set_index("row")
    assert mem.loc["(b) MaskFormer R50", "mark"] == "ok"  # +4.1 %, within 10 %
    assert mem.loc["(b) MaskFormer R101", "mark"] == "outside"  # +16 %
    r101c = mem.loc["(b) MaskFormer R101c"]
    assert r101c.mark == "n/a" and "max_memory_allocated" in r101c.reason
    assert mem.loc["(b) PerPixelBaseline R50", "status"] != "not run"  # the column exists for every (b) row


def test_tables_and_report_read_the_study_plan_not_the_grid_of_params_yaml(tmp_path):
    """Rows, cells and seeds come from reports/study/plan.json (pipeline.plan): params.yaml edited after the
    study (fewer rows, fewer seeds) changes nothing in the tables or the report until the study plans again."""
    from pipeline.report import build_report

    planned = load_params(write_params(tmp_path, {"table2": slice(0, 3)}, synthetic=False, seeds={"default": 3}),
                          environ={})
    write_study_plan(planned, tmp_path / "reports")
    grid = expand(planned, "smoke")
    rows = {r.row: r for r in grid.rows}
    for eid, v in zip(rows["MaskFormer ADE20K"].eval_ids, (40.0, 41.0, 42.0)):
        _write_metrics(grid.evals[eid].run_dir, {"val/mIoU": v})
    edited = load_params(write_params(tmp_path, {"table2": slice(0, 1)}, synthetic=True, seeds={"default": 1}),
                         environ={})
    regrid = expand(edited, "smoke")  # what re-expanding params.yaml would give: one row, one seed
    assert [r.row for r in regrid.rows] == ["PerPixelBaseline ADE20K"] and len(regrid.rows[0].eval_ids) == 1
    build_tables(params=edited, reports_dir=tmp_path / "reports", tables=["table2"], pdf=False)
    tables = tmp_path / "reports" / "tables"
    df = pd.read_csv(tables / "table2.csv", comment="#", keep_default_na=False, na_values=[""])
    mf = df[(df.row == "MaskFormer ADE20K") & (df.metric == "mIoU")].iloc[0]
    assert (mf.ours, mf.seeds, mf.status, mf.mark) == (41.0, 3, "done", "outside")  # the plan: real data, 3 seeds
    pp = df[(df.row == "PerPixelBaseline ADE20K") & (df.metric == "mIoU")].iloc[0]
    assert pp.cells.split(";") == rows["PerPixelBaseline ADE20K"].eval_ids and pp.status == "missing"
    meta = json.loads((tables / "table2.json").read_text())
    assert {k: meta[k] for k in ("table", "profile", "seeds", "synthetic", "smoke_label", "released", "study_run")} == {
        "table": "table2", "profile": "smoke", "seeds": {"default": 3}, "synthetic": False, "smoke_label": "",
        "released": False, "study_run": "test-plan"}
    assert set(meta["source_runs"]) == {e for r in grid.rows for e in r.eval_ids}
    assert meta["source_runs"][mf.cells.split(";")[0]] == grid.evals[mf.cells.split(";")[0]].run_dir
    # The report lists the plan's cells with their rows (pipeline.status reads the plan, not params.yaml).
    page = build_report("smoke", runs_root=tmp_path / "runs", tables_dir=tables, out_dir=tmp_path / "reports",
                        params_path=None, repo=tmp_path).read_text()
    assert page.count("table2: MaskFormer ADE20K") == 3 and "smoke-banner" not in page


def test_tables_without_a_plan_or_with_another_profiles_plan_say_what_to_run(tmp_path):
    params = load_params(write_params(tmp_path, {"table3": slice(0, 1)}), environ={})
    reports = tmp_path / "reports"
    plan_file = reports / "study" / "plan.json"
    with pytest.raises(UserError) as missing:
        build_tables(params=params, reports_dir=reports, pdf=False)
    assert f"{plan_file}: no study plan" in str(missing.value)
    assert "`python -m pipeline study --profile smoke`" in str(missing.value)
    assert "`python -m pipeline grid plan --profile smoke`" in str(missing.value)
    write_study_plan(params, reports)
    with pytest.raises(UserError) as other:
        build_tables("paper", params=params, reports_dir=reports, pdf=False)
    assert f"{plan_file}: the study plan is of profile 'smoke', not 'paper'" in str(other.value)
    plan_file.write_text('{"format": 1, "provenance"')  # cut short by a killed writer
    with pytest.raises(UserError, match="not a JSON study plan"):
        build_tables(params=params, reports_dir=reports, pdf=False)
    assert not (reports / "tables").exists()  # refused before anything was written
