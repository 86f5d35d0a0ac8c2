"""`dvc exp run -S` on one cell (params.yaml `cell_overrides`), and DVC's params views naming one key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.params import validate_params
from tests._study_helpers import REPO, STAND_IN

DVC = str(Path(sys.executable).with_name("dvc"))


def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_cell_override_replaces_one_field_of_one_cell():
    raw = _raw()
    raw["cell_overrides"] = {"table6": {"1": {"queries": 30}}}
    params = validate_params(raw)
    plain = validate_params(_raw())
    assert params.grid["table6"].cells[1].queries == 30 and plain.grid["table6"].cells[1].queries == 20
    assert [c for i, c in enumerate(params.grid["table6"].cells) if i != 1] == \
        [c for i, c in enumerate(plain.grid["table6"].cells) if i != 1]
    assert raw["grid"]["table6"]["cells"][1]["queries"] == 20  # the caller's dict is left alone


@pytest.mark.parametrize("override, named", [
    ({"table9": {"0": {"queries": 30}}}, "cell_overrides.table9: no table 'table9'"),
    ({"table6": {"99": {"queries": 30}}}, "cell_overrides.table6.99: not a cell index"),
    ({"table6": {"1": {"querys": 30}}}, "cell_overrides.table6.1.querys: unknown cell field"),
    ({"table6": {"1": {"queries": 5000}}}, "grid.table6.cells[1].queries"),
])
def test_bad_cell_override_names_the_key(override, named):
    raw = _raw()
    raw["cell_overrides"] = override
    with pytest.raises(UserError) as err:
        validate_params(raw)
    assert named in str(err.value)


def _run(cmd, cwd, env, timeout=600):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_dvc_exp_run_on_one_cell_retrains_only_that_cell(tmp_path):
    if not Path(DVC).exists():
        pytest.skip(f"dvc not installed at {DVC}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env.update(DVC_NO_ANALYTICS="1", PYTHONPATH="", OMP_NUM_THREADS="1",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    repo = tmp_path / "repo"
    # The working tree under test (tracked files, uncommitted changes included) in a fresh git repo.
    for rel in _run(["git", "ls-files"], REPO, env).split():
        src = REPO / rel
        if src.is_file() and not rel.startswith(("reports/", "docs/", "benchmarks/")):
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_bytes(src.read_bytes())
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])
    raw = _raw()
    # Two Table 6 cells (Q20, Q50 ADE20K) and the stand-in cell function (no torch): what is measured
    # here is which cells DVC and the study run, not training.
    raw["grid"] = {"table6": dict(raw["grid"]["table6"], cells=raw["grid"]["table6"]["cells"][1:3])}
    raw["study"]["cell_fn"] = STAND_IN
    # Only the twin those cells read (dvc.yaml's `data` stages are one per `data` key): the other six
    # data stages would add a `pipeline data make` process each and nothing this test checks.
    raw["data"] = {"ade20k": dict(raw["data"]["ade20k"], num_images=8)}  # the stand-in never reads images
    raw["study"]["retry_delay_s"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    _run(["git", "init", "-q"], repo, env)
    with open(repo / ".git" / "info" / "exclude", "a") as fh:
        fh.write(".venv\n")
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "two cells"], repo, env)
    _run([DVC, "repro", "study"], repo, env)
    before = {c["cell_id"]: c for c in json.loads((repo / "reports/study/cells.json").read_text())["cells"]}
    assert len(before) == 2 and not any(c["skipped"] for c in before.values())
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "trained"], repo, env)

    out = _run([DVC, "exp", "run", "-n", "q30", "-S", "++cell_overrides.table6.1.queries=30", "study"], repo, env)
    after = {c["cell_id"]: c for c in json.loads((repo / "reports/study/cells.json").read_text())["cells"]}
    q20 = next(i for i in before if "-q20-" in i)
    q30 = next(i for i in after if "-q30-" in i)
    assert set(after) == {q20, q30}, out
    assert after[q20]["skipped"] and not after[q30]["skipped"]
    calls = {p.parent.name: len(p.read_text().split()) for p in (repo / "runs" / "smoke").glob("*/calls.log")}
    assert calls == {q20: 1, q30: 1, next(i for i in before if "-q50-" in i): 1}  # nothing else trained

    diff = _run([DVC, "params", "diff"], repo, env)
    assert "cell_overrides.table6.1.queries" in diff and "30" in diff
    assert "grid." not in diff  # one key, not the whole table's cell list
    table = _run([DVC, "exp", "show", "--only-changed", "--no-pager", "--md"], repo, env)
    assert "q30" in table and "cell_overrides.table6.1.queries" in table
    assert "…" not in table.splitlines()[0]  # the header is readable
