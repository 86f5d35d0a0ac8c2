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


@pytest.mark.slow  # ~37 s on 2 cores: a 64-image COCO panoptic twin made and validated three times
def test_real_coco_panoptic_root_needs_the_official_133_categories(tmp_path):
    import json

    from maskformer_core.data.metadata import get_metadata

    root = tmp_path / "prepared" / "coco_panoptic"
    subprocess.run([sys.executable, "-m", "pipeline", "data", "make", "--dataset", "coco_panoptic", "--params",
                    str(REPO / "params.yaml"), "--out", str(root)], check=True, capture_output=True, cwd=REPO)
    (root / "SYNTHETIC.json").unlink()
    cmd = [sys.executable, "-m", "pipeline", "data", "validate", "--dataset", "coco_panoptic", "--root", str(root),
           "--real", "--subset"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    val_json = root / "annotations" / "panoptic_val2017.json"
    assert out.returncode == 2 and f"{val_json}: 4 categories, the official coco_panoptic has K = 133" in out.stderr

    meta = get_metadata("coco_panoptic")
    data = json.loads(val_json.read_text())
    data["categories"] = [{"id": i, "name": n, "isthing": int(k in meta.thing_ids), "supercategory": "x"}
                          for k, (i, n) in enumerate(zip(meta.dataset_ids, meta.class_names))]
    data["categories"][0]["name"] = "persn"
    val_json.write_text(json.dumps(data))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "category 1 is named 'persn', the official coco_panoptic name is 'person'" in out.stderr

    data["categories"][0]["name"] = "person"
    val_json.write_text(json.dumps(data))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr


def test_ade20k_full_preparation_needs_the_official_847_class_list(tmp_path):
    from maskformer_core.data.metadata import SYNTHETIC_MARKER
    from maskformer_core.data.prepare import ade20k_full
    from maskformer_core.errors import DataError

    raw = tmp_path / "raw" / "ade20k_full"
    subprocess.run([sys.executable, "-m", "pipeline", "data", "synth", "--dataset", "ade20k_full", "--out", str(raw),
                    "--num-images", "4", "--num-classes", "8", "--seed", "0"], check=True, capture_output=True, cwd=REPO)
    assert len(ade20k_full.check("ade20k_full", raw)["lut"]) == 8  # a twin lists its own K classes
    (raw / SYNTHETIC_MARKER).unlink()
    with pytest.raises(DataError, match=r"ade20k_full_categories\.json: 8 entries .* has 847 classes"):
        ade20k_full.check("ade20k_full", raw)
