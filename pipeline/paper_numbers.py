"""pipeline/data/paper_numbers.csv: the paper's numbers, one (table, row, metric) per line, read and checked."""
from __future__ import annotations

import csv
import os
from pathlib import Path

PAPER_NUMBERS = Path(__file__).parent / "data" / "paper_numbers.csv"


def load_paper_numbers(path: str | os.PathLike = PAPER_NUMBERS) -> list[dict[str, str]]:
    """Rows of paper_numbers.csv: table, row, metric, value, std, status (reproduce|cited|not_run|inconsistent),
    source, note. `inconsistent`: a number the paper contradicts elsewhere; kept and compared, never marked."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(rows, start=2):
        key = (r["table"], r["row"], r["metric"])
        if key in seen:  # the table would show one of the two numbers, silently
            raise ValueError(f"{path}:{i}: {key[0]} row {key[1]!r} metric {key[2]!r} is already on line {seen[key]}")
        seen[key] = i
        if r["status"] not in ("reproduce", "cited", "not_run", "inconsistent"):
            raise ValueError(f"{path}:{i}: status {r['status']!r} is not reproduce, cited, not_run or inconsistent")
        float(r["value"])
    return rows
