"""pipeline/data/paper_numbers.csv and the params.yaml grid join without orphans, in both directions.

A grid row with no paper number would be a table line nobody can compare; a paper number marked
`reproduce` that no grid cell (or the model_stats stage) produces would stay empty in every table.
`grid.check_references` refuses the first kind when params.yaml is loaded; this file checks both, on
the committed files, and that the check finds an orphan when there is one.
"""
from __future__ import annotations

import copy
import csv

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.paper_model_stats import STATS_TABLES
from pipeline.params import validate_params
from tests._study_helpers import REPO

PAPER_NUMBERS = REPO / "pipeline" / "data" / "paper_numbers.csv"
REPRODUCED = {"reproduce", "inconsistent"}  # statuses of numbers a study run fills; `cited` / `not_run` are not run
STATS_METRICS = {"params (M)", "GFLOPs"}  # filled from the model_stats stage, not from a grid column


def _paper() -> list[dict[str, str]]:
    with open(PAPER_NUMBERS, newline="") as fh:
        return list(csv.DictReader(fh))


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def grid_columns(raw: dict) -> dict[tuple[str, str], set[str]]:
    """(table, row) -> the columns its grid cells produce."""
    out: dict[tuple[str, str], set[str]] = {}
    for table, grid in raw["grid"].items():
        for cell in grid["cells"]:
            out.setdefault((table, cell["row"]), set()).update(cell.get("columns") or grid.get("columns") or {})
    return out


def orphans(paper: list[dict[str, str]], raw: dict) -> dict[str, list]:
    """What does not join: CSV lines no cell produces, grid rows with no reproduced number, and rows
    the CSV says are not run although the grid runs them."""
    grid = grid_columns(raw)
    reproduced_rows = {(p["table"], p["row"]) for p in paper if p["status"] in REPRODUCED}
    csv_only = [(p["table"], p["row"], p["metric"]) for p in paper if p["status"] in REPRODUCED
                and not ((p["table"], p["row"]) in grid
                         and (p["metric"] in grid[(p["table"], p["row"])]
                              or (p["table"] in STATS_TABLES and p["metric"] in STATS_METRICS)))]
    grid_only = sorted(key for key in grid if key not in reproduced_rows)
    not_run_but_in_grid = sorted({(p["table"], p["row"], p["status"]) for p in paper
                                  if p["status"] not in REPRODUCED and (p["table"], p["row"]) in grid})
    return {"csv_only": csv_only, "grid_only": grid_only, "not_run_but_in_grid": not_run_but_in_grid}


def test_paper_numbers_and_the_grid_join_without_orphans():
    paper = _paper()
    assert {p["status"] for p in paper} <= REPRODUCED | {"cited", "not_run"}
    assert len(paper) > 300  # the whole CSV was read, not a header
    assert orphans(paper, _params()) == {"csv_only": [], "grid_only": [], "not_run_but_in_grid": []}


def test_an_orphan_on_either_side_is_found():
    paper, raw = _paper(), _params()
    row = raw["grid"]["table2"]["cells"][0]["row"]
    assert [c["row"] for c in raw["grid"]["table2"]["cells"]].count(row) == 1  # one cell gives this row
    moved = copy.deepcopy(raw)
    moved["grid"]["table2"]["cells"][0]["row"] = row + " (typo)"
    found = orphans(paper, moved)
    assert ("table2", row + " (typo)") in found["grid_only"]  # grid side
    assert any(t == "table2" and r == row for t, r, _ in found["csv_only"])  # CSV side: its numbers lost their cell
    # a reproduced number whose metric no cell writes
    extra = dict(paper[0], table="table2", row=row, metric="not a column", status="reproduce")
    assert ("table2", row, "not a column") in orphans(paper + [extra], raw)["csv_only"]
    # a cited row that the grid runs
    cited = next(p for p in paper if p["status"] == "cited" and p["table"] in raw["grid"])
    ran = copy.deepcopy(raw)
    ran["grid"][cited["table"]]["cells"].append(dict(ran["grid"][cited["table"]]["cells"][0], row=cited["row"]))
    assert (cited["table"], cited["row"], "cited") in orphans(paper, ran)["not_run_but_in_grid"]


def test_params_validation_refuses_a_grid_row_the_csv_does_not_have():
    raw = _params()
    row = raw["grid"]["table2"]["cells"][0]["row"]
    raw["grid"]["table2"]["cells"][0]["row"] = row + " (typo)"
    with pytest.raises(UserError, match=r"grid\.table2.*is not a row of table2"):
        validate_params(raw)
