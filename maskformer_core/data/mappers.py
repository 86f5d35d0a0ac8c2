"""Dataset mappers: record -> augmented image + MaskFormer targets (official
``mask_former/data/dataset_mappers/*.py``; detectron2 ``data/dataset_mapper.py`` at test time).

``build_mapper(meta, is_train, ...)`` returns a callable ``mapper(record, rng) -> dict`` with

- ``image``: uint8 Tensor [3, H, W] (after augmentation and padding);
- ``targets``: ``{"labels": LongTensor[M], "masks": BoolTensor[M, H, W]}`` (training only);
- ``sem_seg``: LongTensor [H, W], ignore value kept (semantic data, and ADE20K panoptic);
- ``height``, ``width``: original image size; ``image_id``, ``file_name``;
- panoptic test records also carry ``pan_seg`` (LongTensor [H, W] segment ids at the original size)
  and ``segments_info``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from maskformer_core.data import transforms as T
from maskformer_core.data.formats import read_image, read_label, read_panoptic_png
from maskformer_core.data.metadata import DatasetMeta
from maskformer_core.errors import DataError

PAD_IMAGE_VALUE = 128  # F "Loading rules": image padding before normalisation
PAN_PAD_VALUE = 0  # VOID id for panoptic padding (official panoptic mapper)
# COCO panoptic DETR augmentation (official ``detr_panoptic_dataset_mapper.py``): optional resize {400,500,600}
# + crop 384..600.
DETR_CROP_SHORT = (400, 500, 600)
DETR_CROP_RANGE = (384, 600)


def _hwc_to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def semantic_targets(sem_seg: np.ndarray, ignore_label: int) -> dict:
    """One mask per class present, ignore excluded (C): labels [M] sorted, masks [M, H, W]."""
    classes = np.unique(sem_seg)
    classes = classes[classes != ignore_label]
    masks = np.stack([sem_seg == c for c in classes]) if len(classes) else np.zeros((0,) + sem_seg.shape, bool)
    return {"labels": torch.as_tensor(classes, dtype=torch.long), "masks": torch.from_numpy(masks)}


def panoptic_targets(pan_seg: np.ndarray, segments_info: Sequence[dict]) -> dict:
    """One mask per non-crowd segment, label = contiguous category id (C).

    Crowd segments are dropped (their pixels are negatives). As in the official mappers, a segment
    cropped out of view keeps an all-zero mask.
    """
    labels, masks = [], []
    for seg in segments_info:
        if seg.get("iscrowd", 0):
            continue
        labels.append(int(seg["category_id"]))
        masks.append(pan_seg == int(seg["id"]))
    m = np.stack(masks) if masks else np.zeros((0,) + pan_seg.shape, bool)
    return {"labels": torch.as_tensor(labels, dtype=torch.long), "masks": torch.from_numpy(m)}


class Mapper:
    """Callable record -> training/test sample; see the module docstring for the keys."""

    def __init__(self, meta: DatasetMeta, is_train: bool, crop_size: tuple[int, int],
                 short_sizes: Sequence[int], max_size: int, size_divisibility: int,
                 color_aug: bool, test_short_size: int, test_max_size: int, augmentation: str):
        self.meta = meta
        self.is_train = is_train
        self.crop_size = tuple(int(c) for c in crop_size)
        self.short_sizes = tuple(int(s) for s in short_sizes)
        self.max_size = int(max_size)
        self.size_divisibility = int(size_divisibility)
        self.color_aug = color_aug
        self.test_short_size = int(test_short_size)
        self.test_max_size = int(test_max_size)
        self.augmentation = augmentation
        if augmentation not in ("semantic", "detr"):
            raise DataError(f"unknown augmentation {augmentation!r} (semantic | detr)")

    # -- reading -------------------------------------------------------------------------------
    def _read(self, record: dict) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        img = read_image(record["file_name"])
        sem = read_label(record["sem_seg_file_name"]) if record.get("sem_seg_file_name") else None
        pan = read_panoptic_png(record["pan_seg_file_name"]) if record.get("pan_seg_file_name") else None
        if sem is not None and self.meta.task == "panoptic":
            sem = self._sem_lut(sem)
        for name, lab in (("sem_seg_file_name", sem), ("pan_seg_file_name", pan)):
            if lab is not None and lab.shape != img.shape[:2]:
                raise DataError(
                    f"{record[name]}: label size {lab.shape[1]}x{lab.shape[0]} differs from image "
                    f"{record['file_name']} size {img.shape[1]}x{img.shape[0]}"
                )
        return img, sem, pan

    def _sem_lut(self, sem: np.ndarray) -> np.ndarray:
        """Panoptic datasets' semantic GT holds dataset ids: map them to contiguous ids (else ignore)."""
        ids = self.meta.dataset_ids
        if tuple(ids) == tuple(range(len(ids))):
            return sem
        lut = np.full(max(int(sem.max()), max(ids)) + 1, self.meta.ignore_label, np.int64)
        lut[list(ids)] = np.arange(len(ids))
        return lut[sem]

    @staticmethod
    def _resize(img, sem, pan, shape):
        img = T.resize_image(img, shape)
        sem = T.resize_label(sem, shape) if sem is not None else None
        pan = T.resize_panoptic(pan, shape) if pan is not None else None  # PIL NEAREST (uint8 RGB PNG)
        return img, sem, pan

    @staticmethod
    def _crop(img, sem, pan, box):
        y0, x0, ch, cw = box
        sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        return img[sl], (sem[sl] if sem is not None else None), (pan[sl] if pan is not None else None)

    @staticmethod
    def _flip(img, sem, pan):
        return (img[:, ::-1], sem[:, ::-1] if sem is not None else None, pan[:, ::-1] if pan is not None else None)

    # -- pipelines -----------------------------------------------------------------------------
    def _augment_semantic(self, img, sem, pan, rng):
        """Official semantic / ADE panoptic mapper: resize-choice, crop, colour, flip, pad."""
        short = T.choose(self.short_sizes, rng)
        img, sem, pan = self._resize(img, sem, pan, T.shortest_edge_shape(*img.shape[:2], short, self.max_size))
        img, sem, pan = self._crop(img, sem, pan, T.random_crop_box(*img.shape[:2], self.crop_size, rng))
        if self.color_aug:
            img = T.color_aug_ssd(img, rng)
        if rng.random() < 0.5:
            img, sem, pan = self._flip(img, sem, pan)
        if self.size_divisibility > 0:
            # Official mapper pads exactly to (size_divisibility, size_divisibility).
            shape = (self.size_divisibility, self.size_divisibility)
            img = T.pad_bottom_right(img, shape, PAD_IMAGE_VALUE)
            sem = T.pad_bottom_right(sem, shape, self.meta.ignore_label) if sem is not None else None
            pan = T.pad_bottom_right(pan, shape, PAN_PAD_VALUE) if pan is not None else None
        return img, sem, pan

    def _augment_detr(self, img, sem, pan, rng):
        """Official COCO panoptic mapper (detr_panoptic_dataset_mapper.py): flip; p 0.5 resize {400,500,600} +
        crop 384..600; resize-choice."""
        if rng.random() < 0.5:
            img, sem, pan = self._flip(img, sem, pan)
        if rng.random() < 0.5:
            short = T.choose(DETR_CROP_SHORT, rng)
            # detectron2 ResizeShortestEdge default max_size is unbounded.
            img, sem, pan = self._resize(img, sem, pan, T.shortest_edge_shape(*img.shape[:2], short, 2**31))
            box = T.absolute_range_crop_box(*img.shape[:2], *DETR_CROP_RANGE, rng)
            img, sem, pan = self._crop(img, sem, pan, box)
        short = T.choose(self.short_sizes, rng)
        img, sem, pan = self._resize(img, sem, pan, T.shortest_edge_shape(*img.shape[:2], short, self.max_size))
        return img, sem, pan

    def __call__(self, record: dict, rng: Optional[np.random.Generator] = None) -> dict:
        img, sem, pan = self._read(record)
        height, width = img.shape[:2]
        out = {"height": height, "width": width, "image_id": record.get("image_id"),
               "file_name": record["file_name"]}
        if not self.is_train:
            shape = T.shortest_edge_shape(height, width, self.test_short_size, self.test_max_size)
            out["image"] = _hwc_to_tensor(T.resize_image(img, shape))
            if sem is not None:
                out["sem_seg"] = torch.from_numpy(sem)
            if pan is not None:
                out["pan_seg"] = torch.from_numpy(pan)
                out["segments_info"] = record["segments_info"]
            return out
        if rng is None:
            raise DataError("a training mapper needs an explicit numpy Generator (rng=...)")
        if self.augmentation == "detr":
            img, sem, pan = self._augment_detr(img, sem, pan, rng)
        else:
            img, sem, pan = self._augment_semantic(img, sem, pan, rng)
        out["image"] = _hwc_to_tensor(img)
        if sem is not None:
            out["sem_seg"] = torch.from_numpy(np.ascontiguousarray(sem))
        if self.meta.task == "panoptic":
            out["targets"] = panoptic_targets(np.ascontiguousarray(pan), record["segments_info"])
        else:
            out["targets"] = semantic_targets(np.ascontiguousarray(sem), self.meta.ignore_label)
        return out


