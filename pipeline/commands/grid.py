"""`python -m pipeline grid list|show|plan`: the study grid's cells, their status and estimated GPU-hours;
`plan` writes the study's plan file (pipeline.plan) without running a cell."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from pipeline.config import parse_config

from pipeline.grid import expand, find_cell
from pipeline.params import load_params
from pipeline.plan import plan_from_grid, plan_path, write_plan
from pipeline.study import unit_state


def register(subparsers) -> None:
    p = subparsers.add_parser("grid", help="list the grid's cells, show one cell's resolved config, or write the study's plan file")
    sub = p.add_subparsers(dest="grid_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="cells per table with status and estimated GPU-hours")
    ls.add_argument("--table", action="append", help="table1..table8, appendixN, main, ablations (repeatable)")
    ls.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    ls.add_argument("--params", default="params.yaml", help="params file (relative paths in it mean its folder)")
    ls.set_defaults(func=run)
    show = sub.add_parser("show", help="print the resolved run config of one cell (id or unique prefix)")
    show.add_argument("cell")
    show.add_argument("--profile")
    show.add_argument("--params", default="params.yaml", help="params file (relative paths in it mean its folder)")
    show.set_defaults(func=run)
    plan = sub.add_parser("plan", help="write the study's plan file (<reports>/study/plan.json: every cell and "
                                       "row of the profile) without running any cell, for status/tables/report "
                                       "on run folders not made by `study`")
    plan.add_argument("--profile", help="profile in params.yaml (default: study.profile)")
    plan.add_argument("--params", default="params.yaml", help="params file (relative paths in it mean its folder)")
    plan.add_argument("--reports", default="reports", help="reports folder (default: reports)")
    plan.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.grid_command == "plan":  # the same record the study writes when it starts (pipeline.study.record_plan)
        grid = expand(params, args.profile)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-grid-plan"
        path = write_plan(plan_from_grid(grid, params, study_run=run_id), plan_path(args.reports))
        print(f"plan of profile {grid.profile}: {len(grid.rows)} table cells, {len(grid.evals)} evaluations -> {path}")
        return 0
    if args.grid_command == "show":
        grid = expand(params, args.profile)
        unit = find_cell(grid, args.cell)
        print(f"# cell {getattr(unit, 'eval_id', None) or unit.train_id} (train cell {unit.train_id})")
        world = int(unit.config["run"].get("num_gpus", 1))
        print(f"# world size {world} (one process per GPU), per-GPU batch "
              f"{unit.config['solver']['ims_per_batch'] // world} of {unit.config['solver']['ims_per_batch']}")
        # What the engine runs: the plan's complete config (metadata defaults resolved at plan time,
        # pipeline.grid.resolve_cell; the job only checks the data on disk agrees).
        cfg = parse_config(unit.config, source=f"cell {unit.train_id}")
        if not Path(cfg.data.root).exists():
            print(f"# {cfg.data.root} does not exist yet: defaults from the {cfg.data.dataset} metadata "
                  f"(pipeline.grid.plan_metadata)")
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    grid = expand(params, args.profile, args.table)
    if params.profiles[grid.profile].released:  # `zoo`: every unit evaluates a released checkpoint
        print(f"profile {grid.profile}: {len(grid.rows)} table cells -> {len(grid.train)} evaluations of "
              f"released checkpoints (no training; files under {params.profiles[grid.profile].checkpoint_root})")
    else:
        print(f"profile {grid.profile}: {len(grid.rows)} table cells -> {len(grid.train)} training runs "
              f"+ {sum(e.is_variant for e in grid.evals.values())} evaluation-only variants")
    print(f"{'table':<10} {'row':<34} {'seeds':>5} {'status':<8} {'GPU-h':>8}  cell")
    for row in grid.rows:
        first = grid.evals[row.eval_ids[0]]
        hours = sum(grid.train[grid.evals[e].train_id].gpu_hours for e in row.eval_ids) if not first.is_variant else 0.0
        states = {unit_state(grid.evals[e].run_dir)[0] for e in row.eval_ids}
        state = states.pop() if len(states) == 1 else "partial"
        label = row.row + (" [eval-only]" if first.is_variant else "")
        print(f"{row.table:<10} {label[:34]:<34} {len(row.eval_ids):>5} {state:<8} {hours:>8.1f}  {row.eval_ids[0]}")
    print(f"estimated GPU-hours (unique training runs, V100, time_model in params.yaml): {grid.gpu_hours():.1f}")
    base = params.profiles[grid.profile].rehearses
    if base:
        from pipeline.grid import profile_differences

        print(f"differs from profile {base} only in (there -> here, over the listed cells):")
        for key, (there, here) in profile_differences(params, grid.profile, args.table).items():
            print(f"  {key}: {', '.join(sorted(there))[:70]} -> {', '.join(sorted(here))[:70]}")
        prof = params.profiles[grid.profile]
        if prof.one_row_per_table:
            print(f"  rows: one per table (profiles.{grid.profile}.one_row_per_table), not every row")
        if prof.max_world_size:
            print(f"  world size capped at {prof.max_world_size} processes (profiles.{grid.profile}.max_world_size): "
                  "total batch = per-GPU batch x cap, learning rate and schedule unchanged")
    return 0
