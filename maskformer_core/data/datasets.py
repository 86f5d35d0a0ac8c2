"""Split loaders over the prepared training layouts (FACTS F) and the torch Dataset wrapper.

``load_split(name, root, split)`` returns records (dicts) with ``file_name``, ``height``, ``width``,
``image_id`` and either ``sem_seg_file_name`` (semantic) or ``pan_seg_file_name`` + ``segments_info``
(panoptic; ``category_id`` contiguous, plus ``id``, ``iscrowd``, ``isthing``). ADE20K panoptic
records also carry ``sem_seg_file_name`` (the 150-class semantic GT, E.1).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from maskformer_core.data.formats import image_size, require_dir, require_file
from maskformer_core.data.metadata import DatasetMeta, get_metadata
from maskformer_core.errors import DataError

# Official split folder names of the prepared layouts (F).
ADE_DIRS = {"train": "training", "val": "validation"}
COCO_STUFF_DIRS = {"train": "train", "test": "test"}
CITYSCAPES_DIRS = {"train": "train", "val": "val"}
MAPILLARY_DIRS = {"train": "training", "val": "validation"}
COCO_PAN_DIRS = {"train": "train2017", "val": "val2017"}


def _split_dir(name: str, split: str, table: dict) -> str:
    if split not in table:
        raise DataError(f"{name}: unknown split {split!r}; expected one of {', '.join(table)}")
    return table[split]


def semantic_pairs(name: str, root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) file pairs of a semantic split, in sorted order; DataError on layout problems."""
    root = Path(root)
    if name == "ade20k":
        d = _split_dir(name, split, ADE_DIRS)
        img_dir, lab_dir, img_ext, lab_ext = root / "images" / d, root / "annotations_detectron2" / d, ".jpg", ".png"
    elif name == "ade20k_full":
        d = _split_dir(name, split, ADE_DIRS)
        img_dir, lab_dir, img_ext, lab_ext = (root / "images_detectron2" / d, root / "annotations_detectron2" / d,
                                              ".jpg", ".tif")
    elif name == "coco_stuff_10k":
        d = _split_dir(name, split, COCO_STUFF_DIRS)
        img_dir, lab_dir, img_ext, lab_ext = (root / "images_detectron2" / d, root / "annotations_detectron2" / d,
                                              ".jpg", ".png")
    elif name == "mapillary_vistas":
        d = _split_dir(name, split, MAPILLARY_DIRS)
        img_dir, lab_dir, img_ext, lab_ext = root / d / "images", root / d / "labels", ".jpg", ".png"
    elif name == "cityscapes":
        d = _split_dir(name, split, CITYSCAPES_DIRS)
        img_root = require_dir(root / "leftImg8bit" / d, "Cityscapes leftImg8bit/<split>")
        gt_root = require_dir(root / "gtFine" / d, "Cityscapes gtFine/<split>")
        pairs = []
        for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
            base = img.name[: -len("_leftImg8bit.png")]
            pairs.append((img, gt_root / img.parent.name / f"{base}_gtFine_labelTrainIds.png"))
        if not pairs:
            raise DataError(f"{img_root}: no <city>/*_leftImg8bit.png images (wrong directory layout?)")
        return pairs
    else:
        raise DataError(f"{name}: not a semantic dataset")
    require_dir(img_dir, f"{name} images of split {split}")
    require_dir(lab_dir, f"{name} labels of split {split}")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == img_ext)
    if not images:
        raise DataError(f"{img_dir}: no *{img_ext} images (wrong directory layout?)")
    return [(p, lab_dir / (p.stem + lab_ext)) for p in images]


def panoptic_paths(name: str, root: Path, split: str) -> tuple[Path, Path, Path, Optional[Path]]:
    """(json file, panoptic PNG folder, image folder, semantic folder or None) of a panoptic split."""
    root = Path(root)
    if name == "coco_panoptic":
        d = _split_dir(name, split, COCO_PAN_DIRS)
        return (root / "annotations" / f"panoptic_{d}.json", root / f"panoptic_{d}", root / d, None)
    if name == "ade20k_panoptic":
        d = _split_dir(name, split, ADE_DIRS)
        return (root / f"ade20k_panoptic_{split}.json", root / f"ade20k_panoptic_{split}",
                root / "images" / d, root / "annotations_detectron2" / d)
    raise DataError(f"{name}: not a panoptic dataset")


