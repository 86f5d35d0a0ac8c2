"""Synthetic twins: small, learnable datasets written in each dataset's RAW download layout.

``synthesize(name, raw_root, *, num_images, num_classes, image_size, seed)`` writes the files the
official archives contain (ADE20K PNGs, ADE20K-Full index pickle + ``*_seg.png``, COCO-Stuff HDF5
``.mat``, Cityscapes polygons JSON, COCO panoptic PNG + JSON, ADE20K instance PNGs, Mapillary palette
PNGs) plus ``SYNTHETIC.json``; ``prepare`` then runs the same preparation as for real data.

Scenes: 2-3 horizontal "stuff" bands with several textured polygons ("things", several instances per
class) on top and, in about half of the images, an ignore patch. Every class has its own colour and
stripe texture, so a tiny model learns the twin in a few hundred CPU iterations at 64x64 crops.
With ``class_boxes`` each class also has its own box (thing aspect, stuff band height; ``make_scene``).
Everything is drawn from ``numpy.random.default_rng(seed)``: same seed -> byte-identical files.
"""
from __future__ import annotations

import colorsys
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maskformer_core.data.formats import atomic_directory, id2rgb, save_jpeg, save_png
from maskformer_core.data.metadata import (
    SYNTHETIC_MARKER,
    DatasetMeta,
    get_metadata,
    subset_meta,
    twin_class_indices,
)
from maskformer_core.errors import DataError

# Smoke-profile defaults (docs/ARCHITECTURE.md "Synthetic twins"): 48 train + 16 val, 96x128, K = 8.
DEFAULT_NUM_IMAGES = 64
DEFAULT_NUM_CLASSES = 8
DEFAULT_IMAGE_SIZE = (96, 128)
VAL_FRACTION = 0.25
IGNORE = -1  # ignore marker inside the generator (mapped to each format's own ignore encoding)


@dataclass
class Scene:
    """One synthetic image: twin class ids per pixel (-1 ignore), instance ids (0 = none)."""

    image: np.ndarray  # uint8 [H, W, 3]
    sem: np.ndarray  # int64 [H, W], twin contiguous ids, IGNORE
    inst: np.ndarray  # int64 [H, W], 1..n for thing instances, 0 elsewhere
    inst_class: dict = field(default_factory=dict)  # instance id -> twin class id
    crowd: set = field(default_factory=set)  # instance ids marked iscrowd (COCO panoptic twin)
    polygons: list = field(default_factory=list)  # [(twin class or IGNORE, [(x, y), ...])] in paint order


def class_color(k: int) -> tuple[int, int, int]:
    """Well-separated base colour of twin class k (golden-ratio hue walk)."""
    h = (k * 0.618034) % 1.0
    v = 0.95 if k % 2 == 0 else 0.6
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, v)
    return int(r * 255), int(g * 255), int(b * 255)


