"""Twins vs real data layout: params.yaml data-root rules and the opt-in real-data DVC stages (data/dvc.yaml)."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.errors import UserError
from pipeline.grid import data_version
from pipeline.params import DATASETS, validate_params

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "dvc")


def _raw() -> dict:
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


def _error(raw: dict) -> str:
    with pytest.raises(UserError) as exc:
        validate_params(raw)
    return str(exc.value)


def test_committed_params_keep_twins_and_real_data_apart():
    params = validate_params(_raw())
    assert params.profiles["smoke"].data_root == "data/synthetic"
    assert params.profiles["paper"].data_root == params.profiles["single_gpu"].data_root == "data/prepared"
    assert params.study.data_root == params.profiles[params.study.profile].data_root


def test_real_profile_pointing_at_twins_is_refused():
    raw = _raw()
    raw["profiles"]["paper"]["data_root"] = "./data/synthetic/"  # normalised before the comparison
    msg = _error(raw)
    assert "profiles.paper.data_root" in msg and "synthetic twins" in msg


def test_synthetic_profile_pointing_at_real_data_or_raw_is_refused():
    raw = _raw()
    raw["profiles"]["smoke"]["data_root"] = raw["study"]["data_root"] = "data/prepared"
    assert "profiles.smoke.data_root" in _error(raw)
    raw["profiles"]["smoke"]["data_root"] = raw["study"]["data_root"] = "data/raw"
    assert "raw download folder" in _error(raw)


def test_synthetic_profile_accepts_a_custom_twin_folder(tmp_path):
    raw = _raw()
    raw["profiles"]["smoke"]["data_root"] = raw["study"]["data_root"] = str(tmp_path / "twins")
    assert validate_params(raw).profiles["smoke"].data_root == str(tmp_path / "twins")


def test_study_data_root_must_follow_the_active_profile():
    raw = _raw()
    raw["study"]["profile"] = "paper"  # switched without study.data_root: DVC would track the twins
    msg = _error(raw)
    assert "study.data_root" in msg and "'data/prepared'" in msg
    raw["study"]["data_root"] = "data/prepared"
    assert validate_params(raw).study.data_root == "data/prepared"


def test_data_version_reads_the_real_data_lock(tmp_path):
    (tmp_path / "data").mkdir()
    lock = {"schema": "2.0", "stages": {"prepare@ade20k": {"outs": [
        {"path": "data/prepared/ade20k", "hash": "md5", "md5": "0123456789abcdef0123.dir"}]}}}
    (tmp_path / "data" / "dvc.lock").write_text(yaml.safe_dump(lock))
    locks = (tmp_path / "dvc.lock", tmp_path / "data" / "dvc.lock")  # the first is absent
    assert data_version("data/prepared/ade20k", locks) == "0123456789ab"
    assert data_version(tmp_path / "data" / "synthetic" / "ade20k", locks) == "none"  # no lock entry, no twin


def _dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The pipeline files of this repository in a fresh git + DVC repo, without data or runs."""
    if not Path(DVC).exists():
        # dvc is a project dependency: CI (REQUIRE_SERVICES=1, scripts/test.sh) must not skip silently.
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"dvc not installed at {DVC} (REQUIRE_SERVICES=1)")
        pytest.skip(f"dvc not installed at {DVC}")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "data/dvc.yaml", "data/params.yaml"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, repo / name)
    for name in ("maskformer_core", "pipeline", "flows"):  # stage deps
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc("init", "-q", cwd=repo)
    _dvc("config", "core.analytics", "false", cwd=repo)
    return repo


def _list_prepared(repo: Path, datasets: list[str]) -> None:
    (repo / "data" / "params.yaml").write_text(yaml.safe_dump({"prepare": datasets}))


def test_default_repro_skips_real_data_stages_and_status_lists_only_listed_ones(repo_copy: Path):
    repo = repo_copy
    # No real data at all, data/params.yaml as shipped: `dvc status` says nothing about prepare stages.
    status = _dvc("status", cwd=repo)
    assert "prepare" not in status.stdout + status.stderr
    # A dataset listed in data/params.yaml gets its stage, which `dvc status` then reports.
    _list_prepared(repo, ["ade20k"])
    status = _dvc("status", cwd=repo).stdout
    assert "data/dvc.yaml:prepare@ade20k:" in status and "deleted:            data/raw/ade20k" in status
    assert "prepare@cityscapes" not in status
    # Default `dvc repro` (target dvc.yaml): stand-ins for the upstream outputs let the dry run pass
    # every stage; the real-data stages are not part of it.
    for d in DATASETS:
        (repo / "data" / "synthetic" / d).mkdir(parents=True)
        (repo / "data" / "synthetic" / d / "SYNTHETIC.json").write_text("{}")
    for name in ("reports/study/cells.json", "reports/study/plan.json", "reports/model_stats/paper_models.json", "reports/claims.json",
                 "reports/tables.pdf"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("{}")
    (repo / "reports" / "tables").mkdir(parents=True, exist_ok=True)  # the tables stage's output, read by `report`
    (repo / "pipeline" / "data").mkdir(exist_ok=True)
    dry = _dvc("repro", "--dry", cwd=repo)
    out = dry.stdout + dry.stderr
    assert "Running stage 'data@ade20k'" in out and "Running stage 'study'" in out
    assert "prepare@" not in out
    # The study follows study.data_root: twins in smoke, the prepare stages once switched to paper.
    dag = _dvc("dag", "study", cwd=repo).stdout
    assert "data@ade20k" in dag and "prepare@" not in dag
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["study"].update(profile="paper", data_root="data/prepared")
    _list_prepared(repo, list(DATASETS))
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    validate_params(raw)
    dag = _dvc("dag", "study", cwd=repo).stdout
    assert all(f"prepare@{d}" in dag for d in DATASETS) and "data@ade20k" not in dag


def test_dvc_add_of_a_real_download_is_not_git_ignored(repo_copy: Path):
    repo = repo_copy
    raw = repo / "data" / "raw" / "ade20k"
    raw.mkdir(parents=True)
    (raw / "file.txt").write_text("x")
    _dvc("add", "-q", "data/raw/ade20k", cwd=repo)
    tracked = subprocess.run(["git", "check-ignore", "-q", "data/raw/ade20k.dvc"], cwd=repo)
    assert tracked.returncode == 1  # not ignored: the .dvc file can be committed
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/raw/ade20k/file.txt"], cwd=repo)
    assert ignored.returncode == 0
