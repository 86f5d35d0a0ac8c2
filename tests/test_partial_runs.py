"""A partial study run (`study --table N`, a deployment of some tables) updates only its part of the
study's records: reports/study/cells.json keeps the other tables' cells, reports/metrics.json their
metrics, reports/plots/queries.csv its Table 6 lines."""
from __future__ import annotations

import json

from pipeline.study import plan_study, summarize
from tests._study_helpers import STAND_IN, write_params
from tests.test_study import _run_all


def test_partial_run_merges_into_the_whole_study_records(tmp_path):
    # table6's first 3 rows (PerPixelBaseline+, Q20, Q50): at smoke scale Q20 is also table7's main model,
    # so Q50 is the cell only the whole study runs
    params_path = write_params(tmp_path, {"table6": slice(0, 3), "table7": slice(0, 3)})
    reports = tmp_path / "reports"

    whole = plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=reports)
    counts = summarize(whole, _run_all(whole))
    assert counts["failed"] == 0
    cells = json.loads((reports / "study" / "cells.json").read_text())
    metrics = json.loads((reports / "metrics.json").read_text())
    queries = (reports / "plots" / "queries.csv").read_text()
    assert set(metrics) == {"table6", "table7"} and len(queries.splitlines()) == 3  # header, Q20, Q50
    all_ids = {c["cell_id"] for c in cells["cells"]}

    part = plan_study(params_path=params_path, tables=["7"], cell_fn=STAND_IN, reports_dir=reports)
    part_counts = summarize(part, _run_all(part))
    mine = set(part.grid.train) | set(part.variant_ids())
    assert part_counts["total"] == len(mine) < len(all_ids)
    assert part_counts["skipped"] == len(mine)  # all done in the first run
    after = json.loads((reports / "study" / "cells.json").read_text())
    assert {c["cell_id"] for c in after["cells"]} == all_ids
    assert after["tables"] == ["table7"] and after["counts"]["total"] == len(all_ids)
    kept = {c["cell_id"]: c for c in cells["cells"] if c["cell_id"] not in mine}
    for c in after["cells"]:
        if c["cell_id"] in kept:  # the other table's cells keep their recorded outcome
            assert c == kept[c["cell_id"]]
        else:
            assert c["skipped"] and c["status"] == "done"
    assert json.loads((reports / "metrics.json").read_text()) == metrics
    assert (reports / "plots" / "queries.csv").read_text() == queries


def test_queries_plot_draws_one_line_per_dataset_in_dvc(tmp_path):
    """Table 6 over two datasets -> one CSV per dataset; DVC's top-level plot (dvc.yaml) reads each file
    as its own line (`dvc plots show --json`, real DVC in a scratch repository)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    params_path = write_params(tmp_path, {"table6": slice(0, 14)})
    plan = plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=tmp_path / "reports")
    summarize(plan, _run_all(plan))
    folder = tmp_path / "reports" / "plots" / "queries"
    files = sorted(p.name for p in folder.glob("*.csv"))
    assert len(files) == 2
    for name in files:  # one line: queries ascending, one dataset
        lines = (folder / name).read_text().splitlines()
        assert lines[0] == "queries,mIoU" and len(lines) >= 5

    repo_dvc = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    plot = repo_dvc["plots"][0]["queries_per_dataset"]
    scratch = tmp_path / "scratch"
    shutil.copytree(tmp_path / "reports", scratch / "reports")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=scratch, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=scratch, check=True)
    wanted = {f"reports/plots/queries/{n}": "mIoU" for n in files}
    assert set(wanted) <= set(plot["y"])  # the datasets drawn are the ones dvc.yaml lists
    (scratch / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"queries_per_dataset": dict(plot, y=wanted)}]}))
    out = subprocess.run([dvc, "plots", "show", "--json"], cwd=scratch, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    content = shown["data"]["queries_per_dataset"][0]["content"]
    assert {v["filename"] for v in content["data"]["values"]} == set(files)
    assert content["encoding"]["strokeDash"]["field"] == "filename"  # one line per file = per dataset


def test_metrics_are_split_per_table_for_dvc(tmp_path):
    # table6's first 3 rows (PerPixelBaseline+, Q20, Q50): at smoke scale Q20 is also table7's main model,
    # so Q50 is the cell only the whole study runs
    params_path = write_params(tmp_path, {"table6": slice(0, 3), "table7": slice(0, 3)})
    reports = tmp_path / "reports"
    plan = plan_study(params_path=params_path, cell_fn=STAND_IN, reports_dir=reports)
    summarize(plan, _run_all(plan))
    combined = json.loads((reports / "metrics.json").read_text())
    files = sorted(p.name for p in (reports / "metrics").glob("*.json"))
    assert files == ["table6.json", "table7.json"]
    for table in ("table6", "table7"):
        assert json.loads((reports / "metrics" / f"{table}.json").read_text()) == combined[table]
