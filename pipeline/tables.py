"""Tables 1-8 (and appendix extras) from the cells' metrics.json files next to the paper's numbers.

For every paper number (pipeline/data/paper_numbers.csv, with its source table/row) a line gives:
paper value and std, our median over seeds, our std, number of seeds, delta, and `outside` when
|delta| > tolerance, where tolerance = max(params.yaml `tables.tolerance[metric]`, 2 x paper std).
Rows the paper cites from other works are marked `cited` (never shown as reproduced); rows with no
grid cell are `not run` with the reason from the CSV; failed or missing cells are shown with their
status and reason. The rows and cells come from the study's plan file (reports/study/plan.json,
pipeline.plan), never from re-expanding params.yaml's grid; params.yaml gives only the `tables:`
tolerances. Each table's provenance (profile, seeds, git commit, device, smoke or not, study run, the
runs behind it) is written as data beside it, reports/tables/<table>.json, which the report reads; each
CSV also starts with a human caption line ("# table3: title | profile ... | seeds ... | git ..." and, for
synthetic profiles, "smoke scale: synthetic data, small models — not comparable to the paper"; no
tolerance marks then). Output: reports/tables/<table>.csv (this long format, the machine-readable source;
`device` = the fps device, `cells` = the evaluation runs behind the line), and in the paper's layout
(pipeline.paper_tables): <table>.tex, <table>.wide.csv, tables.tex with every table; reports/tables.pdf
(pdflatex, when installed); reports/claims.json (pipeline.claims).

Params (M) and GFLOPs of Tables 1 and 3 come from the DVC stage `model_stats`
(reports/model_stats/paper_models.json, pipeline.paper_model_stats): the REAL paper architecture of
each row, counted on CPU, so they are marked ok/outside in every profile (relative tolerance
STATS_TOLERANCE) and say so in `reason`. fps lines name the device of `perf/fps_protocol`; only a
V100 (the paper's device: Table 1 / Table 3 captions) gets a tolerance mark, any other device "n/a".
"""
from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import atomic_write_text
from pipeline.paper_model_stats import DEFAULT_OUT as MODEL_STATS_FILE
from pipeline.paper_model_stats import load_stats
from pipeline.paper_numbers import PAPER_NUMBERS, load_paper_numbers  # noqa: F401 - load_paper_numbers re-exported
from pipeline.params import Params, load_params
from pipeline.plan import Plan, load_plan, plan_path, select
from pipeline.runfolder import METRICS_FILE, git_commit, median_over_seeds, read_json
from pipeline.study import unit_state

SMOKE_NOTE = "smoke scale: synthetic data, small models — not comparable to the paper"
TABLES_PDF = "tables.pdf"  # every table in one PDF, at reports/tables.pdf (issue 17), beside reports/tables/
# Relative tolerance of the counted columns (task spec): params are exact up to the paper's rounding to
# whole millions; FLOPs depend on the counting convention (docs/FIDELITY.md §5: all vs last-layer mask einsums).
STATS_TOLERANCE = {"params (M)": 0.01, "GFLOPs": 0.06}
PAPER_FPS_DEVICE = "V100"  # paper Table 1 / Table 3 captions: one V100, batch 1
# App. Table IIb "training memory" (MB): per GPU, detectron2's logged max_mem (torch.cuda.max_memory_allocated
# / 2^20) of the ADE20K-Full configs at 16 images over 8 GPUs = 2 images per GPU (SOLVER.IMS_PER_BATCH 16, 8 V100s), fp32. Only a run
# measured the same way is compared (relative tolerance: params.yaml tables.relative_tolerance).
PAPER_MEM_PROTOCOL = {"measure": "torch.cuda.max_memory_allocated", "images_per_pass": 2, "amp": False}
MEM_METRIC = "perf/train_peak_mem_mb"
COLUMNS = ["row", "metric", "paper", "paper_std", "ours", "ours_std", "seeds", "delta", "mark", "status", "reason", "source",
           "device", "cells"]


def _base_metric(column: str) -> str:
    return column.split(" ")[0]


def _tolerance(params: Params, column: str, paper_std: float | None, paper: float | None = None) -> float:
    rel = params.tables.relative_tolerance.get(column)
    if rel is not None and paper is not None:  # e.g. training memory: a fraction of the paper's value
        return rel * abs(paper)
    tol = params.tables.tolerance.get(_base_metric(column), 1.0)
    return max(tol, 2 * paper_std) if paper_std else tol


def _memory_protocol_mismatch(cell_metrics: list[dict[str, Any]]) -> str:
    """'' when every run measured training memory as the paper did (PAPER_MEM_PROTOCOL), else why not."""
    for m in cell_metrics:
        proto = m.get("perf/train_peak_mem_protocol") or {}
        got = {"measure": proto.get("measure"), "amp": proto.get("amp"),
               "images_per_pass": proto.get("images_per_pass", proto.get("ims_per_batch_per_process"))}
        diff = [f"{k} {got[k]}" for k, v in PAPER_MEM_PROTOCOL.items() if got[k] != v]
        if diff:
            return (f"measured with {', '.join(diff)}; paper: per GPU, {PAPER_MEM_PROTOCOL['images_per_pass']} "
                    f"images per GPU, max_memory_allocated, fp32")
    return ""


