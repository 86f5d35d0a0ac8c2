"""scripts/compare_metrics.py: cells of two study runs folders matched by slug (hash ignored), diffs named."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_metrics.py"

METRICS = {"val/mIoU": 17.274110472317886, "val/IoU/wall": 29.93, "train/iterations": 120,
           "perf/fps": 56.26, "analysis/unique_categories_per_query": [0, 1, 0]}


def _cell(root: Path, name: str, metrics: dict | None) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"cell_id": name}))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def _run(*args: Path | str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_matches_by_slug_and_names_each_difference(tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    # same slug, other hash: matched; only perf/ differs -> same
    _cell(before, "ade20k-mf-SmokeR18-q100-d6-s0-318fad8b", METRICS)
    _cell(after, "ade20k-mf-SmokeR18-q100-d6-s0-0a1b2c3d4e", dict(METRICS, **{"perf/fps": 12.0}))
    # an evaluation-only variant whose mIoU changed
    _cell(before, "ade20k-mf-SmokeR18-q20-d6-s0-general_semantic-8a5a6b89", METRICS)
    _cell(after, "ade20k-mf-SmokeR18-q20-d6-s0-general_semantic-ffee0011", dict(METRICS, **{"val/mIoU": 18.5}))
    # seed 1 only before; a cell without metrics.json after
    _cell(before, "ade20k-mf-SmokeR18-q100-d6-s1-12345678", METRICS)
    _cell(before, "coco_panoptic-mf-SmokeR18-q20-d6-s0-aaaaaaaa", METRICS)
    _cell(after, "coco_panoptic-mf-SmokeR18-q20-d6-s0-bbbbbbbb", None)
    proc = _run(before, after)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert "same      ade20k-mf-SmokeR18-q100-d6-s0" in lines
    changed = [ln for ln in lines if ln.startswith("changed   ade20k-mf-SmokeR18-q20-d6-s0-general_semantic:")]
    assert len(changed) == 1 and "val/mIoU 17.274110472317886 -> 18.5" in changed[0] and "perf/" not in changed[0]
    assert any(ln.startswith("missing   ade20k-mf-SmokeR18-q100-d6-s1: only in BEFORE") for ln in lines)
    assert any(ln.startswith("missing   coco_panoptic-mf-SmokeR18-q20-d6-s0: no ") for ln in lines)
    assert lines[-1].startswith("summary: 4 cells: 1 same, 1 changed, 2 missing, 0 ambiguous")


def test_identical_folders_exit_0_and_perf_compared_on_request(tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    _cell(before, "ade20k-pp-SmokeR18-s0-11111111", METRICS)
    _cell(after, "ade20k-pp-SmokeR18-s0-22222222", dict(METRICS, **{"perf/fps": 1.0}))
    assert _run(before, after).returncode == 0
    proc = _run(before, after, "--include-perf")
    assert proc.returncode == 1 and "perf/fps 56.26 -> 1.0" in proc.stdout


def test_missing_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    proc = _run(tmp_path / "nope", tmp_path)
    assert proc.returncode == 2 and str(tmp_path / "nope") in proc.stderr


def test_released_cells_match_across_the_old_and_the_new_id_format(tmp_path: Path) -> None:
    """A released profile's ids were `<slug>-<hash>-rel<hash>`; with one result hash `<slug>-rel-<hash>`."""
    before, after = tmp_path / "before", tmp_path / "after"
    _cell(before, "ade20k-mf-R50-q100-d6-s0-6827b4b0-rel6980ca", METRICS)
    _cell(after, "ade20k-mf-R50-q100-d6-s0-rel-2f1b2f3e", dict(METRICS, **{"val/mIoU": 18.0}))
    out = _run(before, after)
    assert out.returncode == 1, out.stderr
    assert "changed   ade20k-mf-R50-q100-d6-s0: " in out.stdout and "missing" not in out.stdout.split("summary")[0]
