"""Split loaders over the prepared training layouts (official datasets/prepare_*.py) and the torch Dataset
wrapper.

``load_split(name, root, split)`` returns records (dicts) with ``file_name``, ``height``, ``width``,
``image_id`` and either ``sem_seg_file_name`` (semantic) or ``pan_seg_file_name`` + ``segments_info`` (panoptic;
``category_id`` contiguous, plus ``id``, ``iscrowd``, ``isthing``). ADE20K panoptic records also carry
``sem_seg_file_name`` (the 150-class semantic GT the official ADE20K-panoptic evaluator scores mIoU on).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from maskformer_core.data.formats import first_duplicate, image_size, require_dir, require_file
from maskformer_core.data.metadata import DatasetMeta, get_metadata
from maskformer_core.errors import DataError

log = logging.getLogger(__name__)

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
        _refuse_orphan_labels(pairs, gt_root.glob("*/*_gtFine_labelTrainIds.png"), img_root)
        return pairs
    else:
        raise DataError(f"{name}: not a semantic dataset")
    require_dir(img_dir, f"{name} images of split {split}")
    require_dir(lab_dir, f"{name} labels of split {split}")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == img_ext)
    if not images:
        raise DataError(f"{img_dir}: no *{img_ext} images (wrong directory layout?)")
    pairs = [(p, lab_dir / (p.stem + lab_ext)) for p in images]
    _refuse_orphan_labels(pairs, (p for p in lab_dir.iterdir() if p.suffix.lower() == lab_ext), img_dir)
    return pairs


def _refuse_orphan_labels(pairs: list[tuple[Path, Path]], labels, img_dir: Path) -> None:
    """DataError when a label file has no image: it would be silently left out (a lost or misnamed image)."""
    expected = {lab for _img, lab in pairs}
    orphans = sorted(p for p in labels if p not in expected)
    if orphans:
        raise DataError(f"{orphans[0]}: label without an image in {img_dir} ({len(orphans)} such label file(s): "
                        f"{', '.join(p.name for p in orphans[:3])}); restore the images or remove the labels")


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


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object_pairs_hook: a key written twice in one object is an error (json keeps the last silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DataError(f"duplicate key {key!r} in one JSON object")
        out[key] = value
    return out


def read_panoptic_json(path: Path) -> dict:
    """A COCO-format panoptic JSON, checked for duplicates and dangling references (DataError naming them).

    Refused: a key written twice in one object, an image id / category id listed twice, two annotations
    of one image (it would be trained and scored twice) or with one PNG file name, a segment id twice in
    one annotation, an annotation of an image id the ``images`` list lacks. An image listed without an
    annotation is skipped by every reader: logged as one warning that counts them.
    """
    require_file(path, "panoptic JSON")
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: panoptic JSON lacks the {key!r} list")
    dup = first_duplicate(im["id"] for im in data["images"])
    if dup is not None:
        raise DataError(f"{path}: image id {dup!r} is listed twice in 'images'")
    dup = first_duplicate(c["id"] for c in data["categories"])
    if dup is not None:
        raise DataError(f"{path}: category id {dup!r} is listed twice in 'categories'")
    dup = first_duplicate(a["image_id"] for a in data["annotations"])
    if dup is not None:
        raise DataError(f"{path}: image id {dup!r} has two annotations (it would be trained and evaluated twice)")
    dup = first_duplicate(a["file_name"] for a in data["annotations"])
    if dup is not None:
        raise DataError(f"{path}: two annotations name the PNG {dup!r}")
    image_ids = {im["id"] for im in data["images"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise DataError(f"{path}: annotation {ann['file_name']} refers to unknown image_id {ann['image_id']!r}")
        dup = first_duplicate(int(s["id"]) for s in ann["segments_info"])
        if dup is not None:
            raise DataError(f"{path}: segment id {dup} is listed twice in the annotation of {ann['file_name']}")
    annotated = {a["image_id"] for a in data["annotations"]}
    unannotated = [im for im in data["images"] if im["id"] not in annotated]
    if unannotated:
        log.warning("%s: %d of %d images have no annotation and are skipped, e.g. %s", path, len(unannotated),
                    len(data["images"]), ", ".join(str(im.get("file_name", im["id"])) for im in unannotated[:3]))
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
