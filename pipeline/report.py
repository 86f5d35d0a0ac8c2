"""The study report a person opens: ``reports/index.html`` with the tables inline and PNG plots in ``reports/figures/``.

Inputs (never MLflow, per docs/ARCHITECTURE.md):
- ``reports/tables/*.csv`` written by the tables stage (pipeline/tables.py): one line per paper number,
  ``row, metric, paper, ours, delta, mark (ok|outside|n/a), status (cited|not run|...), ...`` (after a
  ``#`` caption line for people, which is skipped, never parsed). Rows with mark ``outside`` are
  coloured, ``cited`` rows marked (also accepted: boolean columns ``outside_tolerance`` / ``cited`` and
  ``profile`` / ``seeds`` / ``git_commit`` columns); every column is shown as it is.
- ``reports/tables/<table>.json`` beside each CSV: the table's provenance as data (title, profile,
  seeds, commit, device, smoke or not, study run, source runs; pipeline.tables.provenance).
- ``reports/study/plan.json``: the study's cells and their table rows (pipeline.plan, via pipeline.status).
- run folders ``runs/<profile>/<cell>/``: ``train_log.jsonl`` (training curves), ``config.yaml``
  (queries, dataset, seed), ``metrics.json`` (``val/mIoU``, ``val/PQSt``, ``val/IoU/<class>``,
  ``analysis/unique_categories_per_query``).

Plots: training loss per cell; mIoU and PQ^St against the number of queries (paper Table 6 /
query figure); unique categories predicted per query (paper Fig. 3 style analysis); per-class IoU.
Every table and figure states its provenance (profile, seeds, git commit); results of a smoke
profile (synthetic twins, tiny backbones) carry a banner saying they are not paper-scale numbers.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import paper_tables as pt
from pipeline.config import atomic_write_text
from pipeline.errors import UserError
from pipeline.plan import PLAN_FILE, load_plan
from pipeline.runfolder import git_commit, read_json
from pipeline.status import CellState, scan

TRUE_STRINGS = {"true", "1", "yes", "y", "x", "cited"}
CURVES_PER_FIGURE = 16  # training-curve small multiples per PNG (4 x 4)
MAX_CLASS_BARS = 60  # per-class IoU bars per dataset figure (the worst and best classes when more)


@dataclass
class Table:
    """One CSV of reports/tables with what the report derives from it."""

    name: str
    path: Path
    frame: Any  # pandas.DataFrame
    # The tables stage's <table>.json (pipeline.tables.provenance); {} for a CSV from elsewhere.
    provenance: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    outside: int = 0
    cited: int = 0


@dataclass
class Figure:
    file: str  # relative to the report folder: figures/<name>.png
    title: str
    caption: str


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return not (isinstance(value, float) and math.isnan(value)) and value != 0
    return str(value).strip().lower() in TRUE_STRINGS


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.2f}"
    return "" if value is None else str(value)


def _is_outside(record: dict, cols: dict[str, str]) -> bool:
    if "mark" in cols and str(record[cols["mark"]]).strip().lower() == "outside":
        return True
    return "outside_tolerance" in cols and _truthy(record[cols["outside_tolerance"]])


def _is_cited(record: dict, cols: dict[str, str]) -> bool:
    if "status" in cols and str(record[cols["status"]]).strip().lower() == "cited":
        return True
    return "cited" in cols and _truthy(record[cols["cited"]])


def _seeds_text(seeds: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in seeds.items()) if isinstance(seeds, dict) else str(seeds)


def load_tables(tables_dir: Path) -> list[Table]:
    """Every ``*.csv`` of the tables stage with its provenance record ``<table>.json`` (when present)."""
    import pandas as pd

    tables = []
    # Tables 1-8 first (the paper's order), then the appendix extras.
    paths = [p for p in Path(tables_dir).glob("*.csv") if not p.name.endswith(".wide.csv")]
    for path in sorted(paths, key=lambda p: (not p.stem.startswith("table"), p.stem)):
        with open(path, encoding="utf-8") as fh:
            captioned = fh.readline().startswith("#")  # the human caption line: skipped, not read
        frame = pd.read_csv(path, skiprows=1 if captioned else 0, keep_default_na=False, na_values=[""])
        meta = read_json(path.with_suffix(".json"))
        meta = meta if isinstance(meta, dict) else {}
        table = Table(path.stem, path, frame, title=str(meta.get("title") or path.stem))
        cols = {c.lower(): c for c in frame.columns}
        for key in ("profile", "seeds", "git_commit"):
            if key in cols:
                values = sorted({_fmt(v) for v in frame[cols[key]].tolist() if _fmt(v)})
                table.provenance[key] = ", ".join(values) or "n/a"
        table.provenance.update(meta)
        records = frame.to_dict("records")
        table.outside = sum(_is_outside(r, cols) for r in records)
        table.cited = sum(_is_cited(r, cols) for r in records)
        tables.append(table)
    return tables


def table_html(table: Table) -> str:
    frame = table.frame
    cols = {c.lower(): c for c in frame.columns}
    out_col, cited_col = cols.get("outside_tolerance"), cols.get("cited")
    mark_col, status_col = cols.get("mark"), cols.get("status")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for record in frame.to_dict("records"):
        classes = []
        if _is_outside(record, cols):
            classes.append("outside")
        if _is_cited(record, cols):
            classes.append("cited")
        cells = []
        for c in frame.columns:
            text = html.escape(_fmt(record[c]))
            if (c == cited_col and _truthy(record[c])) or (c == status_col and "cited" in classes):
                text = '<span class="badge">cited</span>'
            elif (c == out_col and _truthy(record[c])) or (c == mark_col and "outside" in classes):
                text = '<span class="badge bad">outside</span>'
            cells.append(f"<td>{text}</td>")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<table class="results" data-table="{html.escape(table.name)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


# ------------------------------------------------------------------------------------------ plots

def _save(fig, out: Path) -> None:
    """Write a PNG atomically (temp file + rename), so a reader never sees half a figure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _label(cell: CellState) -> str:
    return cell.rows[0].split(": ", 1)[-1] if cell.rows else cell.cell_id


