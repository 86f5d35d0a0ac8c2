"""`data validate` on a real root: a twin marker is an error naming it, the class list must be the
official one (K = 150 for ADE20K), the splits must have the official sizes unless --subset says a
subset is meant."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskformer_core.data.validate import OFFICIAL_SPLIT_SIZES
from tests._study_helpers import REPO


@pytest.fixture(scope="module")
def twin_copy(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("real")
    subprocess.run([sys.executable, "-m", "pipeline", "data", "make", "--dataset", "ade20k", "--params",
                    str(REPO / "params.yaml"), "--out", str(base / "twin")], check=True, capture_output=True, cwd=REPO)
    return base / "twin"


def _validate(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "data", "validate", "--dataset", "ade20k", "--root",
                           str(root), "--real", *extra], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_real_root_checks_marker_class_list_and_split_sizes(twin_copy, tmp_path):
    root = tmp_path / "prepared" / "ade20k"
    shutil.copytree(twin_copy, root)

    out = _validate(root)
    assert out.returncode == 2 and f"{root / 'SYNTHETIC.json'}: a synthetic twin's marker" in out.stderr

    (root / "SYNTHETIC.json").unlink()
    out = _validate(root)
    assert out.returncode == 2 and f"{root / 'objectInfo150.txt'}: lists" in out.stderr
    assert "K = 150" in out.stderr

    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0\t0\t0\tclass{i}" for i in range(1, 151)]
    (root / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    out = _validate(root)
    assert out.returncode == 2
    assert f"split 'train' has 48 images, the official ade20k release has {OFFICIAL_SPLIT_SIZES['ade20k']['train']}" \
        in out.stderr and "--subset" in out.stderr

    out = _validate(root, "--subset")
    assert out.returncode == 0, out.stderr
    assert "train: 48 of the official 20210 images (--subset)" in out.stdout
    assert "val: 16 of the official 2000 images (--subset)" in out.stdout


def test_twin_root_is_still_validated_as_a_twin(twin_copy):
    out = subprocess.run([sys.executable, "-m", "pipeline", "data", "validate", "--dataset", "ade20k", "--root",
                          str(twin_copy)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and "(synthetic twin)" in out.stdout
