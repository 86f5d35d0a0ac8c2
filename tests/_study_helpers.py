"""Small study fixtures shared by the study/flow/table tests: a trimmed params.yaml in a temp folder."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAND_IN = "tests.study_cells:config_cell"


def write_params(tmp: Path, tables: dict[str, slice] | None = None, **profile_overrides) -> Path:
    """params.yaml with only `tables` (name -> slice of its cells), runs and data under `tmp`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    tables = tables or {"table7": slice(0, 3)}
    grid = {}
    for name, sl in tables.items():
        grid[name] = copy.deepcopy(raw["grid"][name])
        grid[name]["cells"] = grid[name]["cells"][sl]
    raw["grid"] = grid
    raw["study"]["runs_root"] = str(tmp / "runs")
    raw["study"]["retry_delay_s"] = 0
    smoke = raw["profiles"]["smoke"]
    smoke["data_root"] = str(tmp / "data")
    smoke["run"]["threads"] = None  # the stand-in needs no torch
    smoke.update(profile_overrides)
    raw["study"]["data_root"] = smoke["data_root"]  # dvc.yaml's mirror of the active profile's root
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def write_study_plan(params, reports_dir: Path, profile: str = "smoke") -> Path:
    """The study's plan file (reports/study/plan.json, pipeline.plan) of `params`' grid, as `study` writes it
    when it starts: what status, tables and report read instead of expanding the grid."""
    from pipeline.grid import expand
    from pipeline.plan import plan_from_grid, plan_path, write_plan

    return write_plan(plan_from_grid(expand(params, profile), params, study_run="test-plan"), plan_path(reports_dir))