def _seed(cell: CellState) -> str:
    return str((cell.config.get("run") or {}).get("seed", "?"))


def plot_training_curves(cells: list[CellState], fig_dir: Path, provenance: str) -> list[Figure]:
    import matplotlib.pyplot as plt

    with_logs = [(c, c.train_log()) for c in cells]
    with_logs = [(c, log) for c, log in with_logs if log]
    figures = []
    for page in range(0, len(with_logs), CURVES_PER_FIGURE):
        chunk = with_logs[page:page + CURVES_PER_FIGURE]
        ncols = min(4, len(chunk))
        nrows = math.ceil(len(chunk) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
        for ax, (cell, log) in zip(axes.flat, chunk):
            its = [e["iter"] for e in log]
            ax.plot(its, [e.get("train/total_loss", float("nan")) for e in log], color="tab:blue", lw=1.2)
            ax.set_title(f"{_label(cell)}\n{cell.cell_id}" if cell.rows else cell.cell_id, fontsize=7)
            ax.set_xlabel("iteration", fontsize=7)
            ax.set_ylabel("total loss", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        fig.tight_layout()
        name = f"figures/training_curves_{page // CURVES_PER_FIGURE + 1}.png"
        _save(fig, fig_dir.parent / name)
        plt.close(fig)
        figures.append(Figure(name, f"Training loss per cell ({page + 1}-{page + len(chunk)} of {len(with_logs)})",
                              f"train/total_loss from each run folder's train_log.jsonl. {provenance}"))
    return figures


def plot_queries(cells: list[CellState], fig_dir: Path, provenance: str) -> list[Figure]:
    """mIoU and PQ^St against Q for MaskFormer cells that differ only in the number of queries (Table 6)."""
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, dict[str, float]]] = {}
    use_rows = any(c.rows for c in cells)  # without the grid (no params), every MaskFormer cell counts
    for cell in cells:
        if cell.state != "done" or (use_rows and not any("table6" in r for r in cell.rows)):
            continue
        model = cell.config.get("model") or {}
        if model.get("arch", "maskformer") != "maskformer" or not model.get("num_queries"):
            continue
        dataset = (cell.config.get("data") or {}).get("dataset", "?")
        series.setdefault(dataset, {})[int(model["num_queries"])] = cell.metrics
    series = {d: by_q for d, by_q in series.items() if len(by_q) >= 2}
    if not series:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]  # overlapping series stay visible
    for i, (dataset, by_q) in enumerate(sorted(series.items())):
        qs = sorted(by_q)
        line, marker = styles[i % len(styles)]
        for ax, key in zip(axes, ("val/mIoU", "val/PQSt")):
            ys = [by_q[q].get(key, float("nan")) for q in qs]
            ax.plot(qs, ys, linestyle=line, marker=marker, markersize=8 - 2 * (i % 3), label=dataset)
    for ax, title in zip(axes, ("mIoU", "PQ$^{St}$")):
        ax.set_xscale("log")
        ax.set_xlabel("number of queries Q")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs number of queries")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    name = "figures/queries.png"
    _save(fig, fig_dir.parent / name)
    plt.close(fig)
    return [Figure(name, "Number of queries (paper Table 6)",
                   f"val/mIoU and val/PQSt of the table6 MaskFormer cells against Q. {provenance}")]


