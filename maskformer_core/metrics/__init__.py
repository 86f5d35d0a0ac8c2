"""Evaluation metrics: mIoU family (semantic.py), PQ (panoptic.py), PQ^St for semantic data (pq_stuff.py)."""
from maskformer_core.metrics.panoptic import PanopticEvaluator, id2rgb, pq_compute, pq_summary, rgb2id
from maskformer_core.metrics.pq_stuff import PQStuffEvaluator
from maskformer_core.metrics.semantic import SemSegEvaluator

__all__ = ["SemSegEvaluator", "PanopticEvaluator", "PQStuffEvaluator", "pq_compute", "pq_summary", "rgb2id", "id2rgb"]