def render(sem: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image for a label map: class colour + class-specific stripes + mild noise; ignore = grey noise."""
    h, w = sem.shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    for k in np.unique(sem):
        m = sem == k
        if k == IGNORE:
            img[m] = rng.integers(90, 166, size=(int(m.sum()), 1)).astype(np.float32)
            continue
        period = 3 + int(k) % 4
        coord = (yy, xx, yy + xx)[int(k) % 3]
        stripes = np.where((coord // period) % 2 == 0, 1.0, -1.0)[m][:, None]
        img[m] = np.asarray(class_color(int(k)), np.float32)[None] + 18.0 * stripes
    img += rng.normal(0.0, 5.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(kind: int, cx: float, cy: float, rx: float, ry: float) -> list[tuple[int, int]]:
    if kind == 0:  # rectangle
        pts = [(cx - rx, cy - ry), (cx + rx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)]
    elif kind == 1:  # triangle
        pts = [(cx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry)]
    else:  # 12-gon ellipse
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        pts = list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))
    return [(int(round(x)), int(round(y))) for x, y in pts]


def _fill(arr: np.ndarray, pts, value: int) -> None:
    mask = Image.new("L", (arr.shape[1], arr.shape[0]), 0)
    ImageDraw.Draw(mask).polygon(pts, fill=1)
    arr[np.asarray(mask, bool)] = value


# Box shapes of ``class_boxes`` twins: thing class t of n has width:height aspect ASPECT_RANGE[0] (t = 0,
# tall) ... ASPECT_RANGE[1] (t = n - 1, wide), spaced geometrically, and a size sqrt(rx * ry) drawn from
# CLASS_BOX_SIZE x sqrt(H * W) (about the size range of the default shapes).
ASPECT_RANGE = (0.4, 2.5)
CLASS_BOX_SIZE = (0.10, 0.16)


def class_box_aspect(t: int, n: int) -> float:
    """Width:height aspect of the ``t``-th of ``n`` thing classes in a ``class_boxes`` twin."""
    if n == 1:
        return 1.0
    lo, hi = np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1])
    return float(np.exp(lo + (hi - lo) * t / (n - 1)))


def make_scene(rng: np.random.Generator, size: tuple[int, int], stuff: list[int], things: list[int],
               with_crowd: bool = False, class_boxes: bool = False) -> Scene:
    """Random scene over twin classes ``stuff`` (bands) and ``things`` (polygon instances).

    ``class_boxes``: every thing class has its own box aspect (``class_box_aspect``) and every stuff
    band takes its class from its height in the image (``stuff[0]`` in the top 1/len(stuff), ...), so a
    box alone says which class it holds; otherwise boxes are drawn alike for every class. Both draw the
    same random values, so band edges, instance classes and ignore patches stay the same (the crowd
    draw, made only when 2+ instances stay visible, may shift the stream after it).
    """
    h, w = size
    sem = np.zeros((h, w), np.int64)
    inst = np.zeros((h, w), np.int64)
    polygons = []
    n_bands = int(rng.integers(2, 4))
    cuts = sorted(int(c) for c in rng.choice(np.arange(h // 6, h - h // 6), n_bands - 1, replace=False))
    edges = [0] + cuts + [h]
    for i in range(n_bands):
        k = int(stuff[int(rng.integers(len(stuff)))])
        if class_boxes:  # the band's height in the image picks its class (stuff[0] on top ...)
            k = int(stuff[min(len(stuff) - 1, (edges[i] + edges[i + 1]) * len(stuff) // (2 * h))])
        pts = [(0, edges[i]), (w - 1, edges[i]), (w - 1, edges[i + 1] - 1), (0, edges[i + 1] - 1)]
        polygons.append((k, pts))
        _fill(sem, pts, k)
    inst_class, crowd = {}, set()
    n_inst = int(rng.integers(2, 6))
    for j in range(1, n_inst + 1):
        t = int(rng.integers(len(things)))
        k = int(things[t])
        if class_boxes:
            radius = rng.uniform(*CLASS_BOX_SIZE) * float(np.sqrt(h * w))
            aspect = np.sqrt(class_box_aspect(t, len(things)))
            rx, ry = min(radius * aspect, 0.45 * w), min(radius / aspect, 0.45 * h)
            rng.uniform()  # the second draw of the default branch: the streams stay aligned
        else:
            rx, ry = rng.uniform(0.08, 0.2) * w, rng.uniform(0.1, 0.25) * h
        cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
        pts = _polygon(int(rng.integers(3)), cx, cy, rx, ry)
        polygons.append((k, pts))
        _fill(sem, pts, k)
        _fill(inst, pts, j)
        inst_class[j] = k
    # Instances fully covered by later ones disappear.
    present = set(np.unique(inst).tolist()) - {0}
    inst_class = {j: k for j, k in inst_class.items() if j in present}
    if with_crowd and len(inst_class) > 1 and rng.random() < 0.5:
        crowd.add(int(sorted(inst_class)[0]))
    if rng.random() < 0.5:
        rx, ry = rng.uniform(0.04, 0.08) * w, rng.uniform(0.05, 0.1) * h
        cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
        pts = _polygon(0, cx, cy, rx, ry)
        polygons.append((IGNORE, pts))
        _fill(sem, pts, IGNORE)
        _fill(inst, pts, 0)
        present = set(np.unique(inst).tolist()) - {0}
        inst_class = {j: k for j, k in inst_class.items() if j in present}
        crowd &= set(inst_class)
    return Scene(render(sem, rng), sem, inst, inst_class, crowd, polygons)


def _write_marker(root: Path, name: str, meta: DatasetMeta, indices: list[int], num_images: int,
                  image_size: tuple[int, int], seed: int, class_boxes: bool = False) -> None:
    marker = {"dataset": name, "num_classes": meta.num_classes, "class_indices": indices,
              "class_names": list(meta.class_names), "thing_ids": list(meta.thing_ids),
              "num_images": num_images, "image_size": list(image_size), "seed": seed,
              "note": "synthetic twin: NOT the real dataset; numbers on it say nothing about the paper"}
    if class_boxes:  # recorded only when set, so the default twins' markers keep their bytes
        marker["class_boxes"] = True
    (root / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")


def _splits(meta: DatasetMeta, num_images: int) -> list[tuple[str, int]]:
    n_val = max(1, int(round(num_images * VAL_FRACTION)))
    n_train = max(1, num_images - n_val)
    return [(meta.train_split, n_train), (meta.test_split, n_val)]


def _scenes(meta: DatasetMeta, rng, n: int, size, with_crowd=False, class_boxes=False):
    k = meta.num_classes
    if meta.task == "panoptic":
        things, stuff = list(meta.thing_ids), list(meta.stuff_ids)
    else:
        things = stuff = list(range(k))
    for _ in range(n):
        yield make_scene(rng, size, stuff, things, with_crowd=with_crowd, class_boxes=class_boxes)


# --- per-dataset raw writers ----------------------------------------------------------------------

def _ade_sem_value(sem: np.ndarray, indices: list[int]) -> np.ndarray:
    """Twin ids -> ADE20K annotation values (official index + 1; 0 = "other")."""
    lut = np.asarray([i + 1 for i in indices], np.int64)
    return np.where(sem == IGNORE, 0, lut[np.clip(sem, 0, None)]).astype(np.uint8)


def _write_ade20k(root, meta, indices, rng, size, num_images, panoptic=False, class_boxes=False):
    base = root / "ADEChallengeData2016"
    (base / "objectInfo150.txt").parent.mkdir(parents=True, exist_ok=True)
    lines = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i + 1}\t0\t0\t0\t{meta.class_names[j]}"
                                               for j, i in enumerate(indices)]
    (base / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    if panoptic:
        full = get_metadata("ade20k_panoptic")
        # Instance class ids (1-based) = ordinal of the official thing class; mapping file format of
        # datasets/ade20k_instance_catid_mapping.txt: header, then "ins_id sem_id name" (1-based).
        ins_of = {sem: n + 1 for n, sem in enumerate(full.thing_ids)}
        rows = ["Instacne100 SceneParsing150 Name"] + [
            f"{ins_of[i]} {i + 1} {full.class_names[i].replace(' ', '_')}" for i in indices if i in ins_of]
        (root / "ade20k_instance_catid_mapping.txt").write_text("\n".join(rows) + "\n")
    for split, n in _splits(meta, num_images):
        d = {"train": "training", "val": "validation"}[split]
        tag = {"train": "train", "val": "val"}[split]
        for sub in ("images", "annotations") + (("annotations_instance",) if panoptic else ()):
            (base / sub / d).mkdir(parents=True, exist_ok=True)
        for i, sc in enumerate(_scenes(meta, rng, n, size, class_boxes=class_boxes)):
            stem = f"ADE_{tag}_{i + 1:08d}"
            save_jpeg(sc.image, base / "images" / d / f"{stem}.jpg")
            save_png(_ade_sem_value(sc.sem, indices), base / "annotations" / d / f"{stem}.png")
            if panoptic:
                ins = np.zeros(sc.sem.shape + (3,), np.uint8)
                order = sorted(sc.inst_class)
                # With 2+ instances the last one is left out of the instance PNG: its thing pixels
                # stay VOID in the panoptic GT (official ``datasets/prepare_ade20k_pan_seg.py``).
                for j in (order[:-1] if len(order) > 1 else order):
                    m = sc.inst == j
                    ins[m, 0] = ins_of[indices[sc.inst_class[j]]]
                    ins[m, 1] = j
                save_png(ins, base / "annotations_instance" / d / f"{stem}.png")


# ADE20K-Full twin: ADE index ids spread so that both R (= 10 * (id // 256)) and G are exercised.
def ade_full_index_id(k: int) -> int:
    return 37 + 97 * k + 256 * (k % 3)


def _write_ade20k_full(root, meta, indices, rng, size, num_images, class_boxes=False):
    base = root / "ADE20K_2021_17_01"
    cats = [{"name": meta.class_names[k], "id": ade_full_index_id(k), "trainId": k}
            for k in range(meta.num_classes)]
    (base).mkdir(parents=True, exist_ok=True)
    (base / "ade20k_full_categories.json").write_text(json.dumps(cats, indent=1) + "\n")
    folders, filenames = [], []
    unknown_id = 5000  # a class outside the 847-list: becomes 65535 (F step 4)
    for split, n in _splits(meta, num_images):
        d = {"train": "training", "val": "validation"}[split]
        tag = {"train": "train", "val": "val"}[split]
        rel = f"ADE20K_2021_17_01/images/ADE/{d}/synthetic_scene"
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i, sc in enumerate(_scenes(meta, rng, n, size, class_boxes=class_boxes)):
            fname = f"ADE_{tag}_{i + 1:08d}.jpg"
            ids = np.where(sc.sem == IGNORE, unknown_id,
                           np.asarray([ade_full_index_id(k) for k in range(meta.num_classes)])[np.clip(sc.sem, 0, None)])
            seg = np.zeros(sc.sem.shape + (3,), np.uint8)
            seg[..., 0] = (ids // 256) * 10
            seg[..., 1] = ids % 256
            seg[..., 2] = (sc.inst % 256).astype(np.uint8)  # instance masks live in B (unused by prep)
            save_jpeg(sc.image, root / rel / fname)
            save_png(seg, root / rel / fname.replace(".jpg", "_seg.png"))
            folders.append(rel)
            filenames.append(fname)
    index = {"folder": folders, "filename": filenames,
             "objectnames": [c["name"] for c in cats]}
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f, protocol=4)


# MATLAB v7.3 files are HDF5 with a 512-byte user block that starts with a text header.
_MAT73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: synthetic twin HDF5 schema 1.00 ."


def write_mat73(path: Path, arrays: dict) -> None:
    """HDF5 file readable by h5py like a MATLAB v7.3 .mat (arrays stored transposed, as MATLAB does)."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=np.ascontiguousarray(np.asarray(arr).T), track_times=False)
    header = _MAT73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(128, b"\x00"))


