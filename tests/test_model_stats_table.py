"""Model statistics in Tables 1/3: the model_stats stage's JSON (paper rows, atomic write) and the tables'
params (M) / GFLOPs columns filled from it with relative-tolerance marks; fps lines name their device."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main as cli_main
from pipeline.errors import UserError
from pipeline.grid import expand
from pipeline.paper_model_stats import SCHEMA, load_stats, paper_rows, write_stats
from pipeline.params import load_params
from pipeline.tables import build_tables
from tests._study_helpers import REPO, write_params, write_study_plan


def _stat(table, row, backbone, params_m, gflops, status="computed", k=150,
          note="fixed 512x512 crop (MaskFormer tools/analyze_model.py)"):
    return {"table": table, "row": row, "dataset": "ade20k", "backbone": backbone,
            "model_kwargs": {"arch": "maskformer", "backbone": backbone, "num_classes": k},
            "params": int(params_m * 1e6), "params_M": params_m, "input_size": [512, 512], "input_note": note,
            "gflops": gflops, "gflops_last_layer_only": None if gflops is None else gflops - 2.21,
            "gflops_status": status, "seconds": 1.0}


def _line(df, row, metric):
    hits = df[(df.row == row) & (df.metric == metric)]
    assert len(hits) == 1, (row, metric)
    return hits.iloc[0]


def test_tables_fill_params_and_gflops_with_relative_marks(tmp_path):
    # a real-data profile so marks apply; Table 1 cells 0-3 = R50 and R101 (s.s. and m.s.)
    params = load_params(write_params(tmp_path, {"table1": slice(0, 4)}, synthetic=False), environ={})
    grid = expand(params, "smoke")
    r50 = next(r for r in grid.rows if r.row == "MaskFormer R50" and "fps" in r.columns)
    run_dir = Path(grid.evals[r50.eval_ids[0]].run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(
        {"val/mIoU": 44.0, "perf/fps": 3.25, "perf/fps_protocol": {"device": "cpu (2 threads)", "batch_size": 1}}))
    (run_dir / "status.json").write_text(json.dumps({"status": "done"}))
    write_stats([
        _stat("table1", "MaskFormer R50", "R50", 41.255, 55.01),       # +0.62% params, +3.8% FLOPs: ok
        _stat("table1", "MaskFormer R101", "R101", 60.195, 80.0),      # FLOPs +9.6% vs 73: outside
        _stat("table1", "MaskFormer R101c", "R101c", 60.65, None, "not computed (cost)"),  # params +1.08%
    ], tmp_path / "reports" / "model_stats" / "paper_models.json")
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", tables=["table1"])
    df = pd.read_csv(tmp_path / "reports" / "tables" / "table1.csv", comment="#", keep_default_na=False)

    p = _line(df, "MaskFormer R50", "params (M)")
    assert (float(p.paper), float(p.ours), float(p.delta), p.mark, p.status) == (41.0, 41.255, 0.255, "ok", "computed")
    assert "not the smoke model" in p.reason and "+0.6% vs paper" in p.reason
    g = _line(df, "MaskFormer R50", "GFLOPs")
    assert (float(g.ours), g.mark) == (55.01, "ok") and "last layer only: 52.80" in g.reason
    assert _line(df, "MaskFormer R101", "GFLOPs").mark == "outside"
    assert _line(df, "MaskFormer R101", "params (M)").mark == "ok"
    assert _line(df, "MaskFormer R101c", "params (M)").mark == "outside"  # 1% is tight: 60.65 vs 60
    cost = _line(df, "MaskFormer R101c", "GFLOPs")
    assert (cost.status, cost.ours, cost.mark) == ("not computed (cost)", "", "")
    swin = _line(df, "MaskFormer Swin-T", "params (M)")  # row absent from the JSON
    assert swin.status == "not run" and "model_stats" in swin.reason
    cited = _line(df, "DeepLabV3+ R50c", "params (M)")
    assert (cited.status, cited.ours, cited.mark) == ("cited", "", "")
    fps = _line(df, "MaskFormer R50", "fps")  # CPU fps: shown with its device, never marked against the V100
    assert (float(fps.ours), fps.mark) == (3.25, "n/a") and "cpu (2 threads)" in fps.reason and "V100" in fps.reason

    # no stats file: the columns say how to produce it
    write_study_plan(params, tmp_path / "reports")
    build_tables(params=params, reports_dir=tmp_path / "reports", tables=["table1"],
                 model_stats_path=tmp_path / "absent.json")
    df = pd.read_csv(tmp_path / "reports" / "tables" / "table1.csv", comment="#", keep_default_na=False)
    p = _line(df, "MaskFormer R50", "params (M)")
    assert p.status == "not run" and "dvc repro model_stats" in p.reason and p.ours == ""


def test_bad_stats_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "paper_models.json"
    bad.write_text(json.dumps({"schema": "something-else", "rows": []}))
    with pytest.raises(UserError, match="paper_models.json"):
        load_stats(bad)
    bad.write_text("{truncated")
    with pytest.raises(UserError, match="not valid JSON"):
        load_stats(bad)


def test_paper_rows_use_the_real_architectures_and_paper_inputs():
    params = load_params(REPO / "params.yaml", environ={})
    specs = {(s["table"], s["row"]): s for s in paper_rows(params)}
    # one spec per row label (the m.s. cell of a row is the same model); the smoke profile is not used
    assert len([k for k in specs if k[0] == "table1"]) == 8 and len([k for k in specs if k[0] == "table3"]) == 8
    r50 = specs[("table1", "MaskFormer R50")]
    assert (r50["model_kwargs"]["backbone"], r50["model_kwargs"]["num_classes"], r50["input_size"]) == ("R50", 150, [512, 512])
    assert "pretrained" not in r50["model_kwargs"]  # random init: nothing is downloaded
    assert specs[("table1", "MaskFormer Swin-L†")]["input_size"] == [640, 640]  # configs/ade20k-150/swin/*res640.yaml
    coco = specs[("table3", "MaskFormer R50+6Enc")]
    assert coco["model_kwargs"]["pixel_decoder"] == "transformer_encoder" and coco["model_kwargs"]["num_classes"] == 133
    assert coco["input_size"] == [800, 1067] and "100 COCO val images" in coco["input_note"]
    assert specs[("table3", "MaskFormer Swin-T")]["model_kwargs"]["pixel_decoder"] == "base"
    with pytest.raises(UserError, match="No such row"):
        paper_rows(params, rows=["No such row"])


def test_stage_command_writes_r50_params_atomically(tmp_path, capsys):
    out = tmp_path / "model_stats" / "paper_models.json"
    out.parent.mkdir()
    out.write_text("old")
    base = ["model-stats-table", "--params", str(REPO / "params.yaml"), "--out", str(out), "--threads", "1",
            "--overwrite"]
    # bad input: refused before any work, the old file untouched
    assert cli_main(base + ["--row", "MaskFormer R5O"]) == 2
    assert out.read_text() == "old" and "R5O" in capsys.readouterr().err
    assert cli_main(base + ["--table", "table1", "--row", "MaskFormer R50", "--params-only"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA and doc["device"] == "cpu"
    (row,) = doc["rows"]
    # docs/FIDELITY.md §5: 41.255M = backbone 23.455 + pixel decoder 7.540 + predictor 10.259 (FrozenBN excluded)
    assert (row["row"], row["params_M"], row["gflops"], row["gflops_status"]) == ("MaskFormer R50", 41.255, None, "not requested")
    assert sorted(p.name for p in out.parent.iterdir()) == ["paper_models.json"]  # no temp file left
    # a failing write keeps the previous file and leaves no temp file
    with pytest.raises(TypeError):
        write_stats([{"table": "table1", "row": "x", "bad": object()}], out)
    assert json.loads(out.read_text()) == doc
    assert sorted(p.name for p in out.parent.iterdir()) == ["paper_models.json"]
