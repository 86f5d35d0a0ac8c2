"""Tests of the report (pipeline/report.py) and `python -m pipeline report`, rendered in headless Chromium.

The run folders here are written by hand in the engine's file format (docs/ARCHITECTURE.md "Run
folder"), so the expected content of every table row and figure is known.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.report import build_report, load_tables

CLASSES = ["wall", "floor", "sky", "tree"]


def write_cell(root: Path, cell_id: str, *, queries: int, state: str = "done", arch: str = "maskformer",
               dataset: str = "ade20k", miou: float = 30.0, iters: int = 40) -> Path:
    folder = root / cell_id
    folder.mkdir(parents=True)
    config = {"model": {"arch": arch, "backbone": "SmokeR18", "num_queries": queries, "dec_layers": 6},
              "data": {"dataset": dataset, "root": str(root / "no-data")},
              "solver": {"max_iter": iters}, "run": {"seed": 0, "tags": {"git_commit": "abc123def456"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with open(folder / "train_log.jsonl", "w") as fh:
        for it in range(10, iters + 1, 10):
            fh.write(json.dumps({"iter": it, "train/total_loss": 5.0 / it * 10, "train/lr": 1e-4}) + "\n")
    if state == "done":
        metrics = {"val/mIoU": miou, "val/PQSt": miou - 5,
                   **{f"val/IoU/{c}": miou + 5 * i for i, c in enumerate(CLASSES)}}
        if arch == "maskformer":
            metrics["analysis/unique_categories_per_query"] = [(q * 7) % 4 for q in range(queries)]
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "status.json").write_text(json.dumps({"status": state, "time": "2026-01-01T00:00:00",
                                                    **({"reason": "RuntimeError: boom"} if state == "failed" else {})}))
    return folder


@pytest.fixture
def study(tmp_path):
    runs = tmp_path / "runs" / "smoke"
    write_cell(runs, "ade20k-q20", queries=20, miou=20.0)
    write_cell(runs, "ade20k-q100", queries=100, miou=31.5)
    write_cell(runs, "ade20k-pp", queries=0, arch="per_pixel", miou=25.0)
    write_cell(runs, "ade20k-broken", queries=50, state="failed")
    tables = tmp_path / "reports" / "tables"
    tables.mkdir(parents=True)
    # The tables stage's format (pipeline/tables.py): a caption line for people (never read back: this one
    # says nothing the report shows), then one line per paper number; the provenance as data beside it.
    (tables / "table6.csv").write_text(
        "# table6 (caption for people)\n"
        "row,metric,paper,paper_std,ours,ours_std,seeds,delta,mark,status,reason,source\n"
        "Q20 ADE20K,mIoU,42.9,,20.0,,1,-22.9,outside,done,,paper Table 6\n"
        "Q100 ADE20K,mIoU,44.5,,44.1,,1,-0.4,ok,done,,paper Table 6\n"
        "Q1000 ADE20K,mIoU,42.4,,,,0,,,cited,from another work,paper Table 6\n")
    (tables / "table6.json").write_text(json.dumps(PROVENANCE))
    return tmp_path


# reports/tables/table6.json as pipeline.tables.provenance writes it.
PROVENANCE = {"table": "table6", "title": "Number of queries (R50)", "profile": "smoke", "seeds": {"default": 1},
              "commit": "abc123def456", "tables_commit": "abc123def456", "device": "cpu", "synthetic": True,
              "smoke_label": "smoke scale: synthetic data, small models — not comparable to the paper",
              "released": False, "study_run": "20260101-000000-a1b2c3", "plan": "reports/study/plan.json",
              "source_runs": {}}


def _png_std(path: Path) -> float:
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float32).std())


def test_tables_are_parsed_with_marks(study):
    (table,) = load_tables(study / "reports" / "tables")
    assert (table.outside, table.cited) == (1, 1)
    assert table.provenance == PROVENANCE  # read as data, not parsed from the caption line
    assert table.title == "Number of queries (R50)"


def _images_load(page: str, folder: Path) -> list[str]:
    """The `src` of every <img> of `page`; each must be a file under `folder` that decodes as an image."""
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", page.replace("'", '"'))
    for src in srcs:
        path = folder / src
        assert path.is_file(), src
        with Image.open(path) as im:
            im.load()  # decodes the whole file, not only the header
            assert im.width > 100 and im.height > 100, (src, im.size)
    return srcs


def _plotted(fig) -> list[dict]:
    """Per axes: the (x, y) of every line and the heights of every bar."""
    return [{"lines": [(list(map(float, ln.get_xdata())), list(map(float, ln.get_ydata()))) for ln in ax.get_lines()],
             "bars": [float(p.get_height()) for p in ax.patches]} for ax in fig.axes]


def test_report_html_and_figures(study, monkeypatch):
    from pipeline import report

    plotted = {}
    real_save = report._save

    def spy(fig, out):
        plotted[out.name] = _plotted(fig)
        real_save(fig, out)

    monkeypatch.setattr(report, "_save", spy)
    out = build_report("smoke", runs_root=study / "runs", tables_dir=study / "reports" / "tables",
                       out_dir=study / "reports", params_path=None, repo=study)
    page = out.read_text()
    assert 'id="smoke-banner"' in page.replace("'", '"')
    # The outside-tolerance row is coloured, the cited one marked, the in-tolerance one neither.
    rows = re.findall(r"<tr( class=\"[^\"]*\")?><td>([^<]+ ADE20K)</td>", page)
    assert dict((name, cls) for cls, name in rows) == {
        "Q20 ADE20K": ' class="outside"', "Q100 ADE20K": "", "Q1000 ADE20K": ' class="cited"'}
    assert "seeds default=1" in page and "abc123def456" in page and "Number of queries (R50)" in page
    assert "study run 20260101-000000-a1b2c3" in page and "device cpu" in page  # from table6.json
    figs = sorted(p.name for p in (study / "reports" / "figures").glob("*.png"))
    assert figs == ["per_class_iou_ade20k.png", "queries.png", "query_categories.png", "training_curves_1.png"]
    for name in figs:
        assert f"figures/{name}" in page
        assert _png_std(study / "reports" / "figures" / name) > 5.0  # a drawn plot, not a blank canvas
    assert sorted(_images_load(page, out.parent)) == [f"figures/{n}" for n in figs]
    # The data drawn, from the run folders written above:
    # Table 6 plot: the two done MaskFormer cells (per-pixel and failed ones left out), mIoU and PQ^St vs Q.
    q = plotted["queries.png"]
    assert q[0]["lines"] == [([20.0, 100.0], [20.0, 31.5])] and q[1]["lines"] == [([20.0, 100.0], [15.0, 26.5])]
    cats = plotted["query_categories.png"][0]["lines"]
    assert [ys for _, ys in cats] == [sorted([float((i * 7) % 4) for i in range(n)], reverse=True) for n in (20, 100)]
    # Per-class IoU: the Q=100 MaskFormer cell, then the per-pixel baseline, class by class.
    assert plotted["per_class_iou_ade20k.png"][0]["bars"] == [31.5, 36.5, 41.5, 46.5, 25.0, 30.0, 35.0, 40.0]
    curves = [ax["lines"] for ax in plotted["training_curves_1.png"] if ax["lines"]]
    assert len(curves) == 4 and all(c == [([10.0, 20.0, 30.0, 40.0], [5.0 / it * 10 for it in (10, 20, 30, 40)])] for c in curves)
    # The failed cell is listed with its reason; no temporary files are left behind.
    assert "RuntimeError: boom" in page
    assert not list((study / "reports").rglob("*.tmp"))


def test_report_cli_unknown_profile_is_an_error(run_cli, tmp_path):
    proc = run_cli("report", "--profile", "nope", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "unknown profile 'nope'" in proc.stderr
    assert not (tmp_path / "out").exists()


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                "--virtual-time-budget=20000"]


def render(chromium: str, page: Path, work: Path) -> tuple[Path, str]:
    """Screenshot (1400x2000 PNG) and DOM of ``page`` in headless Chromium."""
    shot = work / "screenshot.png"
    url = page.resolve().as_uri()
    common = [chromium, *CHROME_FLAGS]
    subprocess.run([*common, f"--user-data-dir={work / 'profile1'}", f"--screenshot={shot}", "--window-size=1400,2000",
                    url], capture_output=True, timeout=180, check=True)
    dom = subprocess.run([*common, f"--user-data-dir={work / 'profile2'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    return shot, dom


@pytest.mark.browser
def test_report_renders_in_chromium(study, chromium, tmp_path):
    out = build_report("smoke", runs_root=study / "runs", tables_dir=study / "reports" / "tables",
                       out_dir=study / "reports", params_path=None, repo=study)
    shot, dom = render(chromium, out, tmp_path)
    assert _png_std(shot) > 10.0  # text, tables and plots: far from a blank page
    assert 'data-table="table6"' in dom and "Q20 ADE20K" in dom
    assert dom.count("<img") == 4
    _images_load(dom, out.parent)  # every image the browser was given exists and decodes