def _write_coco_stuff_10k(root, meta, indices, rng, size, num_images, class_boxes=False):
    for sub in ("annotations", "imageLists", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lists, counter = {}, 0
    for split, n in _splits(meta, num_images):
        names = []
        for sc in _scenes(meta, rng, n, size, class_boxes=class_boxes):
            counter += 1
            stem = f"COCO_train2014_{counter:012d}"
            # v1.0 labels: 1 = unlabeled, contiguous class c stored as c + 2 (F).
            s = np.where(sc.sem == IGNORE, 1, sc.sem + 2).astype(np.uint16)
            save_jpeg(sc.image, root / "images" / f"{stem}.jpg")
            write_mat73(root / "annotations" / f"{stem}.mat", {"S": s})
            names.append(stem)
        lists[split] = names
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "imageLists" / "all.txt").write_text("\n".join(lists["train"] + lists["test"]) + "\n")


def _write_cityscapes(root, meta, indices, rng, size, num_images, class_boxes=False):
    from cityscapesscripts.helpers.labels import trainId2label

    for split, n in _splits(meta, num_images):
        city = {"train": "aachen", "val": "frankfurt"}[split]
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for i, sc in enumerate(_scenes(meta, rng, n, size, class_boxes=class_boxes)):
            base = f"{city}_{i:06d}_000019"
            objects = [{"label": "ego vehicle" if k == IGNORE else trainId2label[k].name,
                        "polygon": [list(p) for p in pts]} for k, pts in sc.polygons]
            ann = {"imgHeight": int(size[0]), "imgWidth": int(size[1]), "objects": objects}
            (root / "gtFine" / split / city / f"{base}_gtFine_polygons.json").write_text(json.dumps(ann) + "\n")
            save_png(sc.image, root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png")


def _write_mapillary(root, meta, indices, rng, size, num_images, class_boxes=False):
    palette = [c for rgb in meta.colors for c in rgb] + [0, 0, 0] * (256 - meta.num_classes)
    for split, n in _splits(meta, num_images):
        d = {"train": "training", "val": "validation"}[split]
        (root / d / "images").mkdir(parents=True, exist_ok=True)
        (root / d / "labels").mkdir(parents=True, exist_ok=True)
        for i, sc in enumerate(_scenes(meta, rng, n, size, class_boxes=class_boxes)):
            stem = f"synthetic{split}{i:05d}"
            lab = np.where(sc.sem == IGNORE, meta.ignore_label, sc.sem).astype(np.uint8)
            im = Image.fromarray(lab, mode="P")  # v1.2 labels are palette PNGs
            im.putpalette(palette[:768])
            save_jpeg(sc.image, root / d / "images" / f"{stem}.jpg")
            im.save(root / d / "labels" / f"{stem}.png")


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _write_coco_panoptic(root, meta, indices, rng, size, num_images, class_boxes=False):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    counter = 0
    for split, n in _splits(meta, num_images):
        d = {"train": "train2017", "val": "val2017"}[split]
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / f"panoptic_{d}").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for sc in _scenes(meta, rng, n, size, with_crowd=True, class_boxes=class_boxes):
            counter += 1
            stem = f"{counter:012d}"
            pan = np.zeros(sc.sem.shape, np.int64)
            segs, used = [], set()

            def new_id():
                while True:
                    v = int(rng.integers(1, 256 ** 3))
                    if v not in used:
                        used.add(v)
                        return v

            thing_px = sc.inst > 0
            for k in sorted(set(np.unique(sc.sem).tolist()) - {IGNORE}):
                m = (sc.sem == k) & ~thing_px
                if k in meta.thing_ids or not m.any():
                    continue
                sid = new_id()
                pan[m] = sid
                segs.append({"id": sid, "category_id": meta.dataset_ids[k], "iscrowd": 0,
                             "area": int(m.sum()), "bbox": _bbox(m)})
            for j, k in sorted(sc.inst_class.items()):
                m = sc.inst == j
                sid = new_id()
                pan[m] = sid
                segs.append({"id": sid, "category_id": meta.dataset_ids[k], "iscrowd": int(j in sc.crowd),
                             "area": int(m.sum()), "bbox": _bbox(m)})
            save_jpeg(sc.image, root / d / f"{stem}.jpg")
            save_png(id2rgb(pan), root / f"panoptic_{d}" / f"{stem}.png")
            images.append({"id": counter, "file_name": f"{stem}.jpg", "height": int(size[0]), "width": int(size[1])})
            anns.append({"image_id": counter, "file_name": f"{stem}.png", "segments_info": segs})
        data = {"images": images, "annotations": anns, "categories": meta.categories()}
        (root / "annotations" / f"panoptic_{d}.json").write_text(json.dumps(data) + "\n")


