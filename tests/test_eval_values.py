"""Numbers out of pipeline/evaluation.py's real loop: a model that returns the ground truth scores 100,
a model that is wrong in a known way scores the value computed by hand (semantic, multi-scale + flip TTA,
panoptic), and the per-query category statistics on a constructed case.

The data are colour-coded (tests/_colour_data.py): the `ColourOracle` reads each pixel's label from its
colour, so it is right exactly when the evaluation loop keeps image, label and prediction aligned.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import parse_config, resolve_defaults
from pipeline.evaluation import GTCache, QueryStats, evaluate
from tests._colour_data import ColourOracle, panoptic_meta, semantic_meta, write_panoptic, write_semantic

IGNORE = 255


def _cfg(meta, root, **test):
    raw = {"model": {"backbone": "SmokeR18"},
           "data": {"dataset": meta.name, "root": str(root), "test_short_size": 64, "test_max_size": 128},
           "test": {"fps_images": 1, "fps_warmup": 0, **test},
           "run": {"device": "cpu", "measure_fps": False, "tracking": False}}
    return resolve_defaults(parse_config(raw), meta)


@pytest.fixture(scope="module")
def semantic_records(tmp_path_factory):
    """Image a (64x64): columns 0-31 class 0, 32-47 class 1, 48-63 class 2 with an 8x8 ignore block.
    Image b (64x96): top class 3, bottom class 1. Class 4 never appears. No corner where three regions
    meet: there the bilinear upsampling of stride-4 masks (official MaskFormer.forward) may give a corner pixel
    to either side."""
    root = tmp_path_factory.mktemp("sem")
    a = np.zeros((64, 64), np.int64)
    a[:, 32:48] = 1
    a[:, 48:] = 2
    a_label = a.copy()
    a_label[40:48, 52:60] = IGNORE  # painted as class 2, ignored in the GT
    b = np.full((64, 96), 1, np.int64)
    b[:32] = 3
    return [write_semantic(root, "a", a_label, image_label=a), write_semantic(root, "b", b)]


# Pixel counts (ignore excluded): class 0: 2048; class 1: 1024 + 3072; class 2: 1024 - 64; class 3: 3072.
N0, N1, N2, N3 = 2048, 4096, 960, 3072
TOTAL = N0 + N1 + N2 + N3


def test_ground_truth_model_scores_100_on_semantic_data_with_tta(semantic_records, tmp_path):
    meta = semantic_meta()
    cfg = _cfg(meta, tmp_path, tta=True, tta_sizes=[64, 128], flip=True, tta_max_size=256)
    assert cfg.test.strategy == "semantic"
    m = evaluate(ColourOracle(meta.num_classes), cfg, meta, torch.device("cpu"), records=semantic_records)
    for key in ("val/mIoU", "val/fwIoU", "val/mACC", "val/pACC", "val/PQSt", "val/SQSt", "val/RQSt",
                "val_ms/mIoU", "val_ms/pACC", "val_ms/PQSt", "val_ms/SQSt", "val_ms/RQSt"):
        assert m[key] == pytest.approx(100.0), key
    for c in range(4):
        assert m[f"val/IoU/c{c}"] == pytest.approx(100.0)
    assert m["val/IoU/c4"] is None  # never in GT nor predicted: NaN, stored as null
    assert m["analysis/query_categories"] == {"0": [0], "1": [1], "2": [2], "3": [3], "4": []}
    assert m["analysis/unique_categories_per_query"] == [1, 1, 1, 1, 0]


def test_known_wrong_semantic_model_gives_the_hand_computed_values(semantic_records, tmp_path):
    """Class 0 reported as class 1: IoU_0 = 0, IoU_1 = 4096 / 6144, IoU_2 = IoU_3 = 1 (ignore block not counted)."""
    meta = semantic_meta()
    cfg = _cfg(meta, tmp_path, tta=True, tta_sizes=[64, 128], flip=True, tta_max_size=256)
    m = evaluate(ColourOracle(meta.num_classes, relabel={0: 1}), cfg, meta, torch.device("cpu"),
                 records=semantic_records)
    iou1 = N1 / (N1 + N0)
    for prefix in ("val", "val_ms"):  # the TTA path scores the same wrong map
        assert m[f"{prefix}/mIoU"] == pytest.approx(100 * (0 + iou1 + 1 + 1) / 4)  # 66.67
        assert m[f"{prefix}/pACC"] == pytest.approx(100 * (N1 + N2 + N3) / TOTAL)
        assert m[f"{prefix}/mACC"] == pytest.approx(75.0)
        assert m[f"{prefix}/fwIoU"] == pytest.approx(100 * (iou1 * N1 + N2 + N3) / TOTAL)
        # PQ^St per class: 0 -> one FN (PQ 0, SQ 0); 1 -> image a IoU 1024/3072 < 0.5: 1 FP + 1 FN, image b
        # TP IoU 1 (PQ 1/(1 + 0.5 + 0.5) = 0.5, SQ 1, RQ 0.5); 2, 3 -> TP IoU 1.
        assert m[f"{prefix}/PQSt"] == pytest.approx(100 * (0 + 0.5 + 1 + 1) / 4)
        assert m[f"{prefix}/SQSt"] == pytest.approx(100 * (0 + 1 + 1 + 1) / 4)
        assert m[f"{prefix}/RQSt"] == pytest.approx(100 * (0 + 0.5 + 1 + 1) / 4)
    assert m["val/IoU/c0"] == 0.0 and m["val/IoU/c1"] == pytest.approx(100 * iou1)
    assert m["analysis/query_categories"]["0"] == []  # query 0 never sees its class now


@pytest.fixture(scope="module")
def panoptic_records(tmp_path_factory):
    """Image a (64x64): stuff 0 left half (an 8x8 VOID block inside), stuff 1 right top, thing 2 right
    bottom as two instances A (24 columns, 768 px) and B (8 columns, 256 px).
    Image b (64x96): stuff 1 top, thing 3 bottom left (32x32), stuff 0 bottom right."""
    root = tmp_path_factory.mktemp("pan")
    cls = np.zeros((64, 64), np.int64)
    inst = np.zeros((64, 64), np.int64)
    cls[:32, 32:] = 1
    cls[32:, 32:] = 2
    inst[32:, 56:] = 1
    void = np.zeros((64, 64), bool)
    void[8:16, 8:16] = True
    a = write_panoptic(root, "a", cls, inst, void)
    cls_b = np.full((64, 96), 1, np.int64)
    cls_b[32:, :32] = 3
    cls_b[32:, 32:] = 0
    b = write_panoptic(root, "b", cls_b, np.zeros((64, 96), np.int64))
    return [a, b]


def test_ground_truth_model_scores_100_on_panoptic_data(panoptic_records, tmp_path):
    meta = panoptic_meta()
    cfg = _cfg(meta, tmp_path)
    assert cfg.test.strategy == "general" and cfg.test.object_mask_threshold == 0.7
    m = evaluate(ColourOracle(4, panoptic=True), cfg, meta, torch.device("cpu"), records=panoptic_records)
    for key in ("val/PQ", "val/SQ", "val/RQ", "val/PQ_th", "val/SQ_th", "val/RQ_th", "val/PQ_st", "val/SQ_st",
                "val/RQ_st", "val/mIoU", "val/pACC"):
        assert m[key] == pytest.approx(100.0), key
    assert m["analysis/unique_categories_per_query"][2 * 4 + 1] == 1  # instance B's query predicted class 2


def test_known_wrong_panoptic_model_gives_the_hand_computed_values(panoptic_records, tmp_path):
    """Both instances of thing 2 reported as one segment: it matches A with IoU 768/1024 = 0.75, B is a
    false negative. Class 2: SQ 0.75, RQ 1 / (1 + 0.5) = 2/3, PQ 0.5; every other class 1. The class map is
    unchanged, so mIoU stays 100. PQ = 87.5 while SQ * RQ = 85.9: the averages are per class."""
    meta = panoptic_meta()
    cfg = _cfg(meta, tmp_path)
    m = evaluate(ColourOracle(4, panoptic=True, merge_instances=True), cfg, meta, torch.device("cpu"),
                 records=panoptic_records)
    expect = {"PQ": (1 + 1 + 0.5 + 1) / 4, "SQ": (1 + 1 + 0.75 + 1) / 4, "RQ": (1 + 1 + 2 / 3 + 1) / 4,
              "PQ_th": (0.5 + 1) / 2, "SQ_th": (0.75 + 1) / 2, "RQ_th": (2 / 3 + 1) / 2,
              "PQ_st": 1.0, "SQ_st": 1.0, "RQ_st": 1.0}
    for key, value in expect.items():
        assert m[f"val/{key}"] == pytest.approx(100 * value), key
    assert m["val/mIoU"] == pytest.approx(100.0)


def test_prepared_ground_truth_is_kept_across_evaluations_of_a_run(panoptic_records, tmp_path):
    """The trainer passes one gt_cache to all evaluations of a run: each image's GT is prepared once
    (PanopticGT) and reused, with the numbers of an evaluation without it (same model, other model)."""
    from maskformer_core.metrics.panoptic import PanopticGT

    meta = panoptic_meta()
    cfg = _cfg(meta, tmp_path)
    cache = GTCache()
    right = evaluate(ColourOracle(4, panoptic=True), cfg, meta, torch.device("cpu"), records=panoptic_records,
                     gt_cache=cache)
    assert sorted(cache) == sorted(r["pan_seg_file_name"] for r in panoptic_records)
    assert all(isinstance(gt, PanopticGT) for gt in cache.values())
    kept = dict(cache)
    wrong = evaluate(ColourOracle(4, panoptic=True, merge_instances=True), cfg, meta, torch.device("cpu"),
                     records=panoptic_records, gt_cache=cache)
    assert all(cache[k] is kept[k] for k in kept) and len(cache) == len(kept)  # reused, not prepared again
    fresh = evaluate(ColourOracle(4, panoptic=True, merge_instances=True), cfg, meta, torch.device("cpu"),
                     records=panoptic_records)
    pq_keys = [k for k in fresh if k.startswith("val/") and k.split("/")[1].split("_")[0] in ("PQ", "SQ", "RQ")]
    assert len(pq_keys) == 9
    assert {k: wrong[k] for k in pq_keys} == {k: fresh[k] for k in pq_keys}
    assert right["val/PQ"] == pytest.approx(100.0) and wrong["val/PQ"] == pytest.approx(100 * 3.5 / 4)
    assert cache.nbytes == sum(gt.nbytes for gt in cache.values()) > 0


def test_prepared_ground_truth_cache_stops_at_its_byte_budget(panoptic_records, tmp_path):
    """A budget of one image's prepared GT keeps one image; the rest are prepared at each evaluation and
    the numbers equal an evaluation without a cache."""
    meta = panoptic_meta()
    cfg = _cfg(meta, tmp_path)
    probe = GTCache()
    evaluate(ColourOracle(4, panoptic=True), cfg, meta, torch.device("cpu"), records=panoptic_records[:1],
             gt_cache=probe)
    one = probe.nbytes
    cache = GTCache(max_bytes=one)
    small = evaluate(ColourOracle(4, panoptic=True, merge_instances=True), cfg, meta, torch.device("cpu"),
                     records=panoptic_records, gt_cache=cache)
    assert len(panoptic_records) > 1 and len(cache) == 1 and cache.nbytes <= one
    fresh = evaluate(ColourOracle(4, panoptic=True, merge_instances=True), cfg, meta, torch.device("cpu"),
                     records=panoptic_records)
    assert {k: v for k, v in small.items() if k.startswith("val/P")} == {k: v for k, v in fresh.items() if k.startswith("val/P")}


def test_query_statistics_on_a_constructed_case():
    """Probabilities given as log-probabilities (softmax(log p) = p); > 0.5 counts, the no-object column never."""
    p = torch.tensor([
        [[0.01, 0.01, 0.97, 0.01], [0.49, 0.3, 0.11, 0.1], [0.01, 0.01, 0.01, 0.97]],  # image 0
        [[0.9, 0.05, 0.03, 0.02], [0.2, 0.51, 0.19, 0.1], [0.01, 0.02, 0.02, 0.95]],  # image 1
    ])
    stats = QueryStats()
    stats.update(p.log())
    stats.update(p[:1].log())  # a repeated category is counted once
    res = stats.result(num_queries=4)
    assert res["analysis/query_categories"] == {"0": [0, 2], "1": [1], "2": [], "3": []}
    assert res["analysis/unique_categories_per_query"] == [2, 1, 0, 0]
