"""Tables 1-8 (and appendix extras) from the cells' metrics.json files next to the paper's numbers.

For every paper number (pipeline/data/paper_numbers.csv, with its source table/row) a line gives:
paper value and std, our median over seeds, our std, number of seeds, delta, and `outside` when
|delta| > tolerance, where tolerance = max(params.yaml `tables.tolerance[metric]`, 2 x paper std).
Rows the paper cites from other works are marked `cited` (never shown as reproduced); rows with no
grid cell are `not run` with the reason from the CSV; failed or missing cells are shown with their
status and reason. Each file starts with a caption: profile, seeds, git commit and, for synthetic
profiles, "smoke scale: synthetic data, small models — not comparable to the paper" (and no
tolerance marks). Output: reports/tables/<table>.csv and .tex (booktabs via pandas Styler.to_latex).

Params (M) and GFLOPs of Tables 1 and 3 come from the DVC stage `model_stats`
(reports/model_stats/paper_models.json, pipeline.paper_model_stats): the REAL paper architecture of
each row, counted on CPU, so they are marked ok/outside in every profile (relative tolerance
STATS_TOLERANCE) and say so in `reason`. fps lines name the device of `perf/fps_protocol`; only a
V100 (the paper's device, FACTS E.4) gets a tolerance mark, any other device "n/a".
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import atomic_write_text
from pipeline.grid import Grid, expand
from pipeline.paper_model_stats import DEFAULT_OUT as MODEL_STATS_FILE
from pipeline.paper_model_stats import load_stats
from pipeline.params import Params, load_params
from pipeline.study import METRICS_FILE, read_json, unit_state

PAPER_NUMBERS = Path(__file__).parent / "data" / "paper_numbers.csv"
SMOKE_NOTE = "smoke scale: synthetic data, small models — not comparable to the paper"
# Relative tolerance of the counted columns (task spec): params are exact up to the paper's rounding to
# whole millions; FLOPs depend on the counting convention (FACTS H.3: all vs last-layer mask einsums).
STATS_TOLERANCE = {"params (M)": 0.01, "GFLOPs": 0.06}
PAPER_FPS_DEVICE = "V100"  # FACTS E.4: one V100, batch 1
COLUMNS = ["row", "metric", "paper", "paper_std", "ours", "ours_std", "seeds", "delta", "mark", "status", "reason", "source"]


def load_paper_numbers(path: str | os.PathLike = PAPER_NUMBERS) -> list[dict[str, str]]:
    """Rows of paper_numbers.csv: table, row, metric, value, std, status (reproduce|cited|not_run), source, note."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(rows, start=2):
        key = (r["table"], r["row"], r["metric"])
        if key in seen:  # the table would show one of the two numbers, silently
            raise ValueError(f"{path}:{i}: {key[0]} row {key[1]!r} metric {key[2]!r} is already on line {seen[key]}")
        seen[key] = i
        if r["status"] not in ("reproduce", "cited", "not_run"):
            raise ValueError(f"{path}:{i}: status {r['status']!r} is not reproduce, cited or not_run")
        float(r["value"])
    return rows


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _base_metric(column: str) -> str:
    return column.split(" ")[0]


def _tolerance(params: Params, column: str, paper_std: float | None) -> float:
    tol = params.tables.tolerance.get(_base_metric(column), 1.0)
    return max(tol, 2 * paper_std) if paper_std else tol


def _cell_status(grid: Grid, eval_ids: list[str]) -> tuple[str, str]:
    states = [unit_state(grid.evals[e].run_dir) for e in eval_ids]
    for state, reason in states:
        if state == "failed":
            return "failed", reason
    for state, reason in states:
        if state == "interrupted":
            return "interrupted", reason
    if all(s == "done" for s, _ in states):
        return "done", ""
    if any(s == "done" for s, _ in states):
        return "partial", f"{sum(s == 'done' for s, _ in states)} of {len(states)} seeds done"
    # a variant whose training failed carries the training's reason
    for eid in eval_ids:
        unit = grid.evals[eid]
        if unit.is_variant:
            tstate, treason = unit_state(grid.train[unit.train_id].run_dir)
            if tstate == "failed":
                return "failed", f"training cell failed: {treason}"
    return "missing", "not run yet"


