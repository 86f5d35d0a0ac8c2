"""The paper's qualitative claims checked on the study's numbers (pipeline/data/claims.yaml -> reports/claims.json).

Each claim names the long-table cells it compares (table, row, metric; reports/tables/<table>.csv) and
a kind (greater, best, on_par, increasing; see the YAML's header). A verdict is:

- `inconclusive` when a cell has no number, when a cell has fewer seeds than the paper's protocol
  (params.yaml profiles.paper.seeds: 3 semantic, 5 Cityscapes, 1 panoptic; paper Sec. 4 "Evaluation metrics"), or
  when the difference is within the seeds' spread (|difference| <= the sum of the compared cells' std
  over seeds); the direction the numbers point to is still given (`tendency`);
- otherwise `supported` or `contradicted` by the sign of the difference (`on_par`: |a - b| <= margin).

Every verdict carries the numbers it used. Results of a synthetic (smoke) profile are labelled
`scale: smoke`: they check the pipeline's arithmetic, not the paper.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

CLAIMS = Path(__file__).parent / "data" / "claims.yaml"
KINDS = ("greater", "best", "on_par", "increasing")
VERDICTS = ("supported", "contradicted", "inconclusive")


class ClaimsError(UserError):
    """claims.yaml is malformed (names the claim and key)."""


def _refs(claim: dict) -> list[dict]:
    kind = claim["kind"]
    if kind in ("greater", "on_par"):
        return [claim["a"], claim["b"]]
    if kind == "best":
        return [claim["a"], *claim["others"]]
    return [ref for pair in claim["pairs"] for ref in pair]


def load_claims(path: str | os.PathLike = CLAIMS) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        claims = yaml.safe_load(fh) or []
    seen = set()
    for i, c in enumerate(claims):
        where = f"{path}: claim {i} ({c.get('id', '?')})"
        for key in ("id", "claim", "source", "kind"):
            if key not in c:
                raise ClaimsError(f"{where}: missing {key!r}")
        if c["id"] in seen:
            raise ClaimsError(f"{where}: duplicate id {c['id']!r}")
        seen.add(c["id"])
        if c["kind"] not in KINDS:
            raise ClaimsError(f"{where}: kind {c['kind']!r} is not one of {', '.join(KINDS)}")
        try:
            refs = _refs(c)
        except KeyError as exc:
            raise ClaimsError(f"{where}: kind {c['kind']} needs {exc}") from None
        for ref in refs:
            if not {"table", "row", "metric"} <= set(ref):
                raise ClaimsError(f"{where}: cell {ref} needs table, row and metric")
        if c["kind"] == "on_par" and "margin" not in c:
            raise ClaimsError(f"{where}: on_par needs a margin")
    return claims


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _paper_seeds(grid, params, table: str, row: str, metric: str) -> int | None:
    """The paper protocol's number of seeds for the grid cell that gives (table, row, metric) (Table VIII
    names its semantic and panoptic rows alike: the metric tells them apart)."""
    if params is None or "paper" not in params.profiles or grid is None:
        return None
    rows = [r for r in grid.rows if r.table == table and r.row == row]
    for r in sorted(rows, key=lambda r: metric not in r.columns):
        return params.profiles["paper"].num_seeds(r.cell.dataset)
    return None


def _cell(frames: dict, ref: dict, grid, params) -> dict[str, Any]:
    out = {"table": ref["table"], "row": ref["row"], "metric": ref["metric"], "ours": None, "ours_std": None,
           "seeds": 0, "paper": None, "status": "absent", "cells": []}
    df = frames.get(ref["table"])
    if df is not None:
        hit = df[(df["row"] == ref["row"]) & (df["metric"] == ref["metric"])]
        if len(hit):
            rec = hit.iloc[0]
            out.update(ours=_num(rec.get("ours")), ours_std=_num(rec.get("ours_std")),
                       seeds=int(_num(rec.get("seeds")) or 0), paper=_num(rec.get("paper")),
                       status=str(rec.get("status") or ""),
                       cells=[c for c in str(rec.get("cells") or "").split(";") if c and c != "nan"])
    out["paper_seeds"] = _paper_seeds(grid, params, ref["table"], ref["row"], ref["metric"])
    return out


def _difference(kind: str, vals: list[float], claim: dict) -> tuple[float, bool]:
    """(difference, whether it points the claim's way)."""
    if kind == "greater":
        d = vals[0] - vals[1]
        return d, d > 0
    if kind == "best":
        d = vals[0] - max(vals[1:])
        return d, d >= 0
    if kind == "on_par":
        d = vals[0] - vals[1]
        return d, abs(d) <= float(claim["margin"])
    gains = [vals[i] - vals[i + 1] for i in range(0, len(vals), 2)]
    steps = [b - a for a, b in zip(gains, gains[1:])]
    d = min(steps) if steps else 0.0
    return d, d > 0


def evaluate_claim(claim: dict, frames: dict, *, grid=None, params=None, use_paper: bool = False) -> dict[str, Any]:
    """One verdict; `use_paper` checks the claim on the paper's own numbers instead (a test of the claims file)."""
    cells = [_cell(frames, ref, grid, params) for ref in _refs(claim)]
    key = "paper" if use_paper else "ours"
    result = {"id": claim["id"], "claim": claim["claim"], "source": claim["source"], "kind": claim["kind"],
              "cells": cells, "difference": None, "tendency": None}
    if claim["kind"] == "on_par":
        result["margin"] = float(claim["margin"])
    missing = [f"{c['table']} / {c['row']} / {c['metric']} ({c['status'] or 'no value'})"
               for c in cells if c[key] is None]
    if missing:
        return dict(result, verdict="inconclusive", reason="missing cells: " + "; ".join(missing))
    d, agrees = _difference(claim["kind"], [c[key] for c in cells], claim)
    result.update(difference=round(d, 3), tendency="agrees" if agrees else "disagrees")
    if use_paper:
        return dict(result, verdict="supported" if agrees else "contradicted", reason="the paper's numbers")
    few = [f"{c['row']} {c['metric']}: {c['seeds']} < {c['paper_seeds']}" for c in cells
           if c["paper_seeds"] is not None and c["seeds"] < c["paper_seeds"]]
    if few:
        return dict(result, verdict="inconclusive",
                    reason="fewer seeds than the paper's protocol (" + "; ".join(few) + ")")
    spread = sum(c["ours_std"] or 0.0 for c in cells if c["seeds"] > 1)
    margin_gap = abs(abs(d) - float(claim["margin"])) if claim["kind"] == "on_par" else abs(d)
    if spread > 0 and margin_gap <= spread:
        return dict(result, verdict="inconclusive",
                    reason=f"difference {d:+.2f} within the seeds' spread (sum of std {spread:.2f})")
    return dict(result, verdict="supported" if agrees else "contradicted",
                reason=f"difference {d:+.2f}" + (f" beyond the seeds' spread {spread:.2f}" if spread else ""))


def evaluate_claims(claims: list[dict], frames: dict, *, grid=None, params=None) -> list[dict[str, Any]]:
    return [evaluate_claim(c, frames, grid=grid, params=params) for c in claims]


def claims_report(verdicts: list[dict], profile: str, synthetic: bool) -> dict[str, Any]:
    """reports/claims.json: counts per verdict (numbers, for `dvc metrics show`) and every verdict."""
    scale = "smoke" if synthetic else "real data"
    return {
        "profile": profile,
        "scale": scale,
        "note": ("smoke scale: synthetic twins and tiny models; these verdicts check the pipeline, not the paper"
                 if synthetic else "verdicts on the profile's real-data numbers"),
        "counts": {v: sum(x["verdict"] == v for x in verdicts) for v in VERDICTS},
        "claims": [dict(v, scale=scale) for v in verdicts],
    }