def plot_query_categories(cells: list[CellState], fig_dir: Path, provenance: str) -> list[Figure]:
    """Unique categories predicted per query (``analysis/unique_categories_per_query``), sorted per cell."""
    import matplotlib.pyplot as plt

    found = [(c, c.metrics.get("analysis/unique_categories_per_query")) for c in cells if c.state == "done"]
    found = [(c, v) for c, v in found if isinstance(v, list) and v]
    if not found:
        return []
    found = sorted(found, key=lambda cv: (len(cv[1]), cv[0].cell_id))[:8]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for cell, counts in found:
        ax.plot(range(len(counts)), sorted(counts, reverse=True), lw=1.2,
                label=f"{(cell.config.get('data') or {}).get('dataset', '?')} Q={len(counts)} ({_label(cell)})")
    ax.set_xlabel("query (sorted by the number of categories it predicts)")
    ax.set_ylabel("unique categories (p > 0.5)")
    ax.set_title("Unique categories predicted per query")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    name = "figures/query_categories.png"
    _save(fig, fig_dir.parent / name)
    plt.close(fig)
    return [Figure(name, "Categories per query",
                   f"From metrics.json analysis/unique_categories_per_query of {len(found)} cells. {provenance}")]


def main_model_rank(cell: CellState) -> tuple:
    """Sort key that puts a dataset's main MaskFormer first: the run that serves the most table rows (the main
    model is Table 2's, Table 1's R50, Table VII's "semantic" and Table VIII's "6 layers" row at once), then the
    fewest deviations from the paper's defaults (mask_former/config.py: Q 100, 6 decoder layers with
    self-attention, bipartite matching, semantic inference, single scale); ablations (no self-attention, 1
    layer, fixed matching, other Q) come later."""
    model = cell.config.get("model") or {}
    test = cell.config.get("test") or {}
    loss = cell.config.get("loss") or {}
    return (model.get("arch", "maskformer") != "maskformer", -len(cell.rows),
            sum([model.get("num_queries") != 100, model.get("dec_layers", 6) != 6,
                 model.get("dec_self_attention", True) is False,
                 loss.get("matching", "bipartite") not in ("hungarian", "bipartite"),  # "hungarian": run folders before one spelling
                 bool(test.get("tta")), test.get("strategy", "semantic") not in ("semantic", "general")]),
            cell.cell_id)