def read_panoptic_json(path: Path) -> dict:
    require_file(path, "panoptic JSON")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: panoptic JSON lacks the {key!r} list")
    return data


def _load_semantic(name: str, root: Path, split: str) -> list[dict]:
    records = []
    for img, lab in semantic_pairs(name, root, split):
        require_file(lab, f"label of {img.name}")
        h, w = image_size(img)
        image_id = img.stem[: -len("_leftImg8bit")] if name == "cityscapes" else img.stem
        records.append({"file_name": str(img), "sem_seg_file_name": str(lab), "height": h, "width": w,
                        "image_id": image_id})
    return records


def _load_panoptic(name: str, meta: DatasetMeta, root: Path, split: str) -> list[dict]:
    json_file, pan_dir, img_dir, sem_dir = panoptic_paths(name, root, split)
    data = read_panoptic_json(json_file)
    require_dir(pan_dir, "panoptic PNG folder")
    require_dir(img_dir, "image folder")
    to_contig = meta.dataset_id_to_contiguous
    things = set(meta.thing_ids)
    sizes = {im["id"]: (im.get("height"), im.get("width"), im.get("file_name")) for im in data["images"]}
    records = []
    for ann in data["annotations"]:
        stem = Path(ann["file_name"]).stem
        h, w, img_name = sizes.get(ann["image_id"], (None, None, None))
        img_path = img_dir / (img_name or stem + ".jpg")
        if h is None or w is None:
            h, w = image_size(img_path)
        segs = []
        for s in ann["segments_info"]:
            if s["category_id"] not in to_contig:
                raise DataError(f"{json_file}: segment {s['id']} of {ann['file_name']} has category "
                                f"{s['category_id']} outside the dataset's classes")
            c = to_contig[s["category_id"]]
            segs.append({"id": int(s["id"]), "category_id": c, "iscrowd": int(s.get("iscrowd", 0)),
                         "isthing": c in things, "area": int(s.get("area", 0))})
        rec = {"file_name": str(img_path), "pan_seg_file_name": str(pan_dir / ann["file_name"]),
               "segments_info": segs, "height": int(h), "width": int(w), "image_id": ann["image_id"]}
        if sem_dir is not None:
            rec["sem_seg_file_name"] = str(sem_dir / (stem + ".png"))
        records.append(rec)
    if not records:
        raise DataError(f"{json_file}: no annotations")
    return records


def load_split(name: str, root: str | Path, split: str) -> list[dict]:
    """Records of ``split`` of dataset ``name`` prepared under ``root`` (see module docstring)."""
    root = Path(root)
    require_dir(root, f"{name} dataset root")
    meta = get_metadata(name, root)
    if split not in meta.splits:
        raise DataError(f"{name}: unknown split {split!r}; expected one of {', '.join(meta.splits)}")
    if meta.task == "panoptic":
        return _load_panoptic(name, meta, root, split)
    return _load_semantic(name, root, split)


class MapDataset(torch.utils.data.Dataset):
    """Records + mapper as a torch Dataset.

    Indexing with an int ``i`` maps record i with ``rng = default_rng([seed, i])``; indexing with
    ``(i, position)`` (what ``TrainingSampler`` yields) uses ``default_rng([seed, position])``, so the
    augmentation of the n-th sample of a run depends only on (seed, n), whatever the worker count.
    """

    def __init__(self, records: list[dict], mapper: Callable, seed: int = 0):
        self.records = records
        self.mapper = mapper
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, position = int(key[0]), int(key[1])
        else:
            index = position = int(key)
        rng = np.random.default_rng([self.seed, position])
        return self.mapper(self.records[index], rng)


def collate_list(batch: list) -> list:
    """Collate function returning the list of per-image dicts unchanged (images differ in size)."""
    return list(batch)
