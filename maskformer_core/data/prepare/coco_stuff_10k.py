"""COCO-Stuff-10K v1.0 preparation, as the official datasets/prepare_coco_stuff_10k_v1.0_sem_seg.py
does.

For each split list (imageLists/{train,test}.txt): copy the jpg to images_detectron2/<split>/, read
annotations/<name>.mat with h5py (MATLAB v7.3 = HDF5), field ``S`` transposed, and save
``S - 2`` in uint8 as PNG (1 "unlabeled" -> 255 = ignore, 2..172 -> 0..170).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskformer_core.data.formats import link_or_copy, require_dir, require_file, save_png
from maskformer_core.data.prepare.common import find_top, progress_iter
from maskformer_core.errors import DataError

SPLITS = ("train", "test")


def read_mat_labels(path: Path) -> np.ndarray:
    """Field ``S`` of a v7.3 .mat, transposed to [H, W]."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "S" not in f:
                raise DataError(f"{path}: no field 'S' in the .mat file")
            return np.asarray(f["S"]).T
    except OSError as exc:
        raise DataError(f"{path}: not an HDF5 (MATLAB v7.3) .mat file ({exc})") from exc


def labels_from_mat(s: np.ndarray) -> np.ndarray:
    """S - 2 in uint8 (F step 3)."""
    return (s.astype(np.int64) - 2).astype(np.uint8)


def check(name: str, raw_root: Path) -> dict:
    base = find_top(raw_root, "coco_stuff_10k", "imageLists")
    require_dir(base / "images", "COCO-Stuff images")
    require_dir(base / "annotations", "COCO-Stuff .mat annotations")
    plan = {"splits": []}
    for split in SPLITS:
        lst = require_file(base / "imageLists" / f"{split}.txt", "COCO-Stuff image list")
        names = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
        if not names:
            raise DataError(f"{lst}: empty image list")
        for n in names:
            require_file(base / "images" / f"{n}.jpg", f"image listed in {lst.name}")
            require_file(base / "annotations" / f"{n}.mat", f"annotation listed in {lst.name}")
        plan["splits"].append((split, names))
    plan["base"] = base
    return plan


def run(name: str, plan: dict, out: Path, progress: bool = True) -> None:
    base = plan["base"]
    for split, names in plan["splits"]:
        (out / "images_detectron2" / split).mkdir(parents=True, exist_ok=True)
        (out / "annotations_detectron2" / split).mkdir(parents=True, exist_ok=True)
        for n in progress_iter(names, f"coco_stuff_10k {split}", progress):
            link_or_copy(base / "images" / f"{n}.jpg", out / "images_detectron2" / split / f"{n}.jpg")
            lab = labels_from_mat(read_mat_labels(base / "annotations" / f"{n}.mat"))
            save_png(lab, out / "annotations_detectron2" / split / f"{n}.png")
