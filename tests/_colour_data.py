"""Tiny datasets whose colours encode the label, and a model that reads the label back from the colours.

Used by the evaluation value tests (a model that returns the ground truth must score 100) and the
alignment tests (after every augmentation the label must still sit under its colour).

- ``SEM_COLOURS[c]``: the RGB colour of semantic class ``c``.
- ``pan_colour(c, j)``: the colour of instance ``j`` of class ``c`` (R from the class, G from the instance).
- ``ColourOracle``: an ``nn.Module`` with the model contract (``preprocess`` + ``forward`` -> ``pred_logits``,
  ``pred_masks`` at stride 4) that decodes the colour of each 4x4 cell; ``relabel`` and ``merge_instances``
  make it wrong in a known way.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# Far apart in RGB so that a 4x4 average over a boundary blend still decodes to the majority colour.
SEM_COLOURS = ((220, 20, 60), (0, 160, 0), (30, 30, 230), (240, 200, 0), (120, 0, 160))
NUM_INSTANCES = 4  # instance slots per class in the panoptic code book


def pan_colour(c: int, j: int) -> tuple[int, int, int]:
    return (40 + 60 * c, 30 + 60 * j, 100)


def semantic_meta(num_classes: int = 5):
    """The ADE20K metadata narrowed to `num_classes` classes (ids 0..K-1, ignore 255)."""
    from maskformer_core.data.metadata import get_metadata

    meta = get_metadata("ade20k")
    return dataclasses.replace(meta, class_names=tuple(f"c{i}" for i in range(num_classes)),
                               dataset_ids=tuple(range(num_classes)), colors=SEM_COLOURS[:num_classes])


def panoptic_meta():
    """The ADE20K panoptic metadata narrowed to 4 classes: 0, 1 stuff; 2, 3 things."""
    from maskformer_core.data.metadata import get_metadata

    meta = get_metadata("ade20k_panoptic")
    return dataclasses.replace(meta, class_names=("s0", "s1", "t2", "t3"), dataset_ids=(0, 1, 2, 3),
                               thing_ids=(2, 3), colors=SEM_COLOURS[:4])


def paint(label: np.ndarray, colours) -> np.ndarray:
    """[H, W] ids -> [H, W, 3] uint8 with colours[id]."""
    table = np.asarray(colours, dtype=np.uint8)
    return table[label]


def write_semantic(root: Path, name: str, label: np.ndarray, image_label: np.ndarray | None = None) -> dict:
    """Image painted from `image_label` (default `label`) + label PNG; returns the record."""
    root.mkdir(parents=True, exist_ok=True)
    img = paint(label if image_label is None else image_label, SEM_COLOURS)
    Image.fromarray(img).save(root / f"{name}.png")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / f"{name}_label.png")
    h, w = label.shape
    return {"file_name": str(root / f"{name}.png"), "sem_seg_file_name": str(root / f"{name}_label.png"),
            "height": h, "width": w, "image_id": name}


def write_panoptic(root: Path, name: str, cls: np.ndarray, inst: np.ndarray, void: np.ndarray | None = None) -> dict:
    """Image coloured by (class, instance); panoptic PNG with segment id = 1 + 10 class + instance (0 = VOID
    where `void`); semantic PNG with 255 there. Returns a panoptic record (contiguous category ids)."""
    from maskformer_core.data.formats import id2rgb

    root.mkdir(parents=True, exist_ok=True)
    table = np.zeros((4, NUM_INSTANCES, 3), np.uint8)
    for c in range(4):
        for j in range(NUM_INSTANCES):
            table[c, j] = pan_colour(c, j)
    Image.fromarray(table[cls, inst]).save(root / f"{name}.png")
    ids = 1 + 10 * cls + inst
    sem = cls.copy()
    if void is not None:
        ids = np.where(void, 0, ids)
        sem = np.where(void, 255, sem)
    Image.fromarray(id2rgb(ids)).save(root / f"{name}_pan.png")
    Image.fromarray(sem.astype(np.uint8), mode="L").save(root / f"{name}_sem.png")
    segments = [{"id": int(i), "category_id": int((i - 1) // 10), "iscrowd": 0,
                 "isthing": int((i - 1) // 10) in (2, 3), "area": int((ids == i).sum())}
                for i in np.unique(ids) if i != 0]
    h, w = cls.shape
    return {"file_name": str(root / f"{name}.png"), "pan_seg_file_name": str(root / f"{name}_pan.png"),
            "sem_seg_file_name": str(root / f"{name}_sem.png"), "segments_info": segments,
            "height": h, "width": w, "image_id": name}


def decode_semantic(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] painted image -> [H, W] nearest class colour."""
    d = ((img[:, :, None, :].astype(np.int64) - np.asarray(SEM_COLOURS)[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


class ColourOracle(nn.Module):
    """Reads the label from the colours: one query per code-book entry, mask logits +-10 at stride 4.

    semantic: query c <-> class c. panoptic: query c * NUM_INSTANCES + j <-> instance j of class c.
    A query whose code is absent from the image predicts no-object. Wrong on purpose:
    `relabel={a: b}` reports class a as class b; `merge_instances` reports every instance of a thing
    class as instance 0 (one segment).
    """

    def __init__(self, num_classes: int, panoptic: bool = False, relabel: dict[int, int] | None = None,
                 merge_instances: bool = False, size_divisibility: int = 32):
        super().__init__()
        self.k = num_classes
        self.panoptic = panoptic
        self.relabel = relabel or {}
        self.merge_instances = merge_instances
        self.size_divisibility = size_divisibility
        if panoptic:
            book = [(c, j) for c in range(num_classes) for j in range(NUM_INSTANCES)]
            colours = [pan_colour(c, j) for c, j in book]
        else:
            book = [(c, 0) for c in range(num_classes)]
            colours = list(SEM_COLOURS[:num_classes])
        self.book = book
        self.register_buffer("colours", torch.tensor(colours, dtype=torch.float32))

    def preprocess(self, images):
        sizes = [(int(i.shape[1]), int(i.shape[2])) for i in images]
        d = self.size_divisibility
        hp = -(-max(s[0] for s in sizes) // d) * d
        wp = -(-max(s[1] for s in sizes) // d) * d
        batch = torch.full((len(images), 3, hp, wp), -1000.0)  # padding decodes to no code
        for b, img in enumerate(images):
            batch[b, :, : img.shape[1], : img.shape[2]] = img.float()
        return batch, sizes

    def forward(self, batch: torch.Tensor) -> dict:
        pooled = F.avg_pool2d(batch, 4)  # [B, 3, H/4, W/4]
        dist = ((pooled[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)  # [B, N, h, w]
        best = dist.argmin(1)
        valid = dist.min(1).values < 40.0 ** 2
        n = len(self.book)
        codes = torch.where(valid, best, torch.full_like(best, -1))
        # apply the deliberate errors in code space
        remap = list(range(n))
        for idx, (c, j) in enumerate(self.book):
            c2 = self.relabel.get(c, c)
            j2 = 0 if (self.merge_instances and c2 >= 2) else j
            remap[idx] = self.book.index((c2, j2 if self.panoptic else 0))
        remap_t = torch.tensor(remap + [-1])
        codes = remap_t[codes]  # -1 stays -1 (index -1 -> last entry)
        masks = torch.stack([codes == q for q in range(n)], 1)  # [B, N, h, w]
        pred_masks = torch.where(masks, 10.0, -10.0)
        logits = torch.zeros(batch.shape[0], n, self.k + 1)
        present = masks.flatten(2).any(-1)  # [B, N]
        for q, (c, _) in enumerate(self.book):
            logits[:, q, c] = torch.where(present[:, q], 10.0, 0.0)
            logits[:, q, self.k] = torch.where(present[:, q], 0.0, 10.0)
        return {"pred_logits": logits, "pred_masks": pred_masks}
