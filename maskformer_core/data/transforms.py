"""Geometric and colour augmentations of the official mappers (official
``mask_former/data/dataset_mappers/*.py``, ``configs/*`` ``INPUT.*``).

All randomness comes from an explicit ``numpy.random.Generator``. Images are uint8 [H, W, 3] RGB;
label maps are integer [H, W].
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def shortest_edge_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (H, W) of detectron2 ResizeShortestEdge: short side -> ``short``, long side <= ``max_size``."""
    scale = short / min(h, w)
    if h < w:
        newh, neww = short, scale * w
    else:
        newh, neww = scale * h, short
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 image resized to (H, W) with PIL bilinear (F "Loading rules")."""
    if img.shape[:2] == tuple(shape):
        return img
    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR))


def resize_label(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Label map resized to (H, W) with torch nearest interpolation (F: labels never get new values)."""
    if label.shape[:2] == tuple(shape):
        return label
    t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float64))[None, None]
    out = F.interpolate(t, size=tuple(shape), mode="nearest")[0, 0]
    return out.numpy().astype(label.dtype)


def resize_panoptic(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Panoptic segment-id map resized to (H, W) as the official mappers do it: the uint8 RGB panoptic PNG
    goes through detectron2 `ResizeTransform.apply_segmentation`, i.e. PIL NEAREST on a uint8 image
    (samples at pixel centres), not torch nearest (pixel corners) as for the float semantic labels."""
    if ids.shape[:2] == tuple(shape):
        return ids
    from maskformer_core.data.formats import id2rgb, rgb2id

    rgb = Image.fromarray(id2rgb(ids)).resize((shape[1], shape[0]), Image.NEAREST)
    return rgb2id(np.asarray(rgb)).astype(ids.dtype)


def random_crop_box(h: int, w: int, crop: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Uniform random crop of min(crop, image) size -> (y0, x0, ch, cw) (official
    ``RandomCrop_CategoryAreaConstraint`` with max-area 1.0)."""
    ch, cw = min(crop[0], h), min(crop[1], w)
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


def absolute_range_crop_box(h: int, w: int, lo: int, hi: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """detectron2 RandomCrop("absolute_range", (lo, hi)): each side uniform in [min(side, lo), min(side, hi)]."""
    ch = int(rng.integers(min(h, lo), min(h, hi) + 1))
    cw = int(rng.integers(min(w, lo), min(w, hi) + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def color_aug_ssd(img: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                  contrast: tuple[float, float] = (0.5, 1.5), saturation: tuple[float, float] = (0.5, 1.5),
                  hue_delta: int = 18) -> np.ndarray:
    """SSD photometric distortion (detectron2 PointRend ColorAugSSDTransform,
    ``projects/PointRend/point_rend/color_augmentation.py``).

    Each step runs with probability 1/2: brightness +U[-32, 32]; then either
    contrast -> saturation -> hue or saturation -> hue -> contrast (50/50); contrast and saturation
    scale by U[0.5, 1.5]; hue shifts by an integer in [-18, 18] on OpenCV's 0-180 scale. Works in
    BGR like the official code (the input is RGB and is converted back).
    """
    img = np.ascontiguousarray(img[:, :, ::-1])  # RGB -> BGR

    def _brightness(x):
        if rng.integers(2):
            return _convert(x, beta=rng.uniform(-brightness_delta, brightness_delta))
        return x

    def _contrast(x):
        if rng.integers(2):
            return _convert(x, alpha=rng.uniform(*contrast))
        return x

    def _saturation(x):
        if rng.integers(2):
            hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return x

    def _hue(x):
        if rng.integers(2):
            hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
            shift = int(rng.integers(-hue_delta, hue_delta + 1))
            hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int64) + shift) % 180).astype(np.uint8)
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return x

    img = _brightness(img)
    if rng.integers(2):
        img = _hue(_saturation(_contrast(img)))
    else:
        img = _contrast(_hue(_saturation(img)))
    return np.ascontiguousarray(img[:, :, ::-1])  # back to RGB


def pad_bottom_right(arr: np.ndarray, shape: tuple[int, int], value: int) -> np.ndarray:
    """Pad [H, W] or [H, W, C] bottom/right to ``shape`` with ``value`` (official
    ``mask_former_semantic_dataset_mapper.py``)."""
    h, w = arr.shape[:2]
    ph, pw = max(shape[0] - h, 0), max(shape[1] - w, 0)
    if ph == 0 and pw == 0:
        return arr
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, widths, mode="constant", constant_values=value)


def choose(seq: Sequence[int], rng: np.random.Generator) -> int:
    """One element of ``seq``, uniformly (ResizeShortestEdge "choice")."""
    return int(seq[int(rng.integers(len(seq)))])
