"""Semantic-segmentation metrics: mIoU, fwIoU, mACC, pACC from a confusion matrix (detectron2
``evaluation/sem_seg_evaluation.py``).

Follows detectron2's SemSegEvaluator as MaskFormer used it in 2021: a (K+1) x (K+1) confusion matrix
with rows = prediction, columns = GT, GT ignore -> index K, and the **2021 mIoU formula**
mIoU = sum_{c: pos_gt>0} IoU_c / #{c: pos_gt + pos_pred > 0} (classes predicted but absent from the GT
count as 0). All outputs are x100.

Extension (no effect on argmax predictions, which are always in 0..K-1): a predicted value outside
0..K-1 (e.g. the ignore label written by ``general_semantic`` inference for VOID pixels) means "no
prediction" and goes to row K; such a pixel counts in its GT class's pos_gt (a miss) and in no class's
pos_pred (no false positive).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from maskformer_core.errors import DataError


class SemSegEvaluator:
    """Accumulates a confusion matrix over images.

    Args:
        num_classes: K. ignore_label: GT value to ignore (255, 65535, ...). class_names: K names for the
        per-class keys (default "0".."K-1").

    ``process(pred [H, W] int, gt [H, W] int)``; ``evaluate()`` -> ``{"mIoU", "fwIoU", "mACC", "pACC",
    "IoU-<name>", "ACC-<name>"}`` (x100; per-class values are NaN for classes absent from the GT).
    """

    def __init__(self, num_classes: int, ignore_label: int, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.conf_matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def process(self, pred, gt) -> None:
        """Add one image. ``pred`` and ``gt`` are integer arrays (or tensors) of the same shape."""
        k = self.num_classes
        pred, gt = dense_label_pair(pred, gt, k, self.ignore_label)
        self.conf_matrix += np.bincount((k + 1) * pred + gt, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)

    def merge(self, other: "SemSegEvaluator") -> None:
        """Add another evaluator's counts (e.g. gathered from other processes)."""
        self.conf_matrix += other.conf_matrix

    def evaluate(self) -> dict[str, float]:
        k = self.num_classes
        cm = self.conf_matrix.astype(np.float64)
        tp = cm.diagonal()[:k]
        # pos_gt over all prediction rows including "no prediction" (row K); identical to the 2021 code
        # ([:-1, :-1]) whenever every pixel gets a class.
        pos_gt = cm[:, :k].sum(axis=0)
        pos_pred = cm[:k, :k].sum(axis=1)
        acc = np.full(k, np.nan)
        iou = np.full(k, np.nan)
        acc_valid = pos_gt > 0
        iou_valid = (pos_gt + pos_pred) > 0
        union = pos_gt + pos_pred - tp
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        iou[acc_valid] = tp[acc_valid] / union[acc_valid]
        total_gt = pos_gt.sum()
        res: dict[str, float] = {}
        if total_gt == 0:
            res.update({"mIoU": float("nan"), "fwIoU": float("nan"), "mACC": float("nan"), "pACC": float("nan")})
        else:
            res["mIoU"] = 100 * float(iou[acc_valid].sum() / iou_valid.sum())  # 2021 formula (detectron2 before f3c1bc19)
            res["fwIoU"] = 100 * float((iou[acc_valid] * (pos_gt[acc_valid] / total_gt)).sum())
            res["mACC"] = 100 * float(acc[acc_valid].sum() / acc_valid.sum())
            res["pACC"] = 100 * float(tp.sum() / total_gt)
        for i, name in enumerate(self.class_names):
            res[f"IoU-{name}"] = 100 * float(iou[i])
        for i, name in enumerate(self.class_names):
            res[f"ACC-{name}"] = 100 * float(acc[i])
        return res


def dense_label_pair(pred, gt, num_classes: int, ignore_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened int64 (pred, gt) indices in 0..K: GT ignore -> K, predictions outside 0..K-1 -> K.

    ``pred`` and ``gt`` are integer arrays (or tensors) of one shape; a GT value that is neither a class nor the
    ignore label raises DataError naming the values (detectron2 SemSegEvaluator: the ignore label is an extra
    index).
    """
    pred = np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred)
    gt = np.asarray(gt.cpu() if hasattr(gt, "cpu") else gt)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    k = num_classes
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    ignore = gt == ignore_label
    bad = ~ignore & ((gt < 0) | (gt >= k))
    if bad.any():
        values = np.unique(gt[bad])[:10].tolist()
        raise DataError(f"ground truth has values {values} outside 0..{k - 1} that are not the ignore label {ignore_label}")
    return np.where((pred < 0) | (pred >= k), k, pred), np.where(ignore, k, gt)
