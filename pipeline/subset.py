"""Shrinking a profile's grid for a cheap rehearsal (issue 13): one row per table, a capped world size.

Both are profile settings (`profiles.<p>.one_row_per_table`, `profiles.<p>.max_world_size`), so every
command that expands the grid (`grid list/show/plan`, `study`, `study --dry-run`) sees the same cells,
and so do `tables` and `status`, which read the study's plan (pipeline.plan). They are deviations from the rehearsed profile, printed by `grid list` (README
"Running on your cluster", docs/FIDELITY.md "Rehearsal in CI").
"""
from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.errors import UserError


def cap_world_size(solver: dict[str, Any], world_size: int, max_world_size: int | None, where: str) -> int:
    """The world size a cell runs at under `max_world_size`, updating `solver["ims_per_batch"]` in place
    so the per-GPU batch stays the recipe's (total batch = per-GPU batch x capped world size; the
    learning rate and schedule are not rescaled, as detectron2's REFERENCE_WORLD_SIZE 0 default does not).
    """
    if not max_world_size or world_size <= max_world_size:
        return world_size
    total = solver["ims_per_batch"]
    if total % world_size:
        raise UserError(f"{where}: solver.ims_per_batch {total} is not divisible by the {world_size} processes "
                        f"of the recipe: the per-GPU batch must be whole")
    solver["ims_per_batch"] = total // world_size * max_world_size
    return max_world_size


def one_row_per_table(grid):
    """The grid restricted to one row of each table, chosen to need as few training runs as possible.

    Greedy set cover over training runs: repeatedly take the training run (or a row's set of runs) that
    lets the most tables still without a row be covered by runs already taken, ties broken by the
    estimated GPU-hours, then by grid order; each table then gets its first covered row, preferring rows
    without an evaluation-only variant (TTA, another inference) to evaluate.
    """
    rows = grid.rows
    needs = [frozenset(grid.evals[e].train_id for e in r.eval_ids) for r in rows]
    variants = [sum(grid.evals[e].is_variant for e in r.eval_ids) for r in rows]
    tables = grid.tables()
    taken: set[str] = set()
    chosen: dict[str, int] = {}

    def hours(ids) -> float:
        return sum(grid.train[t].gpu_hours for t in ids if t not in taken)

    while len(chosen) < len(tables):
        best = None
        for i, need in enumerate(needs):
            if rows[i].table in chosen:
                continue
            have = taken | need
            covers = {rows[j].table for j, n in enumerate(needs) if rows[j].table not in chosen and n <= have}
            key = (-len(covers), hours(need), i)
            if best is None or key < best[0]:
                best = (key, need)
        taken |= best[1]
        for table in tables:
            if table in chosen:
                continue
            fits = [j for j, r in enumerate(rows) if r.table == table and needs[j] <= taken]
            if fits:
                chosen[table] = min(fits, key=lambda j: (variants[j], j))
    keep = sorted(chosen.values())
    kept_rows = [rows[j] for j in keep]
    eval_ids = {e for r in kept_rows for e in r.eval_ids}
    train_ids = {grid.evals[e].train_id for e in eval_ids}
    # dataclasses.replace keeps this module below pipeline.grid (no import of it: no cycle)
    return dataclasses.replace(grid, rows=kept_rows, train={k: v for k, v in grid.train.items() if k in train_ids},
                               evals={k: v for k, v in grid.evals.items() if k in eval_ids})
