"""DVC tracks the trained study: the `models` stage caches each done cell's final checkpoint (and what
evaluation and the tables need), `dvc push` sends it to a local directory remote, and a fresh clone's
`dvc pull && dvc repro study` restores the run folders and rebuilds the tables without training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._study_helpers import REPO

SOLVER = {"ims_per_batch": 2, "max_iter": 3, "warmup_iters": 1, "warmup_factor": 0.01, "base_lr": 5.0e-4,
          "backbone_multiplier": 1.0}


def _run(cmd, cwd, env, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _checkout(src: Path, dst: Path, env) -> None:
    _run(["git", "clone", "-q", str(src), str(dst)], src.parent, env)
    (dst / ".venv").symlink_to(Path(sys.executable).parents[1])
    with open(dst / ".git" / "info" / "exclude", "a") as fh:
        fh.write(".venv\n")  # a symlink here; `.venv/` in .gitignore matches directories only


@pytest.mark.slow
def test_fresh_clone_pulls_the_trained_study_and_rebuilds_tables_without_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env.update(DVC_NO_ANALYTICS="1", PYTHONPATH="", OMP_NUM_THREADS="1",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    origin = tmp_path / "origin"
    _run(["git", "clone", "-q", str(REPO), str(origin)], tmp_path, env)
    # The working tree under test (uncommitted changes included), then a tiny study: one Table 1 cell.
    for rel in _run(["git", "ls-files"], REPO, env).stdout.split():
        src = REPO / rel
        if src.is_file():
            (origin / rel).parent.mkdir(parents=True, exist_ok=True)
            (origin / rel).write_bytes(src.read_bytes())
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["grid"] = {"table1": dict(raw["grid"]["table1"], cells=raw["grid"]["table1"]["cells"][:1])}
    # Only the twin that cell trains on (dvc.yaml's `data` stages are one per `data` key): the other six
    # would add a `pipeline data make` process, a push and a pull each, and nothing this test checks.
    raw["data"] = {"ade20k": raw["data"]["ade20k"]}
    smoke = raw["profiles"]["smoke"]
    smoke["solver"] = SOLVER
    smoke["test"] = {"max_images": 2, "fps_images": 1, "fps_warmup": 0}
    (origin / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    remote = tmp_path / "remote"
    _run(["git", "add", "-A"], origin, env)
    _run(["git", "commit", "-qm", "tiny study"], origin, env)

    work = tmp_path / "work"
    _checkout(origin, work, env)
    _run([".venv/bin/dvc", "remote", "modify", "--local", "local", "url", str(remote)], work, env)
    _run([".venv/bin/dvc", "repro", "models"], work, env)
    cells = json.loads((work / "reports" / "study" / "cells.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["done"] and not cells[0]["skipped"]
    cell = cells[0]["cell_id"]
    trained = (work / "runs" / "smoke" / cell / "checkpoints" / "final.pt").read_bytes()
    assert (work / "models" / "smoke" / cell / "checkpoints" / "final.pt").read_bytes() == trained
    _run([".venv/bin/dvc", "push"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "trained"], work, env)
    _run(["git", "push", "-q", str(origin), "HEAD:refs/heads/trained"], work, env)

    fresh = tmp_path / "fresh"
    _run(["git", "clone", "-q", "-b", "trained", str(origin), str(fresh)], tmp_path, env)
    (fresh / ".venv").symlink_to(Path(sys.executable).parents[1])
    with open(fresh / ".git" / "info" / "exclude", "a") as fh:
        fh.write(".venv\n")
    _run([".venv/bin/dvc", "remote", "modify", "--local", "local", "url", str(remote)], fresh, env)
    assert not (fresh / "models" / "smoke").exists() and not (fresh / "runs").exists()
    # dvc.yaml only: data/dvc.yaml holds the opt-in real-data stages (none listed in data/params.yaml).
    _run([".venv/bin/dvc", "pull", "dvc.yaml"], fresh, env)
    assert (fresh / "models" / "smoke" / cell / "checkpoints" / "final.pt").read_bytes() == trained
    _run([".venv/bin/dvc", "repro", "study"], fresh, env)
    status = _run([".venv/bin/dvc", "status"], fresh, env)
    assert "prepare" not in status.stdout + status.stderr  # data/dvc.yaml's opt-in stages: none listed
    after = json.loads((fresh / "reports" / "study" / "cells.json").read_text())["cells"]
    assert [(c["cell_id"], c["status"], c["skipped"]) for c in after] == [(cell, "done", True)]
    assert (fresh / "runs" / "smoke" / cell / "checkpoints" / "final.pt").read_bytes() == trained
    assert not list((fresh / "runs" / "smoke" / cell).glob("logs/*"))  # no job was submitted for it
    for rel in ("reports/metrics.json", "reports/metrics/table1.json", "reports/plots/queries.csv"):
        assert (fresh / rel).read_bytes() == (work / rel).read_bytes(), rel
    changed = {line[3:] for line in _run(["git", "status", "--porcelain"], fresh, env).stdout.splitlines()}
    # The study records name the new study run (cells.json, and the plan it wrote when it started).
    assert changed <= {"reports/study/cells.json", "reports/study/plan.json", "dvc.lock"}, changed
    _run([".venv/bin/python", "-m", "pipeline", "tables", "--profile", "smoke"], fresh, env)
    table = (fresh / "reports" / "tables" / "table1.csv").read_text()
    metrics = json.loads((fresh / "runs" / "smoke" / cell / "metrics.json").read_text())
    assert f"{metrics['val/mIoU']:.1f}" in table or f"{metrics['val/mIoU']:.2f}" in table
