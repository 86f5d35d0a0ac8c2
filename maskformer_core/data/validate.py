"""Fast consistency pass over a prepared (or shipped) dataset split; DataError names file and problem.

Checks: missing files/folders and wrong layout, corrupt images, labels outside the dataset's classes
(ignore excepted), image/label size mismatch, panoptic PNG segments missing from the JSON and JSON
segments missing from the PNG, unknown categories, duplicates in the panoptic JSON
(`datasets.read_panoptic_json`), label files without an image, panoptic PNGs no annotation names.
Labels that are all ignore (no mask loss, no score) are counted: a warning naming how many, an error
when every label of the split is.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from maskformer_core.data.datasets import panoptic_paths, read_panoptic_json, semantic_pairs
from maskformer_core.data.formats import read_image, read_label, read_panoptic_png, require_dir
from maskformer_core.data.metadata import DatasetMeta, get_metadata
from maskformer_core.errors import DataError

log = logging.getLogger(__name__)


def _report_empty(empty: list[Path], total: int, split: str, what: str) -> None:
    """Labels with nothing to learn from: a counted warning, or DataError when the whole split is so."""
    if not empty:
        return
    shown = ", ".join(p.name for p in empty[:3])
    if len(empty) == total:
        raise DataError(f"{empty[0].parent}: all {total} {split} {what} (e.g. {shown}); training on them "
                        f"would have no mask loss and evaluation nothing to score")
    log.warning("%s: %d of %d %s %s (e.g. %s); they add no mask loss", empty[0].parent, len(empty), total,
                split, what, shown)


def _check_values(path, lab: np.ndarray, allowed: np.ndarray, ignore: int) -> None:
    vals = np.unique(lab)
    bad = vals[~np.isin(vals, allowed) & (vals != ignore)]
    if len(bad):
        raise DataError(f"{path}: label value(s) {bad[:5].tolist()} outside the dataset's "
                        f"{len(allowed)} classes (ignore = {ignore})")


def _check_image(img_path: Path) -> tuple[int, int]:
    arr = read_image(img_path)  # full decode: catches truncated/corrupt files
    return arr.shape[0], arr.shape[1]


def _validate_semantic(name: str, meta: DatasetMeta, root: Path, split: str) -> int:
    allowed = np.arange(meta.num_classes)
    pairs = semantic_pairs(name, root, split)
    empty: list[Path] = []
    for img, lab_path in pairs:
        if not lab_path.is_file():
            raise DataError(f"{lab_path}: missing label file for image {img}")
        hw = _check_image(img)
        lab = read_label(lab_path)
        if lab.shape != hw:
            raise DataError(f"{lab_path}: label size {lab.shape[1]}x{lab.shape[0]} differs from image "
                            f"{img} size {hw[1]}x{hw[0]}")
        _check_values(lab_path, lab, allowed, meta.ignore_label)
        if (lab == meta.ignore_label).all():
            empty.append(lab_path)
    _report_empty(empty, len(pairs), split, "labels are all ignore")
    return len(pairs)


# Datasets whose official GT JSON may list segments with no pixel in the PNG: the official
# datasets/prepare_ade20k_pan_seg.py paints instances over stuff and keeps every segment (with its
# pre-overwrite area), and panopticapi's pq_compute accepts such GT segments (they count as FN).
JSON_ONLY_SEGMENTS_OK = frozenset({"ade20k_panoptic"})


def _validate_panoptic(name: str, meta: DatasetMeta, root: Path, split: str) -> int:
    json_file, pan_dir, img_dir, sem_dir = panoptic_paths(name, root, split)
    data = read_panoptic_json(json_file)
    require_dir(pan_dir, "panoptic PNG folder")
    require_dir(img_dir, "image folder")
    known = set(meta.dataset_ids)
    for cat in data["categories"]:
        if cat["id"] not in known:
            raise DataError(f"{json_file}: category {cat['id']} ({cat.get('name')}) is not a class of {name}")
    images = {im["id"]: im for im in data["images"]}
    listed = {ann["file_name"] for ann in data["annotations"]}
    orphans = sorted(p.name for p in pan_dir.iterdir() if p.suffix.lower() == ".png" and p.name not in listed)
    if orphans:
        raise DataError(f"{pan_dir / orphans[0]}: panoptic PNG that no annotation of {json_file.name} names "
                        f"({len(orphans)} such file(s): {', '.join(orphans[:3])})")
    empty: list[Path] = []
    for ann in data["annotations"]:
        png = pan_dir / ann["file_name"]
        im = images.get(ann["image_id"])
        if im is None:
            raise DataError(f"{json_file}: annotation {ann['file_name']} refers to unknown image_id {ann['image_id']!r}")
        img_path = img_dir / im["file_name"]
        hw = _check_image(img_path)
        if (im.get("height"), im.get("width")) not in ((None, None), hw):
            raise DataError(f"{json_file}: image {im['file_name']} listed as {im['width']}x{im['height']}, "
                            f"file {img_path} is {hw[1]}x{hw[0]}")
        ids = read_panoptic_png(png)
        if ids.shape != hw:
            raise DataError(f"{png}: size {ids.shape[1]}x{ids.shape[0]} differs from image {img_path} "
                            f"size {hw[1]}x{hw[0]}")
        json_ids = set()
        for seg in ann["segments_info"]:
            if seg["category_id"] not in known:
                raise DataError(f"{json_file}: segment {seg['id']} of {ann['file_name']} has category "
                                f"{seg['category_id']} outside the dataset's classes")
            json_ids.add(int(seg["id"]))
        if not any(not seg.get("iscrowd", 0) for seg in ann["segments_info"]):
            empty.append(png)
        png_ids = set(np.unique(ids).tolist()) - {0}
        if png_ids - json_ids:
            raise DataError(f"{png}: segment id(s) {sorted(png_ids - json_ids)[:5]} in the PNG are missing "
                            f"from {json_file.name}")
        if json_ids - png_ids and name not in JSON_ONLY_SEGMENTS_OK:
            raise DataError(f"{json_file}: segment id(s) {sorted(json_ids - png_ids)[:5]} of "
                            f"{ann['file_name']} do not occur in {png}")
        if sem_dir is not None:
            sem_path = sem_dir / (Path(ann["file_name"]).stem + ".png")
            if not sem_path.is_file():
                raise DataError(f"{sem_path}: missing semantic label for {ann['file_name']}")
            lab = read_label(sem_path)
            if lab.shape != hw:
                raise DataError(f"{sem_path}: label size {lab.shape[1]}x{lab.shape[0]} differs from image "
                                f"{img_path} size {hw[1]}x{hw[0]}")
            _check_values(sem_path, lab, np.asarray(meta.dataset_ids), meta.ignore_label)
    if not data["annotations"]:
        raise DataError(f"{json_file}: no annotations")
    _report_empty(empty, len(data["annotations"]), split, "annotations have no non-crowd segment")
    return len(data["annotations"])


def validate(name: str, root: str | Path, split: Optional[str] = None,
             meta: Optional[DatasetMeta] = None) -> dict[str, int]:
    """Check ``split`` (all splits when None) of dataset ``name`` under ``root``.

    Returns {split: number of images checked}; raises DataError naming the file and problem.
    """
    root = Path(root)
    require_dir(root, f"{name} dataset root")
    meta = meta or get_metadata(name, root)
    splits = [split] if split else list(meta.splits)
    counts = {}
    for s in splits:
        if s not in meta.splits:
            raise DataError(f"{name}: unknown split {s!r}; expected one of {', '.join(meta.splits)}")
        if meta.task == "panoptic":
            counts[s] = _validate_panoptic(name, meta, root, s)
        else:
            counts[s] = _validate_semantic(name, meta, root, s)
    return counts
