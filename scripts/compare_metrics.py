#!/usr/bin/env python3
"""Compare every cell's metrics.json between two study runs folders (before / after a code change).

    python scripts/compare_metrics.py BEFORE_RUNS AFTER_RUNS [--tol 0] [--include-perf]

BEFORE_RUNS and AFTER_RUNS are `<study.runs_root>/<profile>` folders (e.g. runs/smoke). A cell folder is
named `<readable slug>-<result hash>` (pipeline.grid); the slug already holds the seed (`-s0`), and an
evaluation-only variant adds its strategy (`-general_semantic`). Cells are matched by that slug, not the
hash, so a change of what the hash covers does not hide a cell. One line per cell:

    same      <slug>
    changed   <slug>: val/mIoU 17.27 -> 17.31; train/iterations 120 -> 100
    missing   <slug>: only in BEFORE (or AFTER), or no metrics.json on one side

and a summary line. Keys under `perf/` (fps, peak memory: measurements of the machine, not results) are
left out unless --include-perf. Exit code 0 when every cell is the same, 1 otherwise, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

# `<slug>-<hash>` and a released profile's `<slug>-rel-<hash>` (pipeline.grid cell ids; before issue 11's
# one result hash: `<slug>-<hash>-rel<hash>`)
_HASH_TAIL = re.compile(r"(-[0-9a-f]{6,}-rel[0-9a-f]{4,}|-rel-[0-9a-f]{6,}|-[0-9a-f]{6,})$")
METRICS_FILE = "metrics.json"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def slug_of(folder_name: str) -> str:
    """The readable part of a cell id: the folder name without its trailing hash(es)."""
    return _HASH_TAIL.sub("", folder_name)


def cell_folders(root: Path) -> dict[str, list[Path]]:
    """{slug: [cell folders]} of one runs folder; a cell folder holds metrics.json, config.yaml or cell.json."""
    if not root.is_dir():
        _fail(f"{root}: not a folder")
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if any((d / f).exists() for f in (METRICS_FILE, "config.yaml", "cell.json")):
            out.setdefault(slug_of(d.name), []).append(d)
    return out


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a/b": value}; lists stay values."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        out.update(flat(v, name) if isinstance(v, dict) and v else {name: v})
    return out


def equal(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return a == b or abs(a - b) <= tol
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(equal(x, y, tol) for x, y in zip(a, b))
    return a == b


def compare_metrics(before: dict[str, Any], after: dict[str, Any], tol: float = 0.0,
                    include_perf: bool = False) -> list[tuple[str, Any, Any]]:
    """(key, before, after) for every key whose value differs ("<absent>" for a key on one side only)."""
    a, b = flat(before), flat(after)
    keep = (lambda k: True) if include_perf else (lambda k: not k.startswith("perf/"))
    diffs = []
    for key in sorted(k for k in set(a) | set(b) if keep(k)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if not equal(va, vb, tol):
            diffs.append((key, va, vb))
    return diffs


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"{path}: {exc}")
    if not isinstance(data, dict):
        _fail(f"{path}: expected a JSON object")
    return data


def compare_runs(before_root: Path, after_root: Path, tol: float = 0.0, include_perf: bool = False) -> tuple[list[str], dict[str, int]]:
    """The report lines (one per cell slug, sorted) and the counts per verdict."""
    before, after = cell_folders(before_root), cell_folders(after_root)
    lines: list[str] = []
    counts = {"same": 0, "changed": 0, "missing": 0, "ambiguous": 0}
    for slug in sorted(set(before) | set(after)):
        a, b = before.get(slug, []), after.get(slug, [])
        if len(a) > 1 or len(b) > 1:
            names = ", ".join(p.name for p in a + b)
            lines.append(f"ambiguous {slug}: several folders share this slug ({names})")
            counts["ambiguous"] += 1
            continue
        if not a or not b:
            side = "BEFORE" if a else "AFTER"
            lines.append(f"missing   {slug}: only in {side} ({(a or b)[0].name})")
            counts["missing"] += 1
            continue
        ma, mb = a[0] / METRICS_FILE, b[0] / METRICS_FILE
        if not ma.is_file() or not mb.is_file():
            where = " and ".join(str(p) for p in (ma, mb) if not p.is_file())
            lines.append(f"missing   {slug}: no {where}")
            counts["missing"] += 1
            continue
        diffs = compare_metrics(_read(ma), _read(mb), tol, include_perf)
        if diffs:
            shown = "; ".join(f"{k} {_short(x)} -> {_short(y)}" for k, x, y in diffs[:8])
            more = f"; ... {len(diffs) - 8} more keys" if len(diffs) > 8 else ""
            lines.append(f"changed   {slug}: {len(diffs)} keys differ: {shown}{more}")
            counts["changed"] += 1
        else:
            lines.append(f"same      {slug}")
            counts["same"] += 1
    return lines, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="runs folder of the earlier study (e.g. runs/smoke)")
    parser.add_argument("after", type=Path, help="runs folder of the later study")
    parser.add_argument("--tol", type=float, default=0.0, help="absolute tolerance for numbers (default 0: exact)")
    parser.add_argument("--include-perf", action="store_true", help="also compare perf/ keys (fps, peak memory)")
    args = parser.parse_args(argv)
    if args.tol < 0:
        parser.error(f"--tol must be >= 0, got {args.tol}")
    lines, counts = compare_runs(args.before, args.after, args.tol, args.include_perf)
    print("\n".join(lines))
    total = sum(counts.values())
    print(f"summary: {total} cells: " + ", ".join(f"{n} {k}" for k, n in counts.items())
          + ("" if args.include_perf else " (perf/ keys not compared)"))
    return 0 if counts["same"] == total else 1


if __name__ == "__main__":
    sys.exit(main())