def plot_per_class_iou(cells: list[CellState], fig_dir: Path, provenance: str) -> list[Figure]:
    """Per-class IoU bars for the default MaskFormer cell of each semantic dataset (and its per-pixel baseline)."""
    import matplotlib.pyplot as plt

    by_dataset: dict[str, list[CellState]] = {}
    for cell in cells:
        if cell.state == "done" and any(k.startswith("val/IoU/") for k in cell.metrics):
            by_dataset.setdefault((cell.config.get("data") or {}).get("dataset", "?"), []).append(cell)
    figures = []
    for dataset, group in sorted(by_dataset.items()):
        chosen = sorted(group, key=main_model_rank)[:1]
        baseline = [c for c in group if (c.config.get("model") or {}).get("arch") == "per_pixel"][:1]
        chosen += baseline
        classes = [k[len("val/IoU/"):] for k in chosen[0].metrics if k.startswith("val/IoU/")]
        if len(classes) > MAX_CLASS_BARS:
            ordered = sorted(classes, key=lambda n: chosen[0].metrics[f"val/IoU/{n}"]
                             if isinstance(chosen[0].metrics[f"val/IoU/{n}"], (int, float)) else -1.0)
            classes = ordered[:MAX_CLASS_BARS // 2] + ordered[-MAX_CLASS_BARS // 2:]
        width = 0.8 / len(chosen)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(classes) * len(chosen) + 2), 3.8))
        for i, cell in enumerate(chosen):
            ys = [cell.metrics.get(f"val/IoU/{n}") for n in classes]
            # A class absent from the evaluated images has no IoU (NaN, stored as null in metrics.json).
            ys = [y if isinstance(y, (int, float)) and math.isfinite(y) else 0.0 for y in ys]
            ax.bar([j + i * width for j in range(len(classes))], ys, width=width,
                   label=f"{(cell.config.get('model') or {}).get('arch', 'maskformer')}: {cell.cell_id}")
        ax.set_xticks([j + width * (len(chosen) - 1) / 2 for j in range(len(classes))])
        ax.set_xticklabels(classes, rotation=90, fontsize=6)
        ax.set_ylabel("IoU (%)")
        ax.set_title(f"Per-class IoU, {dataset}")
        ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"figures/per_class_iou_{re.sub(r'[^A-Za-z0-9_]+', '_', dataset)}.png"
        _save(fig, fig_dir.parent / name)
        plt.close(fig)
        figures.append(Figure(name, f"Per-class IoU: {dataset}",
                              f"metrics.json val/IoU/<class> of {', '.join(c.cell_id for c in chosen)}. {provenance}"))
    return figures