def build_mapper(meta: DatasetMeta, is_train: bool, crop_size: Optional[Sequence[int]] = None,
                 short_sizes: Optional[Sequence[int]] = None, max_size: Optional[int] = None,
                 size_divisibility: Optional[int] = None, color_aug: bool = True,
                 test_short_size: Optional[int] = None, test_max_size: Optional[int] = None) -> Mapper:
    """Mapper with the official defaults of ``meta`` (official configs ``INPUT.*``); every size can be
    overridden.

    crop_size: (H, W) random-crop size; short_sizes / max_size: ResizeShortestEdge "choice" set and
    long-side cap; size_divisibility: pad bottom/right to (s, s) (<= 0: no padding). COCO panoptic
    (``meta.augmentation == "detr"``) ignores crop/pad/colour settings: its pipeline has none.
    """
    crop = tuple(crop_size) if crop_size is not None else meta.crop_size
    if len(crop) != 2 or min(crop) <= 0:
        raise DataError(f"crop_size must be (H, W) > 0, got {crop_size!r}")
    sd = meta.size_divisibility if size_divisibility is None else int(size_divisibility)
    return Mapper(
        meta, is_train, crop_size=crop,
        short_sizes=short_sizes if short_sizes is not None else meta.train_short_sizes,
        max_size=max_size if max_size is not None else meta.train_max_size,
        size_divisibility=sd,
        color_aug=bool(color_aug) and meta.augmentation != "detr",
        test_short_size=test_short_size if test_short_size is not None else meta.test_short_size,
        test_max_size=test_max_size if test_max_size is not None else meta.test_max_size,
        augmentation=meta.augmentation,
    )
