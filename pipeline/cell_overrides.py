"""Per-cell overrides (params.yaml `cell_overrides`): one grid cell's field as its own DVC param key.

`grid.<table>.cells` is a list, which DVC treats as one value: `dvc params diff` would print the
whole list when one cell changes and `dvc exp run -S` could not name a cell. A key
`cell_overrides.<table>.<index>.<field>` (index as in `python -m pipeline grid list`, from 0) replaces
one field of `grid.<table>.cells[<index>]` before the params are validated, so

    dvc exp run -S '++cell_overrides.table6.1.queries=30'

retrains only that cell (its config hash changes; every other cell is skipped as done) and
`dvc params diff` / `dvc exp show --only-changed` name exactly that key (README "DVC experiments").
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

from pipeline.errors import UserError

KEY = "cell_overrides"


def apply(raw: dict[str, Any], cell_fields: Iterable[str], source: str = "params.yaml") -> dict[str, Any]:
    """A copy of the raw params with `cell_overrides` merged into `grid` and the key removed.

    `cell_fields`: the fields a grid cell may have (pipeline.params passes `Cell.model_fields`; taken as an
    argument so this module stays below pipeline.params).

    UserError names the override key when the table, the index or the field does not exist.
    """
    overrides = raw.get(KEY)
    if overrides is None or not isinstance(raw.get("grid"), dict):
        return {k: v for k, v in raw.items() if k != KEY}
    if not isinstance(overrides, dict):
        raise UserError(f"{source}: {KEY}: expected a mapping <table>: {{<cell index>: {{<field>: value}}}}, "
                        f"got {overrides!r}")
    cell_fields = list(cell_fields)
    out = {k: v for k, v in raw.items() if k != KEY}
    out["grid"] = copy.deepcopy(raw["grid"])
    for table, cells in overrides.items():
        where = f"{source}: {KEY}.{table}"
        grid = out["grid"].get(table)
        if not isinstance(grid, dict) or not isinstance(grid.get("cells"), list):
            raise UserError(f"{where}: no table {table!r} in grid (tables: {', '.join(map(str, out['grid']))})")
        if not isinstance(cells, dict):
            raise UserError(f"{where}: expected a mapping <cell index>: {{<field>: value}}, got {cells!r}")
        for index, fields in cells.items():
            try:
                i = int(index)
            except (TypeError, ValueError):
                i = -1
            if not 0 <= i < len(grid["cells"]) or str(index) != str(i):
                raise UserError(f"{where}.{index}: not a cell index of grid.{table}.cells "
                                f"(0..{len(grid['cells']) - 1}; `python -m pipeline grid list`)")
            if not isinstance(fields, dict) or not fields:
                raise UserError(f"{where}.{index}: expected a mapping <field>: value, got {fields!r}")
            unknown = sorted(str(f) for f in fields if f not in cell_fields)
            if unknown:
                raise UserError(f"{where}.{index}.{unknown[0]}: unknown cell field; expected one of "
                                f"{', '.join(cell_fields)}")
            grid["cells"][i] = dict(grid["cells"][i], **fields)
    return out
