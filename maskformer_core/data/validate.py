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


# Images per split of the official releases, as the official preparation leaves them (paper appendix A
# "Datasets": ADE20K 20k/2k, COCO-Stuff-10K 9k/1k, ADE20K-Full 25k/2k, Cityscapes 2975/500, Mapillary
# Vistas 18k/2k; COCO panoptic: the 2017 splits; ADE20K panoptic: the ADE20K images). Exact counts of
# ADEChallengeData2016, ADE20K_2021_17_01, cocostuff-10k-v1.1 (imageLists train.txt/test.txt),
# Cityscapes gtFine, Mapillary Vistas v1.2 and COCO 2017 panoptic.
OFFICIAL_SPLIT_SIZES: dict[str, dict[str, int]] = {
    "ade20k": {"train": 20210, "val": 2000},
    # ADE20K_2021_17_01: "27,574 images (25,574 for training and 2,000 for testing)" (CSAILVision/ADE20K
    # README.md, "Dataset stats"); datasets/prepare_ade20k_full_sem_seg.py keeps every indexed image.
    "ade20k_full": {"train": 25574, "val": 2000},
    "coco_stuff_10k": {"train": 9000, "test": 1000},
    "cityscapes": {"train": 2975, "val": 500},
    "mapillary_vistas": {"train": 18000, "val": 2000},
    "coco_panoptic": {"train": 118287, "val": 5000},
    "ade20k_panoptic": {"train": 20210, "val": 2000},
}
# Class-list files an official ADE20K download carries (ADEChallengeData2016/objectInfo150.txt: a
# header line, then one line per class, Idx 1..150), copied into the prepared root by `prepare`.
CLASS_LIST_FILES = {"ade20k": "objectInfo150.txt", "ade20k_panoptic": "objectInfo150.txt"}
# Panoptic roots carry their class list in the panoptic JSON's "categories" (COCO: the 133 of
# panoptic_val2017.json, names as detectron2's builtin_meta COCO_CATEGORIES; ADE20K panoptic: the 150
# classes, ids 0..149, that MaskFormer's datasets/prepare_ade20k_pan_seg.py writes). Names are compared
# where metadata.py holds the official ones (COCO); ADE20K-Full's 847-class list is checked when it is
# prepared (prepare/ade20k_full.py); COCO-Stuff-10K, Cityscapes and Mapillary Vistas roots carry no
# class-list file (their label values are checked by `validate`).
NAMES_CHECKED = {"coco_panoptic"}


def _check_panoptic_categories(name: str, root: Path, meta: DatasetMeta) -> None:
    json_file = panoptic_paths(name, root, meta.test_split)[0]
    if not json_file.is_file():
        return  # `validate` names the missing file
    cats = {int(c["id"]): str(c.get("name")) for c in read_panoptic_json(json_file)["categories"]}
    official = dict(zip(meta.dataset_ids, meta.class_names))
    if sorted(cats) != sorted(official):
        extra, missing = sorted(set(cats) - set(official)), sorted(set(official) - set(cats))
        raise DataError(f"{json_file}: {len(cats)} categories, the official {name} has K = {meta.num_classes}"
                        + (f"; missing ids {missing[:5]}" if missing else "") + (f"; unknown ids {extra[:5]}" if extra else ""))
    if name in NAMES_CHECKED:
        wrong = [(i, cats[i], official[i]) for i in sorted(official) if cats[i] != official[i]]
        if wrong:
            i, got, want = wrong[0]
            raise DataError(f"{json_file}: category {i} is named {got!r}, the official {name} name is {want!r} "
                            f"({len(wrong)} names differ)")


def check_real_root(name: str, root: str | Path, counts: dict[str, int], *, subset: bool = False) -> list[str]:
    """Checks a prepared *real* dataset must pass beyond `validate`: no synthetic-twin marker, the official
    number of images per split (`subset=True`: at most that many, knowingly), and the official class list
    (K classes with ids 1..K) where the download carries one. Raises DataError naming the file or split;
    returns notes (the splits that are a knowing subset)."""
    from maskformer_core.data.metadata import SYNTHETIC_MARKER

    root = Path(root)
    marker = root / SYNTHETIC_MARKER
    if marker.exists():
        raise DataError(f"{marker}: a synthetic twin's marker in a real data root; the data here would be read "
                        f"as a twin. Remove it if the data is the official release, or keep twins under "
                        f"data/synthetic/")
    meta = get_metadata(name)
    notes = []
    for split, n in counts.items():
        official = OFFICIAL_SPLIT_SIZES.get(name, {}).get(split)
        if official is None or n == official:
            continue
        if subset and n < official:
            notes.append(f"{split}: {n} of the official {official} images (--subset)")
            continue
        raise DataError(f"{root}: split {split!r} has {n} images, the official {name} release has {official}"
                        + ("" if n > official else "; pass --subset to accept a subset knowingly"))
    listing = CLASS_LIST_FILES.get(name)
    if listing and (root / listing).is_file():
        rows = [line.split("\t") for line in (root / listing).read_text().splitlines()[1:] if line.strip()]
        ids = sorted(int(r[0]) for r in rows if r and r[0].strip().isdigit())
        if ids != list(range(1, meta.num_classes + 1)):
            raise DataError(f"{root / listing}: lists {len(ids)} classes (ids {ids[:3]}...), the official {name} "
                            f"has K = {meta.num_classes} with ids 1..{meta.num_classes}")
    if meta.task == "panoptic":
        _check_panoptic_categories(name, root, meta)
    return notes
