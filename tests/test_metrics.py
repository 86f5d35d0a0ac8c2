"""Metrics: hand-computed mIoU family (2021 formula), PQ on a hand-made panoptic folder (crowd, VOID,
no predictions, empty GT), PQ^St, error cases, and properties (mIoU in [0, 100]; per-class PQ, SQ, RQ of
PQ^St and PQ equal direct loop implementations of the panopticapi rules)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from maskformer_core.errors import DataError
from maskformer_core.metrics import PanopticEvaluator, PQStuffEvaluator, SemSegEvaluator, id2rgb, pq_compute, rgb2id
from maskformer_core.metrics.panoptic import _dense_index

CATEGORIES = [{"id": 10, "name": "a", "isthing": 1}, {"id": 20, "name": "b", "isthing": 0},
              {"id": 30, "name": "c", "isthing": 0}, {"id": 40, "name": "d", "isthing": 1}]


def test_semseg_hand_computed():
    ev = SemSegEvaluator(3, 255, class_names=["x", "y", "z"])
    ev.process(np.array([[0, 1, 1, 1, 0, 1]]), np.array([[0, 0, 1, 1, 255, 2]]))
    r = ev.evaluate()
    assert r["mIoU"] == pytest.approx(100 / 3) and r["mACC"] == pytest.approx(50) and r["pACC"] == pytest.approx(60)
    assert r["fwIoU"] == pytest.approx(40) and r["IoU-x"] == pytest.approx(50) and r["ACC-y"] == pytest.approx(100)
    assert r["IoU-z"] == 0.0
    # all-ignore image changes nothing
    ev.process(np.zeros((3, 3), int), np.full((3, 3), 255))
    assert ev.evaluate()["mIoU"] == pytest.approx(100 / 3)


def test_semseg_2021_formula_and_no_prediction():
    ev = SemSegEvaluator(2, 255)
    ev.process(np.array([0, 1]), np.array([0, 0]))
    r = ev.evaluate()
    assert r["mIoU"] == pytest.approx(25.0)  # class 1 predicted, absent from GT: counts as 0 (2021 code)
    assert np.isnan(r["IoU-1"])
    ev = SemSegEvaluator(2, 255)
    ev.process(np.array([0, 255]), np.array([0, 0]))  # "no prediction" = a miss, no false positive
    assert ev.evaluate()["mIoU"] == pytest.approx(50.0) and ev.evaluate()["pACC"] == pytest.approx(50.0)
    empty = SemSegEvaluator(2, 255)
    empty.process(np.zeros((2, 2), int), np.full((2, 2), 255))
    assert np.isnan(empty.evaluate()["mIoU"])
    with pytest.raises(DataError, match="outside"):
        SemSegEvaluator(2, 255).process(np.zeros(2, int), np.array([0, 7]))
    with pytest.raises(DataError, match="shape"):
        SemSegEvaluator(2, 255).process(np.zeros(3, int), np.zeros(2, int))


def _pq_stuff_reference(pred: np.ndarray, gt: np.ndarray, k: int, ignore: int = 255) -> dict[int, dict]:
    """One image of PQ^St by the panopticapi rules, class by class: segment = the pixels of the class; a
    match needs IoU > 0.5 with pred-on-VOID pixels taken out of the union; an unmatched prediction mostly
    (> 0.5) on VOID is no false positive. Returns {class: {"pq", "sq", "rq"}} for classes with any count."""
    out = {}
    void = gt == ignore
    for c in range(k):
        g, p = gt == c, pred == c
        if not g.any() and not p.any():
            continue
        inter = int((g & p).sum())
        union = int(g.sum() + p.sum() - inter - (p & void).sum())
        iou = inter / union if union else 0.0
        tp = fp = fn = 0
        if g.any() and p.any() and iou > 0.5:
            tp = 1
        else:
            fn = int(g.any())
            fp = int(p.any() and (p & void).sum() / p.sum() <= 0.5)
        if tp + fp + fn == 0:
            continue
        sq = iou if tp else 0.0
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        out[c] = {"pq": sq * rq, "sq": sq, "rq": rq}
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 5))
def test_miou_in_range_and_pq_stuff_equals_a_direct_count(seed, k):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k + 1, size=(6, 7))
    gt[gt == k] = 255
    pred = rng.integers(0, k, size=(6, 7))
    ev = SemSegEvaluator(k, 255)
    ev.process(pred, gt)
    r = ev.evaluate()
    if (gt != 255).any():
        for key in ("mIoU", "fwIoU", "mACC", "pACC"):
            assert 0.0 <= r[key] <= 100.0
    pqs = PQStuffEvaluator(k, 255)
    pqs.process(pred, gt)
    ref = _pq_stuff_reference(pred, gt, k)
    per_class = pqs.results()["per_class"]
    for c in range(k):
        expected = ref.get(c, {"pq": 0.0, "sq": 0.0, "rq": 0.0})
        assert per_class.get(c, {"pq": 0.0, "sq": 0.0, "rq": 0.0}) == pytest.approx(expected), c


def test_pq_stuff_hand_computed():
    ev = PQStuffEvaluator(3, 255)
    ev.process(np.array([0, 0, 0, 1, 1, 1, 1, 2]), np.array([0, 0, 0, 0, 1, 1, 255, 255]))
    r = ev.evaluate()
    assert r["PQ"] == pytest.approx(100 * (0.75 + 2 / 3) / 2) and r["RQ"] == pytest.approx(100.0)
    res = ev.results()
    assert res["All"] == res["Stuff"] and res["Things"]["n"] == 0


def _write_png(path, ids):
    Image.fromarray(id2rgb(np.asarray(ids))).save(path)


def _make_folder(tmp_path, pred_override=None):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(exist_ok=True)
    pred_dir.mkdir(exist_ok=True)
    # image 1: thing (id 1, cat 10), crowd (id 2, cat 10), stuff (id 3, cat 20), VOID (0)
    gt1 = [[1, 1, 1, 1, 0, 0, 2, 2, 3, 3]]
    pred1 = [[5, 5, 5, 0, 5, 6, 6, 6, 7, 8]]
    # image 2: GT with one thing of cat 40, no prediction at all
    gt2 = [[9, 9, 0, 0, 0, 0, 0, 0, 0, 0]]
    pred2 = [[0] * 10]
    # image 3: empty GT (all VOID); a prediction lying on VOID is ignored
    gt3 = [[0] * 10]
    pred3 = [[4] * 10]
    images = [("a", gt1, pred1, [{"id": 1, "category_id": 10, "iscrowd": 0, "area": 4},
                                 {"id": 2, "category_id": 10, "iscrowd": 1, "area": 2},
                                 {"id": 3, "category_id": 20, "iscrowd": 0, "area": 2}],
               [{"id": 5, "category_id": 10}, {"id": 6, "category_id": 10}, {"id": 7, "category_id": 20},
                {"id": 8, "category_id": 30}]),
              ("b", gt2, pred2, [{"id": 9, "category_id": 40, "iscrowd": 0, "area": 2}], []),
              ("c", gt3, pred3, [], [{"id": 4, "category_id": 20}])]
    gt_json = {"categories": CATEGORIES, "annotations": [], "images": []}
    pred_json = {"annotations": []}
    for name, g, p, gseg, pseg in images:
        _write_png(gt_dir / f"{name}.png", g)
        _write_png(pred_dir / f"{name}.png", p)
        gt_json["annotations"].append({"image_id": name, "file_name": f"{name}.png", "segments_info": gseg})
        pred_json["annotations"].append({"image_id": name, "file_name": f"{name}.png", "segments_info": pseg})
    if pred_override:
        pred_override(pred_json, pred_dir)
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps(pred_json))
    return str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), str(gt_dir), str(pred_dir), images


def test_pq_compute_hand_made_folder(tmp_path):
    gt_json, pred_json, gt_dir, pred_dir, images = _make_folder(tmp_path)
    res = pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=2)
    assert res["per_class"][10] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0})
    assert res["per_class"][20] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # IoU exactly 0.5 is not a match
    assert res["Things"] == pytest.approx({"pq": 0.375, "sq": 0.375, "rq": 0.5, "n": 2})
    assert res["Stuff"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2})
    assert res["All"] == pytest.approx({"pq": 0.1875, "sq": 0.1875, "rq": 0.25, "n": 4})
    # the in-memory evaluator gives the same numbers without PNGs
    ev = PanopticEvaluator(CATEGORIES)
    for name, g, p, gseg, pseg in images:
        ev.process(np.array(g), gseg, np.array(p), pseg, image_id=name)
    assert ev.results() == res
    assert ev.evaluate()["PQ_th"] == pytest.approx(37.5)
    assert pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=1) == res


@pytest.mark.parametrize("mutate, message", [
    (lambda j, d: j["annotations"][0]["segments_info"].pop(), "in the PNG but not in segments_info"),
    (lambda j, d: j["annotations"][1]["segments_info"].append({"id": 77, "category_id": 10}), "in segments_info but not in the (PNG|mask)"),
    (lambda j, d: j["annotations"][0]["segments_info"][0].update(category_id=99), "unknown category_id 99"),
    (lambda j, d: os.remove(d / "c.png"), "not found"),
    (lambda j, d: j["annotations"].pop(), "no prediction for the image with id 'c'"),
])
def test_pq_compute_errors_name_the_culprit(tmp_path, mutate, message):
    gt_json, pred_json, gt_dir, pred_dir, _ = _make_folder(tmp_path, mutate)
    with pytest.raises(DataError, match=message):
        pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=1)
    with pytest.raises(DataError, match="not found"):
        pq_compute(gt_json, str(tmp_path / "missing.json"), gt_dir, pred_dir)


def test_rgb_id_round_trip_and_dense_index():
    ids = np.array([[0, 1, 256, 65536], [16777215, 123456, 7, 0]], dtype=np.uint32)
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
    idx = _dense_index(ids, [123456, 7, 16777215], 0)
    assert idx.reshape(2, 4).tolist() == [[3, 4, 4, 4], [2, 0, 1, 3]]  # 3 = VOID, 4 = unknown


def _reference_pq(samples, categories):
    """Direct transcription of panopticapi's pq_compute rules with dicts and np.unique (slow, obviously correct)."""
    stats = {}
    for gt, gseg, pred, pseg in samples:
        gsegs = {s["id"]: dict(s) for s in gseg}
        psegs = {s["id"]: dict(s) for s in pseg}
        ids, cnt = np.unique(pred, return_counts=True)
        for i, c in zip(ids.tolist(), cnt.tolist()):
            if i in psegs:
                psegs[i]["area"] = c
        inter = {}
        comb, cnt = np.unique(gt.astype(np.int64) * 2**24 + pred, return_counts=True)
        for cmb, c in zip(comb.tolist(), cnt.tolist()):
            inter[(cmb // 2**24, cmb % 2**24)] = c
        gm, pm = set(), set()
        for (g, p), c in inter.items():
            if g in gsegs and p in psegs and not gsegs[g]["iscrowd"] and gsegs[g]["category_id"] == psegs[p]["category_id"]:
                iou = c / (psegs[p]["area"] + gsegs[g]["area"] - c - inter.get((0, p), 0))
                if iou > 0.5:
                    s = stats.setdefault(gsegs[g]["category_id"], [0.0, 0, 0, 0])
                    s[0] += iou
                    s[1] += 1
                    gm.add(g)
                    pm.add(p)
        crowd = {}
        for g, info in gsegs.items():
            if g in gm:
                continue
            if info["iscrowd"]:
                crowd[info["category_id"]] = g
                continue
            stats.setdefault(info["category_id"], [0.0, 0, 0, 0])[3] += 1
        for p, info in psegs.items():
            if p in pm:
                continue
            ign = inter.get((0, p), 0) + (inter.get((crowd[info["category_id"]], p), 0) if info["category_id"] in crowd else 0)
            if ign / info["area"] > 0.5:
                continue
            stats.setdefault(info["category_id"], [0.0, 0, 0, 0])[2] += 1
    return stats


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_vectorised_pq_equals_reference(seed):
    rng = np.random.default_rng(seed)
    samples = []
    ev = PanopticEvaluator(CATEGORIES)
    for _ in range(3):
        gt_ids = rng.choice(2**24 - 1, size=rng.integers(1, 6), replace=False) + 1
        pred_ids = rng.choice(2**24 - 1, size=rng.integers(1, 6), replace=False) + 1
        gt = rng.choice(np.concatenate([[0], gt_ids]), size=(8, 8))
        # predictions copy the GT with noise so that matches happen
        pred_lab = np.where(rng.random((8, 8)) < 0.7, np.searchsorted(np.sort(gt_ids), gt) % len(pred_ids),
                            rng.integers(0, len(pred_ids), (8, 8)))
        pred = pred_ids[pred_lab]
        pred[rng.random((8, 8)) < 0.1] = 0
        gseg = [{"id": int(i), "category_id": int(rng.choice([10, 20, 30, 40])), "iscrowd": int(rng.random() < 0.2),
                 "area": int((gt == i).sum())} for i in gt_ids]
        pseg = [{"id": int(i), "category_id": int(rng.choice([10, 20, 30, 40]))} for i in pred_ids if (pred == i).any()]
        samples.append((gt, gseg, pred, pseg))
        ev.process(gt, gseg, pred, pseg)
    ref = _reference_pq(samples, CATEGORIES)
    got = {c: v for c, v in ev.stats.per_cat.items()}
    assert set(ref) == set(got)
    for c in ref:
        assert got[c][1:] == ref[c][1:] and got[c][0] == pytest.approx(ref[c][0])
    per_class = ev.results()["per_class"]
    for c, (iou, tp, fp, fn) in ref.items():  # the panopticapi formulas on the reference counts
        denom = tp + 0.5 * fp + 0.5 * fn
        assert per_class[c] == pytest.approx({"pq": iou / denom, "sq": iou / tp if tp else 0.0, "rq": tp / denom})