def _cell_status(grid: Plan, eval_ids: list[str]) -> tuple[str, str]:
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


# Where a row's numbers come from: "trained here", or "released checkpoint, evaluated here" (metrics.json
# `provenance`, written for the `zoo` profile's released checkpoints; pipeline/released.py).
COLUMNS = [*COLUMNS, "provenance"]
TRAINED = "trained here"


def _provenance(cell_metrics: list[dict[str, Any]]) -> str:
    found = {str(m.get("provenance", TRAINED)) for m in cell_metrics if m}
    return "; ".join(sorted(found))


def build_table(params: Params, grid: Plan, table: str, paper: list[dict[str, str]],
                model_stats: dict | None = None) -> pd.DataFrame:
    """One table as a long DataFrame (one line per paper number and metric), in COLUMNS order.

    `grid`: the study's plan (pipeline.plan.load_plan); `params`: the `tables:` tolerances.
    `model_stats`: pipeline.paper_model_stats.load_stats() of the model_stats stage (None: not run);
    it fills the params (M) / GFLOPs lines of the rows the paper reproduces.
    """
    synthetic = grid.provenance.synthetic
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
            "device": "", "cells": "", "provenance": "",
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
                line.update(status=status, reason=reason, seeds=len(values), cells=";".join(r.eval_ids),
                            provenance=_provenance(cell_metrics))
                devices = _fps_devices(cell_metrics) if _base_metric(p["metric"]) == "fps" else []
                mem_mismatch = _memory_protocol_mismatch(cell_metrics) if metric_key == MEM_METRIC else ""
                if values:
                    ours = median_over_seeds(values)
                    other_device = bool(devices) and not all(PAPER_FPS_DEVICE in d for d in devices)
                    line.update(ours=round(ours, 2), delta=None if other_device else round(ours - value, 2),
                                ours_std=round(statistics.stdev(values), 2) if len(values) > 1 else None,
                                device=", ".join(devices))
                    if devices:  # fps is only comparable on the paper's device (Table 1/3 captions: one V100)
                        line["reason"] = "; ".join(x for x in (reason, f"measured on {', '.join(devices)}; "
                                                               f"paper: one {PAPER_FPS_DEVICE}, batch 1"
                                                               + ("; no delta across devices" if other_device else ""))
                                                   if x)
                    if mem_mismatch:
                        line["reason"] = "; ".join(x for x in (line["reason"], mem_mismatch) if x)
                    if p["status"] == "inconsistent":  # the paper contradicts this number: shown, not judged
                        line["mark"] = "n/a"
                        line["reason"] = "; ".join(x for x in (line["reason"], "paper inconsistent: " + p.get("note", "")) if x)
                    elif synthetic or mem_mismatch or (devices and not all(PAPER_FPS_DEVICE in d for d in devices)):
                        line["mark"] = "n/a"
                    elif abs(ours - value) > _tolerance(params, p["metric"], pstd, value):
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
                devices = _fps_devices(cell_metrics) if _base_metric(col) == "fps" else []
                if devices:
                    reason = "; ".join(x for x in (reason, f"measured on {', '.join(devices)}") if x)
                lines.append({"row": row_name, "metric": col, "paper": None, "paper_std": None,
                              "ours": round(median_over_seeds(values), 2) if values else None,
                              "ours_std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                              "seeds": len(values), "delta": None, "mark": "", "status": status, "reason": reason,
                              "source": "grid only", "device": ", ".join(devices), "cells": ";".join(r.eval_ids),
                              "provenance": _provenance(cell_metrics)})
    return pd.DataFrame(lines, columns=COLUMNS)


NO_GRID_TITLE = "appendix table (cited / not run rows only)"
RELEASED_NOTE = "released checkpoints, evaluated here (not trained)"


def _seeds_text(seeds: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in seeds.items())


def provenance(plan: Plan, table: str, frame: pd.DataFrame) -> dict[str, Any]:
    """Where `table`'s numbers come from, as data (reports/tables/<table>.json, read by pipeline.report)."""
    prov = plan.provenance
    used = [c for value in frame["cells"].tolist() for c in str(value or "").split(";") if c]
    return {
        "table": table,
        "title": plan.titles.get(table, NO_GRID_TITLE),
        "profile": prov.profile,
        "seeds": prov.seeds,
        "commit": prov.commit,
        "tables_commit": git_commit(short=12, mark_dirty=True),
        "device": prov.device,
        "synthetic": prov.synthetic,
        "smoke_label": SMOKE_NOTE if prov.synthetic else "",
        "released": prov.released,
        "study_run": prov.study_run,
        "plan": str(plan.path) if plan.path else None,
        "source_runs": {c: plan.evals[c].run_dir for c in dict.fromkeys(used) if c in plan.evals},
    }


