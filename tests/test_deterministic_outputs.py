"""Files DVC tracks in git hold no timings: a fresh clone's `dvc repro` rewrites them byte for byte."""
from __future__ import annotations

import json

from pipeline.paper_model_stats import TIMING_KEYS, write_stats
from tests._study_helpers import REPO


def test_model_stats_file_stores_no_timings(tmp_path):
    row = {"table": "table1", "row": "MaskFormer R50", "params": 41, "gflops": 53.0, "seconds": 2.2,
           "cpu_seconds": 3.4}
    first = write_stats([row], tmp_path / "a.json").read_bytes()
    second = write_stats([dict(row, seconds=9.9, cpu_seconds=0.1)], tmp_path / "b.json").read_bytes()
    assert first == second
    assert not set(TIMING_KEYS) & set(json.loads(first)["rows"][0])
    committed = json.loads((REPO / "reports" / "model_stats" / "paper_models.json").read_text())
    assert all(not set(TIMING_KEYS) & set(r) for r in committed["rows"])


def test_gitignore_covers_dvc_views():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "dvc_plots/" in ignored and "/mlruns/" in ignored and "/runs/" in ignored
