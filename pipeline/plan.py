"""The study's plan file, `reports/study/plan.json`: every cell and table row of a profile, written once per study.

The study (pipeline.study.record_plan) writes it when it starts, before any job: the profile's whole grid
(every table, also when `--table N` runs only some), each cell's id, run folder, seed and resolved run
config as planned, each table row's cells and metric columns, and the study's provenance (profile,
seeds, git commit, device, smoke or not, study run id). Everything downstream (status, tables, report,
models export) loads it through `load_plan` and never expands params.yaml's grid again; a cell id is
read from here, never recomputed.

`Plan` reads like `pipeline.grid.Grid` (`profile`, `rows`, `train`, `evals`, `tables()`), so code that
walks a grid (pipeline.study.key_metrics, pipeline.claims, pipeline.models_store) walks a plan too.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.runfolder import git_commit, read_json, write_json

PLAN_FILE = Path("study") / "plan.json"  # under the reports folder: reports/study/plan.json
FORMAT = 1  # bumped when a key changes meaning; load_plan refuses other formats


def plan_path(reports_dir: str | os.PathLike = "reports") -> Path:
    return Path(reports_dir) / PLAN_FILE


def how_to_plan(profile: str | None) -> str:
    """What to run to get a plan file of `profile` (used in every missing-plan message)."""
    prof = f" --profile {profile}" if profile else ""
    return (f"run the study first (`python -m pipeline study{prof}` or `dvc repro study`), or write the plan "
            f"without running any cell: `python -m pipeline grid plan{prof}`")


@dataclasses.dataclass(frozen=True)
class RowCell:
    """The params.yaml fields of a table row that readers use (`pipeline.params.Cell`'s dataset, model, backbone)."""

    dataset: str
    model: str
    backbone: str


@dataclasses.dataclass
class PlanRow:
    """One table row: its paper row label, metric columns ({paper column: metrics.json key}) and its cells
    (one evaluation per seed)."""

    table: str
    index: int
    row: str
    columns: dict[str, str]
    cell: RowCell
    eval_ids: list[str]


@dataclasses.dataclass
class PlanUnit:
    """One planned run: a training cell (unit_id == train_id) or an evaluation-only variant of one.

    `config` is the resolved run config (pipeline.config sections) as the study planned it.
    """

    unit_id: str
    train_id: str
    run_dir: str
    seed: int | None
    config: dict[str, Any]

    @property
    def is_variant(self) -> bool:
        return self.unit_id != self.train_id


@dataclasses.dataclass
class Provenance:
    """Where a study's numbers come from; copied beside each table (reports/tables/<table>.json)."""

    profile: str
    seeds: dict[str, int]
    commit: str  # git commit of the code that planned (and ran) the study
    device: str  # profiles.<p>.run.device ("auto": each cell picks cuda when present)
    synthetic: bool  # smoke scale: synthetic twins, small models, not comparable to the paper
    released: bool  # released checkpoints evaluated here, not trained (profile zoo)
    study_run: str
    planned: str  # ISO time the plan was written


@dataclasses.dataclass
class Plan:
    provenance: Provenance
    tables_run: list[str]  # the tables this study run was asked for (the plan holds every table)
    titles: dict[str, str]  # table -> params.yaml grid.<table>.title
    rows: list[PlanRow]
    train: dict[str, PlanUnit]
    evals: dict[str, PlanUnit]
    path: Path | None = None  # the file it was loaded from

    @property
    def profile(self) -> str:
        return self.provenance.profile

    def tables(self) -> list[str]:
        return list(dict.fromkeys(r.table for r in self.rows))

    def unit(self, unit_id: str) -> PlanUnit:
        return self.evals[unit_id] if unit_id in self.evals else self.train[unit_id]

    def row_labels(self) -> dict[str, list[str]]:
        """{eval id: ["table3: MaskFormer R50+6Enc", ...]}: the table rows each evaluation serves."""
        out: dict[str, list[str]] = {e: [] for e in self.evals}
        for r in self.rows:
            for eid in r.eval_ids:
                out.setdefault(eid, []).append(f"{r.table}: {r.row}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "provenance": dataclasses.asdict(self.provenance),
            "tables_run": self.tables_run,
            "titles": self.titles,
            "rows": [dict(dataclasses.asdict(r), cell=dataclasses.asdict(r.cell)) for r in self.rows],
            "train": {k: _unit_dict(u) for k, u in self.train.items()},
            "evals": {k: _unit_dict(u) for k, u in self.evals.items()},
        }


def _unit_dict(u: PlanUnit) -> dict[str, Any]:
    return {"train_id": u.train_id, "run_dir": u.run_dir, "seed": u.seed, "config": u.config}


def _unit(unit_id: str, config: dict[str, Any], train_id: str) -> PlanUnit:
    run = config.get("run") or {}
    return PlanUnit(unit_id, train_id, str(run["output_dir"]), run.get("seed"), config)


def plan_from_grid(grid: Any, params: Any, *, study_run: str, tables_run: list[str] | None = None,
                   commit: str | None = None) -> Plan:
    """The plan record of an expanded grid (`pipeline.grid.expand` of the whole profile) and its params."""
    prof = params.profiles[grid.profile]
    provenance = Provenance(
        profile=grid.profile, seeds=dict(prof.seeds), commit=commit or git_commit(short=12, mark_dirty=True),
        device=str(prof.run.device or "auto"), synthetic=bool(prof.synthetic), released=bool(prof.released),
        study_run=study_run, planned=time.strftime("%Y-%m-%dT%H:%M:%S"))
    rows = [PlanRow(r.table, r.index, r.row, dict(r.columns),
                    RowCell(r.cell.dataset, r.cell.model, r.cell.backbone), list(r.eval_ids)) for r in grid.rows]
    return Plan(
        provenance=provenance,
        tables_run=list(tables_run if tables_run is not None else grid.tables()),
        titles={t: params.grid[t].title for t in grid.tables() if t in params.grid},
        rows=rows,
        train={tid: _unit(tid, u.config, tid) for tid, u in grid.train.items()},
        evals={eid: _unit(eid, u.config, u.train_id) for eid, u in grid.evals.items()},
    )


def write_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write `plan` to `path` atomically (a reader sees the old file or the new one, never half)."""
    path = Path(path)
    write_json(path, plan.to_dict(), indent=1, sort_keys=False, default=str)
    plan.path = path
    return path


def _read_unit(unit_id: str, u: dict[str, Any]) -> PlanUnit:
    return PlanUnit(unit_id, u["train_id"], u["run_dir"], u.get("seed"), u["config"])


def load_plan(path: str | os.PathLike, profile: str | None = None) -> Plan:
    """The plan in `path`; UserError naming the file when it is missing, unreadable, of another format, or
    (with `profile`) of another profile."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no study plan; {how_to_plan(profile)}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON study plan (unreadable or cut short); {how_to_plan(profile)}")
    if data.get("format") != FORMAT:
        raise UserError(f"{path}: plan format {data.get('format')!r}, this code reads format {FORMAT}; "
                        f"{how_to_plan(profile)}")
    try:
        prov = Provenance(**data["provenance"])
        rows = [PlanRow(r["table"], int(r["index"]), r["row"], dict(r["columns"]), RowCell(**r["cell"]),
                        list(r["eval_ids"])) for r in data["rows"]]
        train = {k: _read_unit(k, u) for k, u in data["train"].items()}
        evals = {k: _read_unit(k, u) for k, u in data["evals"].items()}
        plan = Plan(prov, list(data["tables_run"]), dict(data["titles"]), rows, train, evals, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: study plan lacks or mangles {exc}; {how_to_plan(profile)}") from None
    if profile is not None and plan.profile != profile:
        raise UserError(f"{path}: the study plan is of profile {plan.profile!r}, not {profile!r}; "
                        f"{how_to_plan(profile)}")
    return plan


def select(plan: Plan, tables: list[str] | None) -> Plan:
    """`plan` restricted to the rows of `tables` (and the units they use); UserError on a table not in it."""
    if tables is None:
        return plan
    unknown = [t for t in tables if t not in plan.tables()]
    if unknown:
        raise UserError(f"{plan.path or 'study plan'}: no table {', '.join(unknown)} in the plan of profile "
                        f"{plan.profile} (it has {', '.join(plan.tables())})")
    rows = [r for r in plan.rows if r.table in tables]
    evals = {e: plan.evals[e] for r in rows for e in r.eval_ids}
    train = {t: u for t, u in plan.train.items() if any(e.train_id == t for e in evals.values())}
    return dataclasses.replace(plan, rows=rows, evals=evals, train=train)