def caption(meta: dict[str, Any]) -> str:
    """The human caption line of a table file, written from its provenance record (never parsed back)."""
    text = (f"{meta['table']}: {meta['title']} | profile {meta['profile']} | seeds {_seeds_text(meta['seeds'])} "
            f"| git {meta['commit']}")
    if meta["smoke_label"]:
        text += f" | {meta['smoke_label']}"
    if meta["released"]:
        text += f" | {RELEASED_NOTE}"
    return text


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
    pdf: bool = True,
    plan_file: str | os.PathLike | None = None,
) -> list[Path]:
    """Write reports/tables/<table>.csv (long) with its provenance <table>.json, <table>.wide.csv and
    <table>.tex (the paper's layout, pipeline.paper_tables) for every table of the study's plan, tables.tex,
    reports/tables.pdf when `pdf` (compiled with pdflatex; without it a one-page PDF saying how to get it)
    and reports/claims.json (pipeline.claims); returns the written paths.

    `plan_file`: the study's plan (default <reports_dir>/study/plan.json); UserError naming it when it is
    missing or of another profile than `profile` (default params.yaml study.profile).
    `model_stats_path`: the model_stats stage's JSON (default <reports_dir>/model_stats/paper_models.json).
    """
    from pipeline import claims as claims_mod
    from pipeline import paper_tables as pt

    params = params or load_params(params_path)
    profile = profile or params.study.profile
    grid = select(load_plan(plan_file or plan_path(reports_dir), profile), tables)
    paper = load_paper_numbers()
    layouts = pt.load_layouts()
    claims = claims_mod.load_claims()  # both checked before anything is written
    model_stats = load_stats(Path(reports_dir) / MODEL_STATS_FILE.relative_to("reports")
                             if model_stats_path is None else model_stats_path)
    out_dir = Path(reports_dir) / "tables"
    synthetic = grid.provenance.synthetic
    prov_text = (f"Profile {grid.profile}, seeds {_seeds_text(grid.provenance.seeds)}, "
                 f"git {grid.provenance.commit}.")
    written: list[Path] = []
    names = grid.tables()
    if tables is None:  # tables with paper numbers but no grid cells (test-server rows, cited only)
        names += [t for t in dict.fromkeys(p["table"] for p in paper) if t not in names]
    frames: dict[str, pd.DataFrame] = {}
    wide_docs = []
    for table in names:
        df = build_table(params, grid, table, paper, model_stats)
        frames[table] = df
        meta = provenance(grid, table, df)
        cap = caption(meta)
        csv_path = out_dir / f"{table}.csv"
        _atomic_write(csv_path, f"# {cap}\n" + df.to_csv(index=False))
        meta_path = out_dir / f"{table}.json"
        _atomic_write(meta_path, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        written += [csv_path, meta_path]
        if table not in layouts:
            continue
        records = df.astype(object).where(df.notna(), None).to_dict("records")
        wide = pt.pivot(table, layouts[table], records, shared=pt.shared_rows(records),
                        provenance=prov_text, synthetic=synthetic)
        tex = pt.to_latex(wide, smoke_note=SMOKE_NOTE if synthetic else "")
        tex_path = out_dir / f"{table}.tex"
        _atomic_write(tex_path, tex)
        wide_path = out_dir / f"{table}.wide.csv"
        _atomic_write(wide_path, f"# {cap}\n" + pd.DataFrame(pt.wide_records(wide)).to_csv(index=False))
        written += [tex_path, wide_path]
        wide_docs.append((wide, tex, bool(layouts[table].get("landscape"))))
    doc_path = out_dir / "tables.tex"
    _atomic_write(doc_path, pt.latex_document(wide_docs))
    written.append(doc_path)
    pdf_note = "not built (pdf=False)"
    if pdf:  # reports/tables.pdf (issue 17); without pdflatex a one-page PDF saying how to get it
        pdf_path = Path(reports_dir) / TABLES_PDF
        ok, pdf_note = pt.build_pdf(doc_path.read_text(encoding="utf-8"), pdf_path)
        if not ok:  # never leave a PDF of older numbers next to the new tables
            pt.write_note_pdf(pdf_path, f"Tables PDF not built: the LaTeX source is {doc_path}", pdf_note)
            pdf_note = f"not built, {pdf_path} says why: {pdf_note}"
        written.append(pdf_path)
    verdicts = claims_mod.evaluate_claims(claims, frames, grid=grid, params=params)
    claims_path = Path(reports_dir) / "claims.json"
    _atomic_write(claims_path, json.dumps(claims_mod.claims_report(verdicts, grid.profile, synthetic),
                                          indent=1, ensure_ascii=False) + "\n")
    written.append(claims_path)
    summary = {t: {"rows": int(len(frames[t]))} for t in names}
    _atomic_write(out_dir / "index.json", json.dumps({"profile": grid.profile, "tables": summary, "pdf": pdf_note},
                                                     indent=1) + "\n")
    written.append(out_dir / "index.json")
    return written
