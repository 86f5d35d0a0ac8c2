"""PQ^St for semantic datasets: every class is one stuff segment, VOID = the ignore label.

Paper Sec. 4, "Evaluation metrics" (PQ^St: all classes treated as stuff).

Reimplements MaskFormer's ``tools/evaluate_pq_for_semantic_segmentation.py`` protocol (commit e0996f9):
per image the GT segments are the classes present in the GT label map (id = category = class), the
predicted segments the classes present in the prediction, all categories are stuff (isthing 0), and
panopticapi's matching rules are applied with VOID = ignore label through ``metrics.panoptic.match_segments``
(the one copy of the rules, shared with pq_compute's numpy engine and PanopticEvaluator; the tests hold
it to hotcoco with each class written as one stuff segment). "All" and "Stuff" are therefore identical.
Predicted values outside 0..K-1 (e.g. the ignore label written for ``general_semantic`` VOID pixels)
are "no prediction": they belong to no predicted segment.
"""
from __future__ import annotations

import numpy as np

from maskformer_core.metrics.panoptic import PQStats, match_segments, pq_summary
from maskformer_core.metrics.semantic import dense_label_pair


class PQStuffEvaluator:
    """``process(pred [H, W] int, gt [H, W] int)``; ``evaluate()`` -> ``{"PQ", "SQ", "RQ"}`` (x100, All = Stuff);
    ``results()`` -> panopticapi's dict (fractions, ``per_class`` keyed by class id)."""

    def __init__(self, num_classes: int, ignore_label: int):
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.categories = {i: {"id": i, "isthing": 0} for i in range(self.num_classes)}
        self.reset()

    def reset(self) -> None:
        self.stats = PQStats(self.categories)  # dense category position = class id

    def process(self, pred, gt) -> None:
        k = self.num_classes
        # Dense indices: classes 0..K-1, K = VOID (GT ignore / no prediction); no "unknown" ids exist here.
        pj, gi = dense_label_pair(pred, gt, k, self.ignore_label)
        full = np.bincount(gi * (k + 1) + pj, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
        gt_present = np.nonzero(full[:k].sum(axis=1) > 0)[0]
        pred_present = np.nonzero(full[:, :k].sum(axis=0) > 0)[0]
        rows = np.concatenate([gt_present, [k]])
        cols = np.concatenate([pred_present, [k]])
        g, p = len(gt_present), len(pred_present)
        hist = np.zeros((g + 2, p + 2), dtype=np.int64)
        hist[: g + 1, : p + 1] = full[np.ix_(rows, cols)]
        match_segments(hist, gt_present, np.zeros(g, dtype=bool), full[gt_present].sum(axis=1), pred_present,
                       full[:, pred_present].sum(axis=0), self.stats)

    def merge(self, other: "PQStuffEvaluator") -> None:
        self.stats += other.stats

    def results(self) -> dict:
        return self.stats.results()

    def evaluate(self) -> dict[str, float]:
        s = pq_summary(self.results())
        return {"PQ": s["PQ"], "SQ": s["SQ"], "RQ": s["RQ"]}
