"""Trained cells as a DVC-cached output: export done run folders to `models/<profile>/`, restore them.

`export_models(profile)` (the `models` DVC stage, `python -m pipeline models export`) copies, for every
done cell of the study's plan (reports/study/plan.json, pipeline.plan), what evaluation and the tables need: `checkpoints/final.pt` (+ its
`.sha256`), `config.yaml`, `metrics.json`, `status.json`, `train_log.jsonl` into
`models/<profile>/<cell_id>/`. DVC caches that folder, so `dvc push` sends the trained study to the
configured remote. On a fresh clone, `dvc pull` brings it back and the study (`restore_models`, called
before any cell is submitted) links each exported cell into `runs/<profile>/<cell_id>/` when that
folder is absent: the cells are done, nothing is trained, and `dvc repro` rebuilds the tables.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipeline.runfolder import CONFIG_FILE, METRICS_FILE, STATUS_FILE, TRAIN_LOG

FILES = (CONFIG_FILE, METRICS_FILE, STATUS_FILE, TRAIN_LOG)
CHECKPOINT_FILES = ("final.pt", "final.pt.sha256")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _done(run_dir: Path) -> bool:
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return status.get("status") == "done" and (run_dir / METRICS_FILE).is_file()


def export_models(grid, out_root: str | os.PathLike) -> list[str]:
    """Copy every done cell of `grid` (train cells and evaluation variants) into `out_root/<cell_id>/`;
    the folder is rebuilt from scratch in a temp folder and swapped in (no half-written export)."""
    out_root = Path(out_root)
    tmp_root = out_root.with_name(f".{out_root.name}.tmp")
    shutil.rmtree(tmp_root, ignore_errors=True)
    tmp_root.mkdir(parents=True)
    exported = []
    units = list(grid.train.items()) + [(e, u) for e, u in grid.evals.items() if u.is_variant]
    for uid, unit in sorted(units):
        run_dir = Path(unit.run_dir)
        if not _done(run_dir):
            continue
        for name in FILES:
            if (run_dir / name).is_file():
                _link_or_copy(run_dir / name, tmp_root / uid / name)
        for name in CHECKPOINT_FILES:
            if (run_dir / "checkpoints" / name).is_file():
                _link_or_copy(run_dir / "checkpoints" / name, tmp_root / uid / "checkpoints" / name)
        exported.append(uid)
    old = out_root.with_name(f".{out_root.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_root.exists():
        os.replace(out_root, old)
    os.replace(tmp_root, out_root)
    shutil.rmtree(old, ignore_errors=True)
    return exported


def restore_models(grid, models_root: str | os.PathLike) -> list[str]:
    """Link each exported cell of `grid` found under `models_root/<cell_id>/` into its run folder when
    that folder holds no run yet (never over an existing run). Returns the restored cell ids."""
    models_root = Path(models_root)
    if not models_root.is_dir():
        return []
    restored = []
    units = list(grid.train.items()) + [(e, u) for e, u in grid.evals.items() if u.is_variant]
    for uid, unit in units:
        src, dst = models_root / uid, Path(unit.run_dir)
        if not _done(src) or (dst / STATUS_FILE).exists():
            continue
        tmp = dst.with_name(f".{dst.name}.restore")
        shutil.rmtree(tmp, ignore_errors=True)
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            _link_or_copy(path, tmp / path.relative_to(src))
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():  # an empty or status-less folder left by a run that never started
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        restored.append(uid)
    return restored
