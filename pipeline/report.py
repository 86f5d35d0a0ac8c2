"""The study report a person opens: ``reports/index.html`` with the tables inline and PNG plots in ``reports/figures/``.

Inputs (never MLflow, per docs/ARCHITECTURE.md):
- ``reports/tables/*.csv`` written by the tables stage (pipeline/tables.py): a first line
  ``# tableN: title | profile P | seeds ... | git C`` (provenance), then one line per paper number:
  ``row, metric, paper, ours, delta, mark (ok|outside|n/a), status (cited|not run|...), ...``.
  Rows with mark ``outside`` are coloured, ``cited`` rows marked (also accepted: boolean columns
  ``outside_tolerance`` / ``cited`` and ``profile`` / ``seeds`` / ``git_commit`` columns); every
  column is shown as it is.
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
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    provenance: dict[str, str] = field(default_factory=dict)
    caption: str = ""
    outside: int = 0
    cited: int = 0


@dataclass
class Figure:
    file: str  # relative to the report folder: figures/<name>.png
    title: str
    caption: str


def git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() if out.returncode == 0 else "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                           text=True, timeout=10)
    return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


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


def parse_caption(line: str) -> dict[str, str]:
    """``# table6: title | profile smoke | seeds default=1 | git abc123 | note`` -> provenance fields."""
    out = {}
    for part in line.lstrip("#").split("|"):
        key, _, value = part.strip().partition(" ")
        if key in ("profile", "seeds") and value:
            out[key] = value.strip()
        elif key == "git" and value:
            out["git_commit"] = value.strip()
    return out


def load_tables(tables_dir: Path) -> list[Table]:
    """Every ``*.csv`` of the tables stage; a first line ``# caption`` carries title and provenance."""
    import pandas as pd

    tables = []
    # Tables 1-8 first (the paper's order), then the appendix extras.
    for path in sorted(Path(tables_dir).glob("*.csv"), key=lambda p: (not p.stem.startswith("table"), p.stem)):
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        caption = first.strip().lstrip("#").strip() if first.startswith("#") else ""
        frame = pd.read_csv(path, skiprows=1 if caption else 0, keep_default_na=False, na_values=[""])
        table = Table(path.stem, path, frame, caption=caption)
        cols = {c.lower(): c for c in frame.columns}
        for key in ("profile", "seeds", "git_commit"):
            if key in cols:
                values = sorted({_fmt(v) for v in frame[cols[key]].tolist() if _fmt(v)})
                table.provenance[key] = ", ".join(values) or "n/a"
        table.provenance.update(parse_caption(caption) if caption else {})
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


def plot_per_class_iou(cells: list[CellState], fig_dir: Path, provenance: str) -> list[Figure]:
    """Per-class IoU bars for the default MaskFormer cell of each semantic dataset (and its per-pixel baseline)."""
    import matplotlib.pyplot as plt

    by_dataset: dict[str, list[CellState]] = {}
    for cell in cells:
        if cell.state == "done" and any(k.startswith("val/IoU/") for k in cell.metrics):
            by_dataset.setdefault((cell.config.get("data") or {}).get("dataset", "?"), []).append(cell)
    figures = []
    for dataset, group in sorted(by_dataset.items()):
        def rank(c: CellState) -> tuple:
            model = c.config.get("model") or {}
            return (model.get("arch", "maskformer") != "maskformer", model.get("num_queries") != 100,
                    model.get("dec_layers", 6) != 6, c.cell_id)

        chosen = sorted(group, key=rank)[:1]
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


def build_report(profile: str, *, runs_root: str | Path = "runs", tables_dir: str | Path = "reports/tables",
                 out_dir: str | Path = "reports", params_path: str | Path | None = "params.yaml",
                 repo: str | Path = ".") -> Path:
    """Write ``<out_dir>/index.html`` and ``<out_dir>/figures/*.png``; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir, repo = Path(out_dir), Path(repo)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    commit = git_commit(repo)
    cells, note = scan(profile, runs_root, params_path, resolve_links=True)
    tables = load_tables(Path(tables_dir))
    smoke = _is_smoke(profile, cells)
    done = [c for c in cells if c.state == "done"]
    seeds = sorted({_seed(c) for c in done}) or ["n/a"]
    run_commits = sorted({run_commit(c) for c in done} - {""})
    provenance = (f"Profile {profile}{' (smoke scale: synthetic twins, tiny backbones)' if smoke else ''}; "
                  f"seeds {', '.join(seeds)}; runs at commit {', '.join(run_commits) or 'not recorded'}; "
                  f"report at commit {commit}.")
    for old in fig_dir.glob("*.png"):
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
                     "the paper's numbers, and every deviation mark below is expected at this scale.</div>")
    counts = {s: sum(c.state == s for c in cells) for s in ("done", "running", "interrupted", "failed", "missing")}
    parts.append("<p class='meta'>Cells: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                 + (f". {html.escape(note)}" if note else "") + "</p>")

    parts.append("<h2>Tables: paper vs ours</h2>")
    parts.append("<p class='legend prov'><span><span class='badge bad'>outside</span> red row: |ours - paper| beyond the "
                 "tolerance of params.yaml <code>tables.tolerance</code></span><span><span class='badge'>cited</span> "
                 "grey italic row: the number is quoted from the paper, not measured</span></p>")
    if not tables:
        parts.append(f"<p>No tables found in <code>{html.escape(str(tables_dir))}</code> (run the tables stage).</p>")
    for table in tables:
        prov = table.provenance
        parts.append(f"<h3 id='table-{html.escape(table.name)}'>{html.escape(table.caption.split('|')[0] or table.name)}</h3>")
        parts.append(f"<p class='prov'>Source <code>{html.escape(str(table.path))}</code>; profile "
                     f"{html.escape(prov.get('profile', profile))}; seeds {html.escape(prov.get('seeds', ', '.join(seeds)))}; "
                     f"git commit {html.escape(prov.get('git_commit', ', '.join(run_commits) or commit))}; "
                     f"{table.outside} outside tolerance, {table.cited} cited.</p>")
        parts.append(table_html(table))

    parts.append("<h2>Figures</h2>")
    if not figures:
        parts.append("<p>No finished runs with logs or metrics yet.</p>")
    for fig in figures:
        parts.append(f"<figure><img src='{html.escape(fig.file)}' alt='{html.escape(fig.title)}'>"
                     f"<figcaption><b>{html.escape(fig.title)}.</b> {html.escape(fig.caption)}</figcaption></figure>")

    parts.append("<h2>Cells</h2><table class='status'><thead><tr><th>state</th><th>cell</th><th>rows</th>"
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
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".html.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    os.replace(tmp, out)
    return out
