"""ADE20K SceneParse150 and ADE20K panoptic preparation (official
datasets/prepare_ade20k_sem_seg.py, datasets/prepare_ade20k_pan_seg.py).

Semantic: annotations_detectron2 = label - 1 in uint8 (0 "other" wraps to 255 = ignore).
Panoptic: stuff segments first (one per stuff class present), then one segment per instance of
``annotations_instance`` (R - 1 = instance class, mapped to a SceneParse150 id by
``ade20k_instance_catid_mapping.txt``; G = instance id), overwriting; thing pixels without an
instance stay VOID. Segment ids/colours from a panopticapi-style IdGenerator; the JSON follows COCO
panoptic format with image_id = file stem (string).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from maskformer_core.data.formats import id2rgb, link_or_copy, require_dir, require_file, rgb2id, save_png
from maskformer_core.data.metadata import get_metadata
from maskformer_core.data.prepare.common import find_top, progress_iter
from maskformer_core.errors import DataError

SPLITS = (("train", "training"), ("val", "validation"))
MAPPING_FILE = "ade20k_instance_catid_mapping.txt"


def check(name: str, raw_root: Path) -> dict:
    base = find_top(raw_root, "ADEChallengeData2016", "images")
    plan = {"raw_root": raw_root, "base": base, "splits": []}
    for split, d in SPLITS:
        img_dir = require_dir(base / "images" / d, "ADE20K images")
        ann_dir = require_dir(base / "annotations" / d, "ADE20K annotations")
        images = sorted(img_dir.glob("*.jpg"))
        if not images:
            raise DataError(f"{img_dir}: no *.jpg images")
        for img in images:
            require_file(ann_dir / f"{img.stem}.png", f"annotation of {img.name}")
        inst_dir = None
        if name == "ade20k_panoptic":
            inst_dir = require_dir(base / "annotations_instance" / d,
                                   "annotations_instance (annotations_instance.tar from sceneparsing)")
            for img in images:
                require_file(inst_dir / f"{img.stem}.png", f"instance annotation of {img.name}")
        plan["splits"].append((split, d, images, ann_dir, inst_dir))
    if name == "ade20k_panoptic":
        plan["mapping"] = read_mapping(_mapping_path(raw_root, base))
    return plan


def _mapping_path(raw_root: Path, base: Path) -> Path:
    for p in (raw_root / MAPPING_FILE, base / MAPPING_FILE):
        if p.is_file():
            return p
    raise DataError(f"{raw_root / MAPPING_FILE}: missing file (copy datasets/{MAPPING_FILE} from the "
                    "MaskFormer repository next to the ADE20K download)")


def read_mapping(path: Path) -> dict[int, int]:
    """Instance class (0-based) -> SceneParse150 id (0-based): header line, then 'ins sem name' (1-based)."""
    out = {}
    for i, line in enumerate(path.read_text().splitlines()):
        if i == 0 or not line.strip():
            continue
        parts = line.split()
        try:
            out[int(parts[0]) - 1] = int(parts[1]) - 1
        except (ValueError, IndexError) as exc:
            raise DataError(f"{path}: line {i + 1} is not 'ins_id sem_id name': {line!r}") from exc
    return out


def semantic_from_annotation(ann: np.ndarray) -> np.ndarray:
    """label - 1 in uint8 (prepare_ade20k_sem_seg.py): 0 -> 255."""
    return (ann.astype(np.int64) - 1).astype(np.uint8)


class IdGenerator:
    """panopticapi IdGenerator: stuff keeps its category colour; things get a unique jittered colour.

    ``rng`` replaces panopticapi's global numpy random state, so outputs are reproducible.
    """

    def __init__(self, categories: dict[int, dict], rng: np.random.Generator):
        self.categories = categories
        self.rng = rng
        self.taken = {(0, 0, 0)}
        for cat in categories.values():
            if not cat["isthing"]:
                self.taken.add(tuple(cat["color"]))

    def get_id_and_color(self, cat_id: int) -> tuple[int, tuple[int, int, int]]:
        cat = self.categories[cat_id]
        base = tuple(int(c) for c in cat["color"])
        if not cat["isthing"]:
            color = base
        elif base not in self.taken:
            self.taken.add(base)
            color = base
        else:
            while True:
                jit = np.asarray(base) + self.rng.integers(-30, 31, size=3)
                color = tuple(int(c) for c in np.clip(jit, 0, 255))
                if color not in self.taken:
                    self.taken.add(color)
                    break
        return int(rgb2id(np.asarray(color))), color


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def panoptic_from_annotations(sem: np.ndarray, ins: np.ndarray, categories: dict[int, dict],
                              map_id: dict[int, int], rng: np.random.Generator, where: str):
    """(segment id map int64 [H, W], segments_info) for one image (official datasets/prepare_ade20k_pan_seg.py:
    stuff first, then every instance painted over it; JSON areas/bboxes of the unpainted masks)."""
    pan = np.zeros(sem.shape, np.int64)
    gen = IdGenerator(categories, rng)
    segs = []
    for c in np.unique(sem):
        c = int(c)
        if c == 255 or categories[c]["isthing"]:
            continue
        mask = sem == c
        sid, _ = gen.get_id_and_color(c)
        pan[mask] = sid
        segs.append({"id": sid, "category_id": c, "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
    ins_cls = ins[..., 0].astype(np.int64) - 1
    ins_id = ins[..., 1].astype(np.int64)
    for j in np.unique(ins_id):
        if j == 0:
            continue
        mask = ins_id == j
        cls = np.unique(ins_cls[mask])
        if len(cls) != 1 or int(cls[0]) not in map_id:
            raise DataError(f"{where}: instance {int(j)} has instance class(es) {(cls + 1).tolist()} "
                            f"not in {MAPPING_FILE}")
        c = map_id[int(cls[0])]
        sid, _ = gen.get_id_and_color(c)
        pan[mask] = sid
        segs.append({"id": sid, "category_id": c, "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
    # As the official script: area and bbox are those of each mask before later segments paint over it
    # (instances overwrite stuff), and a segment left with no pixel stays in the JSON. panopticapi uses the
    # GT JSON area in the IoU union and counts such a segment as a false negative.
    return pan, segs


def run(name: str, plan: dict, out: Path, progress: bool = True) -> None:
    base = plan["base"]
    if (base / "objectInfo150.txt").is_file():
        link_or_copy(base / "objectInfo150.txt", out / "objectInfo150.txt")
    if name == "ade20k_panoptic":
        full = get_metadata("ade20k_panoptic")
        meta = get_metadata("ade20k_panoptic", plan["raw_root"])
        map_id = plan["mapping"]
        # isthing from the mapping file, exactly as the official script derives it.
        thing_sem = set(map_id.values())
        categories = {i: {"id": i, "name": full.class_names[i], "isthing": int(i in thing_sem),
                          "color": list(full.colors[i])} for i in range(150)}
        json_categories = meta.categories()
    for split, d, images, ann_dir, inst_dir in plan["splits"]:
        (out / "images" / d).mkdir(parents=True, exist_ok=True)
        (out / "annotations_detectron2" / d).mkdir(parents=True, exist_ok=True)
        if name == "ade20k_panoptic":
            pan_dir = out / f"ade20k_panoptic_{split}"
            pan_dir.mkdir(parents=True, exist_ok=True)
            j_images, j_anns = [], []
        for img in progress_iter(images, f"{name} {split}", progress):
            link_or_copy(img, out / "images" / d / img.name)
            ann_path = ann_dir / f"{img.stem}.png"
            with Image.open(ann_path) as im:
                ann = np.asarray(im)
            if ann.ndim != 2 or ann.dtype != np.uint8:
                raise DataError(f"{ann_path}: ADE20K annotation must be a uint8 single-channel PNG")
            sem = semantic_from_annotation(ann)
            save_png(sem, out / "annotations_detectron2" / d / f"{img.stem}.png")
            if name != "ade20k_panoptic":
                continue
            ins_path = inst_dir / f"{img.stem}.png"
            with Image.open(ins_path) as im:
                ins = np.asarray(im.convert("RGB"))
            if ins.shape[:2] != sem.shape:
                raise DataError(f"{ins_path}: size {ins.shape[1]}x{ins.shape[0]} differs from {ann_path}")
            rng = np.random.default_rng(zlib.crc32(img.stem.encode()))
            pan, segs = panoptic_from_annotations(sem, ins, categories, map_id, rng, str(ins_path))
            save_png(id2rgb(pan), pan_dir / f"{img.stem}.png")
            j_images.append({"id": img.stem, "file_name": img.name, "width": int(sem.shape[1]),
                             "height": int(sem.shape[0])})
            j_anns.append({"image_id": img.stem, "file_name": f"{img.stem}.png", "segments_info": segs})
        if name == "ade20k_panoptic":
            data = {"images": j_images, "annotations": j_anns, "categories": json_categories}
            (out / f"ade20k_panoptic_{split}.json").write_text(json.dumps(data) + "\n")