def _fill_model_stats(line: dict[str, Any], p: dict[str, str], stats: dict | None) -> None:
    """Fill a params (M) / GFLOPs line from the model_stats JSON (None: the file does not exist)."""
    if stats is None:
        line.update(status="not run", reason=f"{MODEL_STATS_FILE} missing: run `dvc repro model_stats`")
        return
    s = stats.get((p["table"], p["row"]))
    if s is None:
        line.update(status="not run", reason=f"row not in {MODEL_STATS_FILE}: rerun `dvc repro model_stats`")
        return
    arch = f"paper architecture {s['backbone']}, K={s['model_kwargs']['num_classes']}, not the smoke model"
    if p["metric"] == "params (M)":
        ours, digits = float(s["params_M"]), 3
        what = "nn.Parameters counted on CPU (FrozenBN buffers excluded)"
    else:
        if s.get("gflops") is None:
            line.update(status=s.get("gflops_status") or "not computed",
                        reason=f"FLOPs not counted by the model_stats stage ({arch})")
            return
        ours, digits = float(s["gflops"]), 2
        what = f"fvcore, {s['input_note']}; all decoder layers' mask einsums"
        if s.get("gflops_last_layer_only") is not None:
            what += f" (last layer only: {float(s['gflops_last_layer_only']):.2f})"
    rel = ours / line["paper"] - 1
    line.update(ours=round(ours, digits), delta=round(ours - line["paper"], digits), status="computed",
                mark="ok" if abs(rel) <= STATS_TOLERANCE[p["metric"]] else "outside",
                reason=f"{what}; {arch}; {rel:+.1%} vs paper (tolerance {STATS_TOLERANCE[p['metric']]:.0%})")


def _fps_devices(metrics: list[dict[str, Any]]) -> list[str]:
    """Devices named by `perf/fps_protocol` of the cells that measured fps ('unknown' when absent)."""
    out = []
    for m in metrics:
        if isinstance(m.get("perf/fps"), (int, float)):
            proto = m.get("perf/fps_protocol")
            out.append(str(proto.get("device", "unknown")) if isinstance(proto, dict) else "unknown")
    return list(dict.fromkeys(out))


def build_table(params: Params, grid: Grid, table: str, paper: list[dict[str, str]],
                model_stats: dict | None = None) -> pd.DataFrame:
    """One table as a long DataFrame (one line per paper number and metric), in COLUMNS order.

    `model_stats`: pipeline.paper_model_stats.load_stats() of the model_stats stage (None: not run);
    it fills the params (M) / GFLOPs lines of the rows the paper reproduces.
    """
    synthetic = params.profiles[grid.profile].synthetic
    by_row: dict[str, list[Any]] = {}
    for r in grid.rows:
        if r.table == table:
            by_row.setdefault(r.row, []).append(r)
    lines = []
    seen: set[tuple[str, str]] = set()
    for p in (p for p in paper if p["table"] == table):
        value = float(p["value"])
        pstd = float(p["std"]) if p.get("std") else None
        line = {
            "row": p["row"], "metric": p["metric"], "paper": value, "paper_std": pstd, "ours": None,
            "ours_std": None, "seeds": 0, "delta": None, "mark": "", "status": "", "reason": "", "source": p["source"],
        }
        seen.add((p["row"], p["metric"]))
        if p["status"] == "cited":
            line.update(status="cited", reason=p.get("note", ""))
        elif p["metric"] in STATS_TOLERANCE and p["status"] == "reproduce":
            _fill_model_stats(line, p, model_stats)
        elif p["status"] == "not_run" or p["row"] not in by_row:
            line.update(status="not run", reason=p.get("note", "") or "no grid cell for this row")
        else:
            grid_rows = [r for r in by_row[p["row"]] if p["metric"] in r.columns]
            if not grid_rows:
                line.update(status="not run", reason=f"no grid cell provides {p['metric']}")
            else:
                r = grid_rows[0]
                metric_key = r.columns[p["metric"]]
                values, cell_metrics = [], []
                for eid in r.eval_ids:
                    m = read_json(Path(grid.evals[eid].run_dir) / METRICS_FILE) or {}
                    cell_metrics.append(m)
                    if isinstance(m.get(metric_key), (int, float)):
                        values.append(float(m[metric_key]))
                status, reason = _cell_status(grid, r.eval_ids)
                line.update(status=status, reason=reason, seeds=len(values))
                devices = _fps_devices(cell_metrics) if _base_metric(p["metric"]) == "fps" else []
                if values:
                    ours = statistics.median(values)
                    line.update(ours=round(ours, 2), delta=round(ours - value, 2),
                                ours_std=round(statistics.stdev(values), 2) if len(values) > 1 else None)
                    if devices:  # fps is only comparable on the paper's device (FACTS E.4)
                        line["reason"] = "; ".join(x for x in (reason, f"measured on {', '.join(devices)}; "
                                                               f"paper: one {PAPER_FPS_DEVICE}, batch 1") if x)
                    if synthetic or (devices and not all(PAPER_FPS_DEVICE in d for d in devices)):
                        line["mark"] = "n/a"
                    elif abs(ours - value) > _tolerance(params, p["metric"], pstd):
                        line["mark"] = "outside"
                    else:
                        line["mark"] = "ok"
                elif status == "done":
                    line.update(status="failed", reason=f"metrics.json has no {metric_key}")
        lines.append(line)
    # grid cells without a paper number (e.g. fps measured) are listed too
    for row_name, rows in by_row.items():
        for r in rows:
            for col, key in r.columns.items():
                if (row_name, col) in seen:
                    continue
                seen.add((row_name, col))
                cell_metrics = [read_json(Path(grid.evals[e].run_dir) / METRICS_FILE) or {} for e in r.eval_ids]
                values = [float(m[key]) for m in cell_metrics if isinstance(m.get(key), (int, float))]
                status, reason = _cell_status(grid, r.eval_ids)
                if _base_metric(col) == "fps" and (devices := _fps_devices(cell_metrics)):
                    reason = "; ".join(x for x in (reason, f"measured on {', '.join(devices)}") if x)
                lines.append({"row": row_name, "metric": col, "paper": None, "paper_std": None,
                              "ours": round(statistics.median(values), 2) if values else None,
                              "ours_std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                              "seeds": len(values), "delta": None, "mark": "", "status": status, "reason": reason,
                              "source": "grid only"})
    return pd.DataFrame(lines, columns=COLUMNS)


