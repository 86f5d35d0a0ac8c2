"""ADE20K-Full (847 classes) preparation, as the official datasets/prepare_ade20k_full_sem_seg.py
does.

Steps: iterate index_ade20k.pkl (folder, filename); split = "validation" when the filename's second
"_" token is "val"; class = (R // 10) * 256 + G of ``*_seg.png``; short side > 512 -> 512
(cv2 INTER_LINEAR image, INTER_NEAREST label, long side rounded); ids in the 847-list -> trainId,
every other id -> 65535; image re-encoded as JPEG with PIL's default quality, label as uint16 TIFF.

The 847-entry list (name, id, trainId) of the official script is read from
``ade20k_full_categories.json`` (a JSON list of {"name", "id", "trainId"}) inside the download
folder; this repository does not ship the list (see metadata.py).
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from maskformer_core.data.formats import require_file, save_jpeg, save_tif_uint16
from maskformer_core.data.metadata import SYNTHETIC_MARKER
from maskformer_core.data.prepare.common import find_top, progress_iter
from maskformer_core.errors import DataError

IGNORE = 65535
MAX_SHORT = 512  # F step 3
CATEGORIES_FILE = "ade20k_full_categories.json"
NUM_CLASSES = 847  # A.1 #13: MODEL.SEM_SEG_HEAD.NUM_CLASSES 847

_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler restricted to plain containers and numpy arrays (no arbitrary code on load)."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in index_ade20k.pkl")


def load_index(path: Path) -> dict:
    """index_ade20k.pkl loaded safely; DataError naming the file when unsafe or malformed."""
    try:
        with open(path, "rb") as f:
            index = _SafeUnpickler(io.BytesIO(f.read())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: unreadable or unsafe pickle ({exc})") from exc
    if not isinstance(index, dict) or "folder" not in index or "filename" not in index:
        raise DataError(f"{path}: expected a dict with 'folder' and 'filename' lists")
    if len(index["folder"]) != len(index["filename"]):
        raise DataError(f"{path}: 'folder' and 'filename' lists differ in length")
    return index


def decode_seg(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE index class ids from a ``*_seg.png``: (R // 10) * 256 + G (F step 2)."""
    r = seg_rgb[..., 0].astype(np.int64)
    g = seg_rgb[..., 1].astype(np.int64)
    return (r // 10) * 256 + g


def resize_short(img: np.ndarray, lab: np.ndarray, max_short: int = MAX_SHORT):
    """Short side <= max_short: image INTER_LINEAR, label INTER_NEAREST, long side rounded (F step 3)."""
    h, w = lab.shape
    if min(h, w) <= max_short:
        return img, lab
    if h < w:
        nh, nw = max_short, int(round(w * max_short / h))
    else:
        nh, nw = int(round(h * max_short / w)), max_short
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(lab.astype(np.int32), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return img, lab


def train_id_lut(categories: list[dict], where: Path) -> dict[int, int]:
    try:
        return {int(c["id"]): int(c["trainId"]) for c in categories}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: entries must be {{'name', 'id', 'trainId'}} ({exc})") from exc


def to_train_ids(ids: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    """Ids in the class list -> trainId, everything else -> 65535 (F step 4)."""
    out = np.full(ids.shape, IGNORE, np.int64)
    for k, v in lut.items():
        out[ids == k] = v
    return out


def check(name: str, raw_root: Path) -> dict:
    base = find_top(raw_root, "ADE20K_2021_17_01", "index_ade20k.pkl")
    index_path = require_file(base / "index_ade20k.pkl", "ADE20K-Full index")
    cat_path = require_file(base / CATEGORIES_FILE,
                            "the official 847-class list (ADE20K_SEM_SEG_FULL_CATEGORIES) as JSON")
    try:
        categories = json.loads(cat_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{cat_path}: not valid JSON ({exc})") from exc
    lut = train_id_lut(categories, cat_path)
    # The official list (MaskFormer mask_former/data/datasets/register_ade20k_full.py
    # ADE20K_SEM_SEG_FULL_CATEGORIES): 847 entries, trainIds 0..846, each ADE index id once. A synthetic
    # twin (SYNTHETIC.json in its raw root) lists only its K classes.
    k = NUM_CLASSES if not (raw_root / SYNTHETIC_MARKER).is_file() else len(categories)
    if len(categories) != len(lut) or sorted(lut.values()) != list(range(k)):
        raise DataError(f"{cat_path}: {len(categories)} entries with {len(set(lut.values()))} distinct trainIds; "
                        f"the official ADE20K-Full list has {NUM_CLASSES} classes, trainIds 0..{NUM_CLASSES - 1}, "
                        f"each id once")
    index = load_index(index_path)
    items = []
    for folder, filename in zip(index["folder"], index["filename"]):
        img = base.parent / folder / filename
        if not img.is_file():
            img = raw_root / folder / filename
        require_file(img, "image listed in index_ade20k.pkl")
        seg = img.with_name(filename[: -len(".jpg")] + "_seg.png")
        require_file(seg, f"segmentation of {filename}")
        split = "validation" if filename.split("_")[1] == "val" else "training"
        items.append((split, img, seg))
    if not items:
        raise DataError(f"{index_path}: lists no images")
    return {"items": items, "lut": lut}


def run(name: str, plan: dict, out: Path, progress: bool = True) -> None:
    for d in ("training", "validation"):
        (out / "images_detectron2" / d).mkdir(parents=True, exist_ok=True)
        (out / "annotations_detectron2" / d).mkdir(parents=True, exist_ok=True)
    for split, img_path, seg_path in progress_iter(plan["items"], "ade20k_full", progress):
        with Image.open(img_path) as im:
            img = np.asarray(im.convert("RGB"))
        with Image.open(seg_path) as im:
            ids = decode_seg(np.asarray(im.convert("RGB")))
        if ids.shape != img.shape[:2]:
            raise DataError(f"{seg_path}: size differs from {img_path}")
        img, ids = resize_short(img, ids)
        stem = img_path.stem
        save_jpeg(np.ascontiguousarray(img), out / "images_detectron2" / split / f"{stem}.jpg")
        save_tif_uint16(to_train_ids(ids, plan["lut"]), out / "annotations_detectron2" / split / f"{stem}.tif")
