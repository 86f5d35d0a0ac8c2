"""The paper-layout tables (pipeline/paper_tables.py), their PDF, and the claims (pipeline/claims.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pipeline import claims as cl
from pipeline import paper_tables as pt
from pipeline.grid import expand
from pipeline.params import load_params
from pipeline.tables import build_tables, load_paper_numbers
from tests._study_helpers import REPO, write_params, write_study_plan


def _write_metrics(run_dir: str, metrics: dict) -> None:
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "status.json").write_text(json.dumps({"status": "done"}))


def _layout_rows(layout: dict) -> set[str]:
    keys = [g.get("key", "") for g in layout["groups"]]
    return {r["row"].replace("{key}", k) for r in layout["rows"] for k in keys}


def test_layouts_name_every_paper_row_and_only_existing_rows():
    layouts = pt.load_layouts()
    paper = load_paper_numbers()
    grid_rows = {(t, c.row) for t, g in load_params(REPO / "params.yaml", environ={}).grid.items() for c in g.cells}
    for table in {p["table"] for p in paper}:
        assert table in layouts, f"no layout for {table}"
        wanted = {p["row"] for p in paper if p["table"] == table}
        rows = _layout_rows(layouts[table])
        assert wanted <= rows, f"{table}: paper rows without a layout row: {sorted(wanted - rows)}"
        known = wanted | {r for t, r in grid_rows if t == table}
        # Table 8's PerPixelBaseline+ has no panoptic cell in the paper either ("-"), hence the subset check per row
        assert rows <= known | {r for r in rows if r.startswith("PerPixelBaseline+ (6")}, sorted(rows - known)
        metrics = {c["metric"] for g in layouts[table]["groups"] for c in g["columns"]}
        assert {p["metric"] for p in paper if p["table"] == table} <= metrics, table


def test_wide_table_in_the_paper_layout(tmp_path):
    params = load_params(write_params(tmp_path, {"table2": slice(0, 12)}, seeds={"default": 3}), environ={})
    grid = expand(params, "smoke")
    rows = {r.row: r for r in grid.rows}
    for eid, v in zip(rows["MaskFormer ADE20K"].eval_ids, (44.0, 45.0, 47.0)):
        _write_metrics(grid.evals[eid].run_dir, {"val/mIoU": v, "val/PQSt": 33.0})
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", tables=["table2"], pdf=False)
    out = tmp_path / "reports" / "tables"
    wide = pd.read_csv(out / "table2.wide.csv", comment="#")
    # the paper's rows in its order, its column groups (Cityscapes first), ours next to the paper's number
    assert list(wide["row"]) == ["PerPixelBaseline", "PerPixelBaseline+", "MaskFormer (ours)"]
    mf = wide.iloc[2]
    assert mf["ADE20K (150 classes)/mIoU/ours"] == 45.0 and mf["ADE20K (150 classes)/mIoU/seeds"] == 3
    assert mf["ADE20K (150 classes)/mIoU/ours_std"] == round(pd.Series([44.0, 45.0, 47.0]).std(), 2)
    assert mf["ADE20K (150 classes)/mIoU/paper"] == 44.5
    assert list(wide.columns).index("Cityscapes (19 classes)/mIoU/ours") < list(wide.columns).index(
        "ADE20K (150 classes)/mIoU/ours")
    tex = (out / "table2.tex").read_text()
    assert "\\label{tab:table2}" in tex and "\\caption{MaskFormer vs. per-pixel" in tex
    assert "\\multicolumn{2}{c}{Cityscapes (19 classes)}" in tex and "PQ$^{\\mathrm{St}}$" in tex
    assert "45.0 $\\pm$ 1.5" in tex and "(44.5)" in tex  # ours ± std over 3 seeds, the paper's number below
    # a reproduced cell without a number: "–" (--) with a footnote naming why
    assert re.search(r"--\\textsuperscript\{[a-z]+\}", tex) and "missing: not run yet" in tex
    body = tex.split("\\begin{tabular}", 1)[1]
    assert not re.search(r"(?<!\\)[_#]|(?<![\\}])%|[–±×†]", body)  # escaped text (`}%` ends a line on purpose)


def test_shared_smoke_models_and_fps_device(tmp_path):
    params = load_params(write_params(tmp_path, {"table1": slice(0, 4)}), environ={})
    grid = expand(params, "smoke")
    rows = {r.row: r for r in grid.rows}
    for r in grid.rows:  # R50 and R101 map to one SmokeR18: the same runs
        for eid in r.eval_ids:
            _write_metrics(grid.evals[eid].run_dir, {"val/mIoU": 30.0, "val_ms/mIoU": 31.0, "perf/fps": 12.5,
                                                     "perf/fps_protocol": {"device": "cpu (1 threads)"}})
    assert rows["MaskFormer R50"].eval_ids == rows["MaskFormer R101"].eval_ids
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", tables=["table1"], pdf=False)
    out = tmp_path / "reports" / "tables"
    long = pd.read_csv(out / "table1.csv", comment="#", keep_default_na=False, na_values=[""])
    fps = long[(long.row == "MaskFormer R50") & (long.metric == "fps")].iloc[0]
    assert fps.ours == 12.5 and pd.isna(fps.delta) and fps.mark == "n/a" and fps.device == "cpu (1 threads)"
    tex = (out / "table1.tex").read_text()
    assert "same smoke model as ``MaskFormer R50''" in tex
    assert "fps measured on cpu (1 threads); the paper's on one V100" in tex
    assert "(24.5 V100)" in tex


def test_pdf_of_all_tables_fits_the_page(tmp_path):
    if shutil.which("pdflatex") is None or shutil.which("pdfinfo") is None:
        if os.environ.get("REQUIRE_SERVICES") == "1" or os.environ.get("CI"):  # scripts/test.sh installs it
            pytest.fail("pdflatex/pdfinfo missing in CI: scripts/install.sh runs scripts/install_tex.sh as root")
        pytest.skip("pdflatex not installed (bash scripts/install_tex.sh)")
    params = load_params(write_params(tmp_path, {"table7": slice(0, 9), "table3": slice(0, 8)}), environ={})
    grid = expand(params, "smoke")
    for r in grid.rows:
        for eid in r.eval_ids:
            _write_metrics(grid.evals[eid].run_dir, {k: 12.345 for k in r.columns.values()})
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports")
    out = tmp_path / "reports" / "tables"
    pdf = tmp_path / "reports" / "tables.pdf"  # reports/tables.pdf (issue 17; dvc.yaml tables outs)
    assert pdf.is_file() and not (out / "tables.log").exists() and not (out / "tables.pdf").exists()
    assert json.loads((out / "index.json").read_text())["pdf"] == f"{pdf} (0 overfull hbox)"  # pdflatex's log
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Page size:\s+595\.\d+ x 841\.\d+ pts \(A4\)", info)
    layouts = pt.load_layouts()
    assert int(re.search(r"Pages:\s+(\d+)", info).group(1)) == len(layouts)  # one page per table
    assert all(f"\\label{{tab:{t}}}" in (out / "tables.tex").read_text() for t in layouts)


def _paper_frames() -> dict[str, pd.DataFrame]:
    rows = load_paper_numbers()
    frames = {}
    for table in {r["table"] for r in rows}:
        frames[table] = pd.DataFrame([{"row": r["row"], "metric": r["metric"], "paper": float(r["value"]),
                                       "ours": None, "seeds": 0, "status": r["status"]}
                                      for r in rows if r["table"] == table])
    return frames


def test_every_claim_holds_on_the_papers_own_numbers():
    claims = cl.load_claims()
    assert len(claims) >= 20
    frames = _paper_frames()
    for claim in claims:
        v = cl.evaluate_claim(claim, frames, use_paper=True)
        assert v["verdict"] == "supported", (claim["id"], v)


def _frame(values: dict[tuple[str, str], tuple[float | None, float | None, int]]) -> dict[str, pd.DataFrame]:
    recs = [{"row": r, "metric": m, "ours": o, "ours_std": s, "seeds": n, "paper": 1.0, "status": "done",
             "cells": f"cell-{r}"} for (r, m), (o, s, n) in values.items()]
    return {"table5": pd.DataFrame(recs)}


@pytest.mark.parametrize("mask,box,expected,reason", [
    ((46.0, None, 1), (43.0, None, 1), "supported", "difference +3.00"),
    ((40.0, None, 1), (43.0, None, 1), "contradicted", "difference -3.00"),
    ((44.0, 1.0, 3), (43.0, 1.0, 3), "inconclusive", "within the seeds' spread"),
    ((46.0, 0.5, 3), (43.0, 0.5, 3), "supported", "beyond the seeds' spread 1.00"),
    ((None, None, 0), (43.0, None, 1), "inconclusive", "missing cells"),
])
def test_claim_verdicts(mask, box, expected, reason):
    claim = next(c for c in cl.load_claims() if c["id"] == "t5-mask-vs-box-matching")
    frames = _frame({("MaskFormer matching by mask", "PQ"): mask, ("MaskFormer matching by box", "PQ"): box})
    v = cl.evaluate_claim(claim, frames)
    assert v["verdict"] == expected and reason in v["reason"]
    assert [c["row"] for c in v["cells"]] == ["MaskFormer matching by mask", "MaskFormer matching by box"]


def test_fewer_seeds_than_the_paper_is_inconclusive(tmp_path):
    params = load_params(write_params(tmp_path, {"table4": slice(0, 4)}), environ={})
    grid = expand(params, "smoke")
    claim = next(c for c in cl.load_claims() if c["id"] == "t4b-bipartite-vs-fixed-miou")
    frames = {"table4": pd.DataFrame([
        {"row": "(b) MaskFormer-bipartite", "metric": "mIoU", "ours": 40.0, "ours_std": None, "seeds": 1},
        {"row": "(b) MaskFormer-fixed", "metric": "mIoU", "ours": 30.0, "ours_std": None, "seeds": 1}])}
    v = cl.evaluate_claim(claim, frames, grid=grid, params=params)
    assert v["verdict"] == "inconclusive" and "fewer seeds than the paper's protocol" in v["reason"]
    assert v["tendency"] == "agrees" and v["difference"] == 10.0
    assert [c["paper_seeds"] for c in v["cells"]] == [3, 3]  # profiles.paper.seeds: ADE20K semantic = 3
    # Table VIII names its semantic and panoptic rows alike: the metric picks the panoptic one (1 seed)
    (tmp_path / "t8").mkdir()
    params8 = load_params(write_params(tmp_path / "t8", {"table8": slice(0, 7)}), environ={})
    pan = next(c for c in cl.load_claims() if c["id"] == "t8-panoptic-needs-layers")
    frames = {"table8": pd.DataFrame([{"row": "6 layers", "metric": "PQ", "ours": 30.0, "ours_std": None, "seeds": 1},
                                      {"row": "1 layer", "metric": "PQ", "ours": 20.0, "ours_std": None, "seeds": 1}])}
    v = cl.evaluate_claim(pan, frames, grid=expand(params8, "smoke"), params=params8)
    assert [c["paper_seeds"] for c in v["cells"]] == [1, 1] and v["verdict"] == "supported"


def test_claims_json_written_by_the_tables_stage(tmp_path):
    params = load_params(write_params(tmp_path, {"table5": slice(0, 2)}), environ={})
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", pdf=False)
    report = json.loads((tmp_path / "reports" / "claims.json").read_text())
    assert report["scale"] == "smoke" and "not the paper" in report["note"]
    assert sum(report["counts"].values()) == len(report["claims"]) == len(cl.load_claims())
    t5 = next(c for c in report["claims"] if c["id"] == "t5-mask-vs-box-matching")
    assert t5["verdict"] == "inconclusive" and t5["scale"] == "smoke" and "missing cells" in t5["reason"]
    # what the tables stage prints and the tables flow logs and returns
    from pipeline.stages import tables_summary

    summary = tables_summary(tmp_path / "reports")
    assert summary["lines"][0] == "tables.pdf: not built (pdf=False)"
    assert summary["lines"][1].startswith("claims (smoke scale): 0 supported, 0 contradicted, ")
    assert any(line.split()[:2] == ["inconclusive", "t5-mask-vs-box-matching:"] for line in summary["lines"])
    assert summary["verdicts"]["t5-mask-vs-box-matching"] == "inconclusive"


def test_bad_claims_file_names_the_claim(tmp_path):
    bad = tmp_path / "claims.yaml"
    bad.write_text("- {id: x, claim: c, source: s, kind: greater, a: {table: t, row: r, metric: m}}\n")
    with pytest.raises(cl.ClaimsError, match=r"claim 0 \(x\): kind greater needs 'b'"):
        cl.load_claims(bad)


def test_report_leads_with_summary_then_paper_tables(tmp_path):
    from pipeline.report import build_report

    params_path = write_params(tmp_path, {"table6": slice(0, 7)})
    params = load_params(params_path, environ={})
    grid = expand(params, "smoke")
    for i, r in enumerate(grid.rows):
        for eid in r.eval_ids:
            _write_metrics(grid.evals[eid].run_dir, {"val/mIoU": 20.0 + i, "val/PQSt": 10.0 + i})
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", pdf=False)
    page = build_report("smoke", runs_root=tmp_path / "runs", tables_dir=tmp_path / "reports" / "tables",
                        out_dir=tmp_path / "reports", params_path=params_path, repo=tmp_path).read_text()
    order = [page.index(x) for x in ("id='summary'", "id='claims'", "<nav class='toc'>", "id='tables'",
                                     "id='table-table6'", "id='figures'", "id='cells'")]
    assert order == sorted(order)
    assert "7 done" in page and "contradicted" in page and "inconclusive" in page
    assert "Outside tolerance</b>: none (smoke scale" in page
    assert "<a href='#table-table6'>Table 6</a>" in page
    assert "solver_by_task" not in page and "panoptic cells: " in page  # the smoke settings, stated
    wide = page[page.index("<table class='paper-table' data-table='table6'>"):]
    wide = wide[:wide.index("</table>")]
    assert "<th colspan='2' class='group'>ADE20K</th>" in wide and "PQ<sup>St</sup>" in wide
    assert wide.index("PerPixelBaseline+") < wide.index(">20<") < wide.index(">1000<")
    assert "20.0<br><span class='paper'>(41.9)</span>" in wide  # ours over the paper's number
    for href in ("tables/table6.csv", "tables/table6.wide.csv", "tables/table6.tex"):
        assert f"href='{href}'" in page
    assert "MLflow runs behind this table (7)" in page


def test_per_class_figure_uses_the_main_model():
    from pipeline.report import main_model_rank
    from pipeline.status import CellState

    def cell(cid, **model):
        return CellState(cid, Path(cid), "done", config={"model": {"arch": "maskformer", "num_queries": 100,
                                                                   "dec_layers": 6, **model}})

    cells = [cell("ade20k-mf-q100-d6-nosa", dec_self_attention=False), cell("ade20k-mf-q100-d1", dec_layers=1),
             cell("ade20k-mf-q100-d6"), cell("ade20k-ppp", arch="per_pixel_plus")]
    assert sorted(cells, key=main_model_rank)[0].cell_id == "ade20k-mf-q100-d6"
    # at smoke scale the main model has 20 queries (default_queries) and serves the most rows
    main = cell("ade20k-mf-q20-d6", num_queries=20)
    main.rows = ["table2: MaskFormer ADE20K", "table6: Q20 ADE20K", "table7: semantic ADE20K", "table8: 6 layers"]
    cells[2].rows = ["table6: Q100 ADE20K"]
    cells[0].rows = ["table8: 6 layers no self-attention"]
    assert sorted(cells + [main], key=main_model_rank)[0] is main


def test_without_pdflatex_reports_tables_pdf_says_how_to_get_it(tmp_path, monkeypatch):
    # DVC has no optional outputs: reports/tables.pdf must exist after the stage even without pdflatex,
    # and then it is a one-page PDF with the install hint instead of the tables.
    monkeypatch.setattr(pt.shutil, "which", lambda name, *a, **k: None)
    params = load_params(write_params(tmp_path, {"table5": slice(0, 2)}), environ={})
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports")
    monkeypatch.undo()
    pdf = tmp_path / "reports" / "tables.pdf"
    assert pdf.read_bytes().startswith(b"%PDF-") and not list(pdf.parent.glob(".*.tmp"))
    note = json.loads((tmp_path / "reports" / "tables" / "index.json").read_text())["pdf"]
    assert note.startswith(f"not built, {pdf} says why: pdflatex not found") and "install_tex.sh" in note
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        assert "pdflatex not found" in text and "install_tex.sh" in text
