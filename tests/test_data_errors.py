"""Data package bad input: each problem raises DataError naming the culprit file; failed prepares leave nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskformer_core.data import get_metadata, prepare, synthesize, validate
from maskformer_core.data.formats import id2rgb, read_panoptic_png
from maskformer_core.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SIZE = (48, 64)


def _twin(tmp_path: Path, name: str, prepared: bool = True) -> Path:
    raw = tmp_path / "raw" / name
    synthesize(name, raw, num_images=6, num_classes=4, image_size=SIZE, seed=1)
    if not prepared:
        return raw
    out = tmp_path / "prep" / name
    prepare(name, raw, out, progress=False)
    return out


def test_missing_folder_and_wrong_layout(tmp_path):
    root = _twin(tmp_path, "ade20k")
    shutil.rmtree(root / "annotations_detectron2" / "validation")
    with pytest.raises(DataError, match=r"annotations_detectron2/validation: missing folder"):
        validate("ade20k", root, "val")
    with pytest.raises(DataError, match=r"images/training"):
        validate("ade20k", root / "images", "train")  # one level too deep


def test_missing_label_file(tmp_path):
    root = _twin(tmp_path, "coco_stuff_10k")
    victim = sorted((root / "annotations_detectron2" / "train").glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim.name}: missing label file"):
        validate("coco_stuff_10k", root, "train")


def test_corrupt_image(tmp_path):
    root = _twin(tmp_path, "mapillary_vistas")
    victim = sorted((root / "training" / "images").glob("*.jpg"))[1]
    data = victim.read_bytes()
    victim.unlink()  # break the hard link to the raw twin before writing
    victim.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=rf"{victim.name}: corrupt or unreadable image"):
        validate("mapillary_vistas", root, "train")


def test_label_value_outside_classes(tmp_path):
    root = _twin(tmp_path, "ade20k")  # K = 4: values 0..3 and 255 are legal
    victim = sorted((root / "annotations_detectron2" / "training").glob("*.png"))[0]
    lab = np.asarray(Image.open(victim)).copy()
    lab[0, 0] = 7
    victim.unlink()
    Image.fromarray(lab).save(victim)
    with pytest.raises(DataError, match=rf"{victim.name}: label value\(s\) \[7\] outside"):
        validate("ade20k", root, "train")


def test_image_label_size_mismatch(tmp_path):
    root = _twin(tmp_path, "ade20k_full")
    import tifffile

    victim = sorted((root / "annotations_detectron2" / "validation").glob("*.tif"))[0]
    victim.unlink()
    tifffile.imwrite(str(victim), np.zeros((SIZE[0] + 2, SIZE[1]), np.uint16))
    with pytest.raises(DataError, match=rf"{victim.name}: label size 64x50 differs from image"):
        validate("ade20k_full", root, "val")


def test_panoptic_png_segment_missing_from_json_and_reverse(tmp_path):
    root = _twin(tmp_path, "coco_panoptic")
    json_file = root / "annotations" / "panoptic_train2017.json"
    data = json.loads(json_file.read_text())
    ann = data["annotations"][0]
    png = root / "panoptic_train2017" / ann["file_name"]
    ids = read_panoptic_png(png)
    # Reverse: a JSON segment absent from the PNG.
    ann["segments_info"].append({"id": 4242, "category_id": ann["segments_info"][0]["category_id"], "iscrowd": 0})
    json_file.unlink()
    json_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"panoptic_train2017.json: segment id\(s\) \[4242\] .* do not occur in"):
        validate("coco_panoptic", root, "train")
    ann["segments_info"].pop()
    json_file.write_text(json.dumps(data))
    validate("coco_panoptic", root, "train")
    # A PNG segment absent from the JSON.
    ids[0, 0] = 999
    png.unlink()
    Image.fromarray(id2rgb(ids)).save(png)
    with pytest.raises(DataError, match=rf"{ann['file_name']}: segment id\(s\) \[999\] in the PNG are missing"):
        validate("coco_panoptic", root, "train")


def test_ade20k_panoptic_json_segment_without_pixels_is_accepted(tmp_path):
    """The official ADE20K-panoptic JSON keeps segments an instance covered completely (see the prep)."""
    root = _twin(tmp_path, "ade20k_panoptic")
    json_file = root / "ade20k_panoptic_train.json"
    data = json.loads(json_file.read_text())
    ann = data["annotations"][0]
    ann["segments_info"].append({"id": 4242, "category_id": ann["segments_info"][0]["category_id"],
                                 "area": 7, "bbox": [0, 0, 1, 7], "iscrowd": 0})
    json_file.write_text(json.dumps(data))
    assert validate("ade20k_panoptic", root, "train")["train"] > 0


def test_failed_prepare_leaves_nothing(tmp_path):
    # Layout error: raised by the checks before any work.
    raw = _twin(tmp_path, "coco_stuff_10k", prepared=False)
    victim = sorted((raw / "annotations").glob("*.mat"))[2]
    victim.unlink()
    out = tmp_path / "prep" / "coco_stuff_10k"
    with pytest.raises(DataError, match=rf"{victim.name}: missing file"):
        prepare("coco_stuff_10k", raw, out, progress=False)
    assert not out.exists()
    # Content error found half way through the conversion: the temp folder is removed too.
    victim.write_bytes(b"not an HDF5 file")
    with pytest.raises(DataError, match=rf"{victim.name}: not an HDF5"):
        prepare("coco_stuff_10k", raw, out, progress=False)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == []


def test_failed_prepare_keeps_previous_output(tmp_path):
    raw = _twin(tmp_path, "ade20k_panoptic", prepared=False)
    out = tmp_path / "prep" / "ade20k_panoptic"
    prepare("ade20k_panoptic", raw, out, progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    (raw / "ade20k_instance_catid_mapping.txt").unlink()
    with pytest.raises(DataError, match=r"ade20k_instance_catid_mapping.txt: missing file"):
        prepare("ade20k_panoptic", raw, out, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_unsafe_ade20k_full_index_rejected(tmp_path):
    raw = _twin(tmp_path, "ade20k_full", prepared=False)
    index = raw / "ADE20K_2021_17_01" / "index_ade20k.pkl"
    # A pickle whose loading would call os.system: refused without running it.
    index.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(DataError, match=r"index_ade20k.pkl: unreadable or unsafe pickle"):
        prepare("ade20k_full", raw, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_reports_data_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "pipeline", "data", "validate", "--dataset", "cityscapes",
                          "--root", str(tmp_path / "nowhere")], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 2 and "nowhere: missing folder" in res.stderr


def _dvc(*args, cwd):
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return subprocess.run([dvc, *args], cwd=cwd, capture_output=True, text=True, env=env, check=True)


def test_dvc_push_pull_round_trip(tmp_path):
    """A prepared twin tracked by DVC survives push -> wipe -> pull to a local remote byte for byte."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc("init", "-q", cwd=repo)
    _dvc("config", "core.analytics", "false", cwd=repo)
    _dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=repo)
    out = repo / "data" / "synthetic" / "cityscapes"  # a twin: the smoke layout (params.yaml)
    raw = tmp_path / "raw"
    synthesize("cityscapes", raw, num_images=4, num_classes=3, image_size=SIZE, seed=2)
    prepare("cityscapes", raw, out, progress=False)
    digest = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _dvc("add", "-q", "data/synthetic/cityscapes", cwd=repo)
    _dvc("push", "-q", cwd=repo)
    shutil.rmtree(out)
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc("pull", "-q", cwd=repo)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == digest
    validate("cityscapes", out)
    assert get_metadata("cityscapes", out).num_classes == 3