def caption(params: Params, grid: Grid, table: str) -> str:
    prof = params.profiles[grid.profile]
    seeds = ", ".join(f"{k}={v}" for k, v in prof.seeds.items())
    title = params.grid[table].title if table in params.grid else "appendix table (cited / not run rows only)"
    text = f"{table}: {title} | profile {grid.profile} | seeds {seeds} | git {git_commit()}"
    if prof.synthetic:
        text += f" | {SMOKE_NOTE}"
    return text


def _to_latex(df: pd.DataFrame, cap: str) -> str:
    shown = df.drop(columns=["source"]).copy()
    shown["reason"] = shown["reason"].astype(str).str.slice(0, 60)
    styler = shown.style.hide(axis="index").format(precision=2, na_rep="--")
    body = styler.to_latex(hrules=True, caption=cap.replace("_", r"\_").replace("%", r"\%"))
    return body


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)  # no temp file left on a full or read-only disk; the error names `path`


def build_tables(
    profile: str | None = None,
    *,
    params: Params | None = None,
    params_path: str | os.PathLike = "params.yaml",
    reports_dir: str | os.PathLike = "reports",
    tables: list[str] | None = None,
    model_stats_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write reports/tables/<table>.csv and .tex for every grid table; returns the written paths.

    `model_stats_path`: the model_stats stage's JSON (default <reports_dir>/model_stats/paper_models.json).
    """
    params = params or load_params(params_path)
    grid = expand(params, profile, tables)
    paper = load_paper_numbers()
    model_stats = load_stats(Path(reports_dir) / MODEL_STATS_FILE.relative_to("reports")
                             if model_stats_path is None else model_stats_path)
    out_dir = Path(reports_dir) / "tables"
    written: list[Path] = []
    names = grid.tables()
    if tables is None:  # tables with paper numbers but no grid cells (test-server rows, cited only)
        names += [t for t in dict.fromkeys(p["table"] for p in paper) if t not in names]
    for table in names:
        df = build_table(params, grid, table, paper, model_stats)
        cap = caption(params, grid, table)
        csv_path = out_dir / f"{table}.csv"
        _atomic_write(csv_path, f"# {cap}\n" + df.to_csv(index=False))
        tex_path = out_dir / f"{table}.tex"
        _atomic_write(tex_path, f"% {cap}\n" + _to_latex(df, cap))
        written += [csv_path, tex_path]
    summary = {t: {"rows": int(len(pd.read_csv(out_dir / f"{t}.csv", comment="#")))} for t in names}
    _atomic_write(out_dir / "index.json", json.dumps({"profile": grid.profile, "tables": summary}, indent=1) + "\n")
    written.append(out_dir / "index.json")
    return written