# ----------------------------------------------------------------------------------------- report

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px 32px;color:#1b1f24;background:#fff}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:2px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;font-size:13px}.banner{background:#fff4ce;border:1px solid #d4a72c;padding:10px 14px;margin:14px 0;border-radius:6px}
table.results{border-collapse:collapse;font-size:13px;margin:8px 0}table.results th,table.results td{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
table.results th{background:#f6f8fa}tr.outside td{background:#ffebe9}tr.cited td{color:#57606a;font-style:italic}
.badge{display:inline-block;padding:0 6px;border-radius:8px;background:#ddf4ff;color:#0969da;font-size:11px;font-style:normal}
.badge.bad{background:#ff8182;color:#fff}.legend span{margin-right:18px}.prov{font-size:12px;color:#57606a}
figure{margin:14px 0}figure img{max-width:100%;border:1px solid #d0d7de}figcaption{font-size:12px;color:#57606a}
table.status td,table.status th{border:1px solid #d0d7de;padding:2px 6px;font-size:12px}table.status{border-collapse:collapse}
table.paper-table{border-collapse:collapse;font-size:13px;margin:8px 0;border-top:2px solid #1b1f24;border-bottom:2px solid #1b1f24}
table.paper-table th{padding:3px 9px;border-bottom:1px solid #1b1f24;text-align:center}table.paper-table th.group{border-bottom:1px solid #8c959f}
table.paper-table td{padding:3px 9px;text-align:center;vertical-align:top}table.paper-table td.stub{text-align:left;white-space:nowrap}
table.paper-table tr.section td{text-align:left;font-style:italic;color:#57606a;padding-top:6px}
table.paper-table tr.cited td{color:#57606a}table.paper-table td.outside{font-weight:bold;color:#cf222e}
.paper{color:#57606a;font-size:11px}sup.fn{color:#0969da}ol.footnotes{font-size:12px;color:#57606a;list-style:none;padding-left:0}
nav.toc{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:4px 16px;margin:14px 0;font-size:13px}
nav.toc ul{margin:4px 0}.badge.ok{background:#dafbe1;color:#1a7f37}.badge.warn{background:#fff8c5;color:#9a6700}
table.claims td{vertical-align:top;font-size:12px}ul.summary .badge{margin:1px 0}details{margin:4px 0 14px}
.s-done{color:#1a7f37}.s-failed{color:#cf222e}.s-running{color:#9a6700}.s-missing{color:#57606a}
"""


def run_commit(cell: CellState) -> str:
    """The git commit a cell was trained at: its config tags, else the self-describing final checkpoint."""
    tagged = ((cell.config.get("run") or {}).get("tags") or {}).get("git_commit")
    if tagged:
        return str(tagged)
    final = cell.path / "checkpoints" / "final.pt"
    if not final.is_file():
        return ""
    try:
        import torch

        # mmap: only the small header is read, not the weights; weights_only: no arbitrary unpickling.
        state = torch.load(final, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint only loses the provenance line
        return ""
    return str(state.get("git_commit", ""))[:12] if isinstance(state, dict) else ""


def _is_smoke(profile: str, cells: list[CellState]) -> bool:
    if profile == "smoke":
        return True
    for cell in cells:
        root = (cell.config.get("data") or {}).get("root")
        backbone = str((cell.config.get("model") or {}).get("backbone", ""))
        if backbone.startswith("Smoke") or (root and (Path(root) / "SYNTHETIC.json").exists()):
            return True
    return False


def profile_settings_html(params_path: str | Path | None, profile: str) -> str:
    """What the smoke profile changes against the paper (params.yaml profiles.<profile> and data:), as a list."""
    if params_path is None:
        return ""
    try:
        from pipeline.params import load_params

        params = load_params(params_path)
        prof = params.profiles[profile]
    except Exception:  # noqa: BLE001 - the banner only loses its details
        return ""

    def kv(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None)

    items = [f"solver: {kv(prof.solver.model_dump())}"]
    items += [f"{task} cells: {kv(s.model_dump())}" for task, s in prof.solver_by_task.items()]
    items.append(f"model: {kv(prof.model.model_dump())}")
    items += [f"{m}-matched cells: {q} queries where the paper uses its default 100"
              for m, q in prof.queries_by_matching.items()]
    if prof.default_queries:
        items.append(f"queries: {prof.default_queries} where the paper uses its default 100 (rows that set "
                     f"queries, e.g. Table 6's, keep theirs)")
    items.append(f"input: {kv(prof.input.model_dump())}")
    items.append("backbones: " + ", ".join(f"{a} → {b}" for a, b in prof.backbone_map.items())
                 + " (rows that differ only in these backbones share one model and say so)")
    if prof.synthetic:
        twins = {d: (t.get("num_classes"), t.get("num_images")) for d, t in params.data.items() if isinstance(t, dict)}
        items.append("twins (K classes, images): " + ", ".join(f"{d} {k}, {n}" for d, (k, n) in twins.items()))
        shaped = [d for d, t in params.data.items() if isinstance(t, dict) and t.get("class_boxes")]
        if shaped:  # params.yaml data.<d>.class_boxes (maskformer_core/data/synth.py make_scene)
            items.append("twins whose classes have their own box shape (thing aspect) and place (stuff band "
                         "height), so a box tells the class: " + ", ".join(shaped))
    items.append("inference thresholds: the paper's (object mask 0.8 COCO / 0.7 ADE20K panoptic, 0.3 general "
                 "inference on semantic data; overlap 0.8)")
    return (f"<details><summary>What profile <code>{html.escape(profile)}</code> changes (params.yaml "
            f"<code>profiles.{html.escape(profile)}</code>, <code>data:</code>)</summary><ul>"
            + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul></details>")


def _read_claims(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _wide_tables(tables: list[Table], smoke: bool) -> dict[str, pt.WideTable]:
    """The paper-layout tables pivoted from the long CSVs (pipeline/data/table_layouts.yaml); `smoke`:
    the study's scale when a table has no provenance record."""
    layouts = pt.load_layouts()
    out = {}
    for table in tables:
        if table.name not in layouts or "row" not in table.frame.columns:
            continue
        frame = table.frame.astype(object).where(table.frame.notna(), None)
        records = frame.to_dict("records")
        out[table.name] = pt.pivot(table.name, layouts[table.name], records, shared=pt.shared_rows(records),
                                   synthetic=bool(table.provenance.get("synthetic", smoke)))
    return out


def _rel(path: Path, out_dir: Path) -> str:
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:
        return str(path)


def _links_html(table: Table, out_dir: Path, pdf: Path, links: dict[str, str]) -> str:
    files = [("long CSV", table.path), ("wide CSV", table.path.with_name(f"{table.name}.wide.csv")),
             ("LaTeX", table.path.with_name(f"{table.name}.tex")), ("PDF (all tables)", pdf)]
    items = [f"<a href='{html.escape(_rel(f, out_dir))}'>{label}</a>" for label, f in files if f.exists()]
    cells = []
    if "cells" in table.frame.columns:
        for value in table.frame["cells"].tolist():
            cells += [c for c in str(value or "").split(";") if c and c != "nan"]
    cells = list(dict.fromkeys(cells))
    runs = []
    for cell in cells:
        link = links.get(cell, "")
        runs.append(f"<a href='{html.escape(link)}'>{html.escape(cell)}</a>" if link.startswith("http")
                    else f"<code>{html.escape(cell)}</code>" + (f" ({html.escape(link)})" if link else ""))
    text = "<p class='prov links'>Files: " + " · ".join(items)
    if runs:
        text += (f"</p><details class='prov'><summary>MLflow runs behind this table ({len(runs)})</summary>"
                 + "<br>".join(runs) + "</details>")
    else:
        text += "; no runs yet.</p>"
    return text


VERDICT_CLASS = {"supported": "ok", "contradicted": "bad", "inconclusive": "warn"}


def summary_html(counts: dict[str, int], note: str, claims: dict | None, tables: list[Table], smoke: bool) -> list[str]:
    """The report's first section: cells done/failed, the claims' verdicts, rows outside tolerance."""
    out = ["<h2 id='summary'>Summary</h2>", "<ul class='summary'>"]
    out.append("<li><b>Cells</b>: " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + (f". {html.escape(note)}" if note else "") + "</li>")
    if claims:
        c = claims.get("counts", {})
        scale = " (smoke scale: checks the pipeline, not the paper)" if claims.get("scale") == "smoke" else ""
        badges = " ".join(f"<span class='badge {VERDICT_CLASS.get(v['verdict'], '')}' title='{html.escape(v['claim'])}: "
                          f"{html.escape(v.get('reason', ''))}'>{html.escape(v['id'])}</span>"
                          for v in claims.get("claims", []))
        out.append(f"<li><b>Claims</b>{scale}: {c.get('supported', 0)} supported, {c.get('contradicted', 0)} "
                   f"contradicted, {c.get('inconclusive', 0)} inconclusive (<a href='#claims'>details</a>, "
                   f"<code>reports/claims.json</code>)<br>{badges}</li>")
    else:
        out.append("<li><b>Claims</b>: no reports/claims.json (run the tables stage)</li>")
    outside = [(t.name, r) for t in tables for r in t.frame.to_dict("records")
               if str(r.get("mark", "")).strip().lower() == "outside"]
    if outside:
        listed = "; ".join(f"{html.escape(t)} {html.escape(str(r.get('row')))} {html.escape(str(r.get('metric')))}"
                           for t, r in outside[:30])
        out.append(f"<li><b>Outside tolerance</b>: {len(outside)} numbers: {listed}"
                   + (" …" if len(outside) > 30 else "") + "</li>")
    else:
        out.append("<li><b>Outside tolerance</b>: none"
                   + (" (smoke scale: no tolerance marks; the numbers are not comparable to the paper)" if smoke
                      else "") + "</li>")
    zeros = [(t.name, r) for t in tables for r in t.frame.to_dict("records")
             if str(r.get("source", "")) != "grid only" and _fmt(r.get("ours")) == "0.00"]
    if zeros:  # a PQ / general-inference 0 means no query passed the inference threshold
        listed = "; ".join(f"{html.escape(t)} {html.escape(str(r.get('row')))} {html.escape(str(r.get('metric')))}"
                           for t, r in zeros[:30])
        out.append(f"<li><b>Exactly 0</b> ({len(zeros)} numbers; for PQ and general inference: no query passed the "
                   f"paper's class-score threshold): {listed}" + (" …" if len(zeros) > 30 else "") + "</li>")
    out.append("</ul>")
    if claims:
        n = len(claims.get("claims", []))
        out.append(f"<details id='claims'><summary><b>The paper's claims on these numbers"
                   + (" (smoke scale)" if claims.get("scale") == "smoke" else "")
                   + f"</b>: {n} claims with their verdicts, differences and the cells used</summary>")
        out.append(f"<p class='prov'>{html.escape(claims.get('note', ''))}. Rules: pipeline/claims.py; claims: "
                   "pipeline/data/claims.yaml.</p>")
        rows = []
        for v in claims.get("claims", []):
            used = "; ".join(
                f"{x['row']} {x['metric']} = {_fmt(x['ours']) or '–'}"
                + (f" ± {_fmt(x['ours_std'])}" if x.get("ours_std") is not None and (x.get("seeds") or 0) > 1 else "")
                + f" (n={x.get('seeds', 0)}; paper {_fmt(x['paper']) or '–'})" for x in v.get("cells", []))
            diff = "" if v.get("difference") is None else f"{v['difference']:+.2f}"
            rows.append(f"<tr><td>{html.escape(v['claim'])}<br><span class='prov'>{html.escape(v['source'])}</span></td>"
                        f"<td><span class='badge {VERDICT_CLASS.get(v['verdict'], '')}'>{html.escape(v['verdict'])}"
                        f"</span></td><td>{html.escape(diff)}</td><td>{html.escape(str(v.get('tendency') or ''))}</td>"
                        f"<td>{html.escape(v.get('reason', ''))}</td><td class='prov'>{html.escape(used)}</td></tr>")
        out.append("<table class='results claims'><thead><tr><th>claim</th><th>verdict</th><th>difference</th>"
                   "<th>tendency</th><th>why</th><th>cells used: ours (seeds; paper)</th></tr></thead><tbody>"
                   + "".join(rows) + "</tbody></table></details>")
    return out


def toc_html(tables: list[Table], wide: dict[str, pt.WideTable], figures: bool) -> str:
    items = ["<li><a href='#summary'>Summary</a> (<a href='#claims'>claims</a>)</li>",
             "<li><a href='#tables'>Tables</a><ul>"]
    for t in tables:
        name = wide[t.name].paper if t.name in wide else t.name
        title = t.title
        items.append(f"<li><a href='#table-{html.escape(t.name)}'>{html.escape(name)}</a>: {html.escape(title)}</li>")
    items.append("</ul></li>")
    if figures:
        items.append("<li><a href='#figures'>Figures</a></li>")
    items.append("<li><a href='#cells'>Cells</a></li>")
    return "<nav class='toc'><h2>Contents</h2><ul>" + "".join(items) + "</ul></nav>"


def build_report(profile: str, *, runs_root: str | Path = "runs", tables_dir: str | Path = "reports/tables",
                 out_dir: str | Path = "reports", params_path: str | Path | None = "params.yaml",
                 repo: str | Path = ".", plan_path: str | Path | None = None) -> Path:
    """Write ``<out_dir>/index.html`` and ``<out_dir>/figures/*.png``; returns the HTML path.

    `plan_path`: the study's plan (default ``<tables_dir>/../study/plan.json``): the cells and their rows;
    `params_path`: only for the smoke banner's list of what the profile changes."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir, repo = Path(out_dir), Path(repo)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    commit = git_commit(repo, short=12, mark_dirty=True)
    plan_path = Path(tables_dir).parent / PLAN_FILE if plan_path is None else plan_path
    cells, note = scan(profile, runs_root, plan_path, resolve_links=True)
    tables = load_tables(Path(tables_dir))
    try:  # the study's own word on its scale; without a plan, guessed from the run folders
        smoke = load_plan(plan_path, profile).provenance.synthetic
    except UserError:
        smoke = _is_smoke(profile, cells)
    done = [c for c in cells if c.state == "done"]
    seeds = sorted({_seed(c) for c in done}) or ["n/a"]
    run_commits = sorted({run_commit(c) for c in done} - {""})
    provenance = (f"Profile {profile}{' (smoke scale: synthetic twins, tiny backbones)' if smoke else ''}; "
                  f"seeds {', '.join(seeds)}; runs at commit {', '.join(run_commits) or 'not recorded'}; "
                  f"report at commit {commit}.")
    # Only figures this report writes (names below) are replaced; other files in the folder are the user's.
    for old in fig_dir.glob("*.png"):
        if re.fullmatch(r"(training_curves_\d+|queries|query_categories|per_class_iou_\w+)\.png", old.name):
            old.unlink()
    figures = (plot_training_curves(cells, fig_dir, provenance) + plot_queries(cells, fig_dir, provenance)
               + plot_query_categories(cells, fig_dir, provenance) + plot_per_class_iou(cells, fig_dir, provenance))

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>MaskFormer reproduction report "
             f"({html.escape(profile)})</title><style>{CSS}</style></head><body>",
             "<h1>MaskFormer reproduction report</h1>",
             f"<p class='meta'>Per-Pixel Classification is Not All You Need for Semantic Segmentation (NeurIPS 2021). "
             f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} at git commit <code>{html.escape(commit)}</code>; "
             f"profile <b>{html.escape(profile)}</b>; run folders <code>{html.escape(str(Path(runs_root) / profile))}</code>.</p>"]
    if smoke:
        parts.append("<div class='banner' id='smoke-banner'><b>Smoke-scale results.</b> These numbers come from the "
                     "smoke profile: synthetic twins of the datasets, tiny backbones (SmokeR18 / SmokeSwin), 96x96 crops "
                     "and a few iterations on CPU. They exercise the whole pipeline; they are <b>not</b> comparable to "
                     "the paper's numbers, and every deviation mark below is expected at this scale."
                     + profile_settings_html(params_path, profile) + "</div>")
    counts = {s: sum(c.state == s for c in cells) for s in ("done", "running", "interrupted", "failed", "missing")}
    claims = _read_claims(Path(tables_dir).parent / "claims.json")
    wide = _wide_tables(tables, smoke)
    links = {c.cell_id: c.link or "" for c in cells}
    parts += summary_html(counts, note, claims, tables, smoke)
    parts.append(toc_html(tables, wide, bool(figures)))

    parts.append("<h2 id='tables'>Tables in the paper's layout</h2>")
    parts.append("<p class='legend prov'>Each cell: ours (median over seeds) above, the paper's number in "
                 "parentheses below; letters point to the notes under the table. <b>Bold</b> / red: outside the "
                 "tolerance of params.yaml <code>tables.tolerance</code>. Each table links its long CSV (the "
                 "machine-readable source), wide CSV, LaTeX and the MLflow runs behind it.</p>")
    if not tables:
        parts.append(f"<p>No tables found in <code>{html.escape(str(tables_dir))}</code> (run the tables stage).</p>")
    pdf = Path(tables_dir).parent / "tables.pdf"  # written by the tables stage (pipeline.tables.TABLES_PDF)
    for table in tables:
        prov = table.provenance
        paper_name = wide[table.name].paper if table.name in wide else table.name
        parts.append(f"<h3 id='table-{html.escape(table.name)}'>{html.escape(paper_name)}: {html.escape(table.title)}</h3>")
        study = (f"; device {prov['device']}; study run {prov['study_run']}" if prov.get("study_run") else "")
        parts.append(f"<p class='prov'>Profile {html.escape(str(prov.get('profile', profile)))}; seeds "
                     f"{html.escape(_seeds_text(prov.get('seeds', ', '.join(seeds))))}; git commit "
                     f"{html.escape(str(prov.get('commit') or prov.get('git_commit') or ', '.join(run_commits) or commit))}"
                     f"{html.escape(study)}"
                     + (f"; {html.escape(prov['smoke_label'])}" if prov.get("smoke_label") else "")
                     + f"; {table.outside} outside tolerance, {table.cited} cited.</p>")
        if table.name in wide:
            parts.append(pt.to_html(wide[table.name], links=_links_html(table, out_dir, pdf, links)))
        else:
            parts.append(_links_html(table, out_dir, pdf, links))
        parts.append(f"<details><summary>Long format ({len(table.frame)} lines: one per row and metric, with "
                     f"delta, mark, status and reason)</summary>{table_html(table)}</details>")

    parts.append("<h2 id='figures'>Figures</h2>")
    if not figures:
        parts.append("<p>No finished runs with logs or metrics yet.</p>")
    for fig in figures:
        parts.append(f"<figure><img src='{html.escape(fig.file)}' alt='{html.escape(fig.title)}'>"
                     f"<figcaption><b>{html.escape(fig.title)}.</b> {html.escape(fig.caption)}</figcaption></figure>")

    parts.append("<h2 id='cells'>Cells</h2><table class='status'><thead><tr><th>state</th><th>cell</th><th>rows</th>"
                 "<th>seed</th><th>reason</th><th>MLflow</th></tr></thead><tbody>")
    for cell in cells:
        link = cell.link or ""
        link_html = (f"<a href='{html.escape(link)}'>run</a>" if link.startswith("http") and " " not in link
                     else html.escape(link))
        parts.append(f"<tr><td class='s-{cell.state}'>{cell.state}</td><td><code>{html.escape(cell.cell_id)}</code></td>"
                     f"<td>{html.escape('; '.join(cell.rows))}</td><td>{html.escape(_seed(cell))}</td>"
                     f"<td>{html.escape(cell.reason[:160])}</td><td>{link_html}</td></tr>")
    parts.append("</tbody></table></body></html>\n")

    out = out_dir / "index.html"
    atomic_write_text(out, "\n".join(parts))  # no temp file left behind on a full or read-only disk
    return out