WRITERS = {
    "ade20k": _write_ade20k,
    "ade20k_full": _write_ade20k_full,
    "coco_stuff_10k": _write_coco_stuff_10k,
    "cityscapes": _write_cityscapes,
    "mapillary_vistas": _write_mapillary,
    "coco_panoptic": _write_coco_panoptic,
    "ade20k_panoptic": lambda *a, **kw: _write_ade20k(*a, panoptic=True, **kw),
}


def synthesize(name: str, raw_root: str | Path, *, num_images: int = DEFAULT_NUM_IMAGES,
               num_classes: int = DEFAULT_NUM_CLASSES, image_size=DEFAULT_IMAGE_SIZE, seed: int = 0,
               class_boxes: bool = False) -> Path:
    """Write a synthetic twin of ``name`` in its raw download layout at ``raw_root`` (atomically).

    ``class_boxes``: each thing class gets its own box aspect (``make_scene``); the default draws every
    class's boxes alike (the file bytes of a default twin do not change with this option's existence).
    """
    if name not in WRITERS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(WRITERS)}")
    size = (int(image_size[0]), int(image_size[1]))
    if min(size) < 16:
        raise DataError(f"image_size {size} too small (each side >= 16)")
    if num_images < 2:
        raise DataError(f"num_images={num_images}: need at least 2 (train + eval split)")
    indices = twin_class_indices(name, int(num_classes))
    meta = subset_meta(get_metadata(name), indices)
    rng = np.random.default_rng(int(seed))
    with atomic_directory(raw_root) as tmp:
        WRITERS[name](tmp, meta, indices, rng, size, int(num_images), class_boxes=bool(class_boxes))
        _write_marker(tmp, name, meta, indices, int(num_images), size, int(seed), bool(class_boxes))
    return Path(raw_root)
