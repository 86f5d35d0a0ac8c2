"""PQ held to an independent reference: hotcoco's panopticapi-compatible ``pq_compute`` (issue 14, item 12).

Random COCO-panoptic ground truth and predictions (things, stuff, crowd, VOID, GT areas from the JSON
that exceed the PNG area as in officially prepared ADE20K panoptic, zero-pixel GT segments; predictions
moved, relabelled, dropped, spurious, unlabeled, on crowd regions) are evaluated by hotcoco from the PNG +
JSON folders and by this project's three paths: ``pq_compute`` (JSON checks + hotcoco), ``pq_compute``
with ``engine="numpy"`` (own PNG reader and rules) and the in-memory ``PanopticEvaluator`` used during
training (id maps, no PNG). Every number must agree to 1e-9. PQ^St is held to hotcoco with each class
written as one stuff segment. The readers reject duplicate images, segment ids and categories.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from hotcoco.panoptic import pq_compute as hotcoco_pq_compute
from maskformer_core.errors import DataError
from maskformer_core.metrics import PanopticEvaluator, PQStuffEvaluator, id2rgb, pq_compute

THINGS = [1, 2, 3, 5, 8]  # non-contiguous ids, as COCO's
STUFF = [100, 101, 102, 130]
UNUSED = [200]  # a stuff category no segment ever uses: 0.0 per class, not counted in n
CATEGORIES = ([{"id": c, "name": f"thing{c}", "isthing": 1} for c in THINGS]
              + [{"id": c, "name": f"stuff{c}", "isthing": 0} for c in STUFF + UNUSED])
TOL = 1e-9


def _rect(rng: np.random.Generator, h: int, w: int, min_size: int = 2):
    y0, x0 = int(rng.integers(0, h - min_size)), int(rng.integers(0, w - min_size))
    y1, x1 = int(rng.integers(y0 + min_size, h + 1)), int(rng.integers(x0 + min_size, w + 1))
    return y0, y1, x0, x1


def _jitter(rng: np.random.Generator, box, h: int, w: int):
    y0, y1, x0, x1 = (v + int(rng.integers(-3, 4)) for v in box)
    y0, x0 = min(max(y0, 0), h - 1), min(max(x0, 0), w - 1)
    return y0, max(min(y1, h), y0 + 1), x0, max(min(x1, w), x0 + 1)


def random_image(rng: np.random.Generator, h: int = 24, w: int = 32, colour_pred_ids: bool = False):
    """One GT and prediction pair: (gt ids [H, W] int64, GT segments, pred ids [H, W] int32/uint32, pred segments).

    GT: stuff bands, thing rectangles (some crowd, sometimes two crowd segments of one category), VOID
    rectangles, GT ids random 24-bit colours; some JSON areas larger than the PNG area, some missing,
    sometimes a listed segment that the PNG does not contain or PNG pixels whose id the JSON does not
    list. Prediction: each GT segment moved a few pixels (kept with p 0.8, relabelled with p 0.2),
    spurious segments, unlabeled (0) rectangles, predictions of a crowd category over the crowd region;
    ids 1..N (post-processor style) or random colours.
    """
    gt = np.zeros((h, w), dtype=np.int64)
    colours = iter((rng.choice(2**24 - 1, size=64, replace=False) + 1).tolist())
    boxes = []  # (id, category, crowd, box)
    cuts = np.sort(rng.choice(np.arange(1, h), size=int(rng.integers(1, 4)), replace=False)).tolist()
    for y0, y1 in zip([0] + cuts, cuts + [h]):
        boxes.append((next(colours), int(rng.choice(STUFF)), 0, (y0, y1, 0, w)))
    crowd_cat = int(rng.choice(THINGS))
    for _ in range(int(rng.integers(2, 8))):
        crowd = int(rng.random() < 0.2)
        cat = crowd_cat if crowd and rng.random() < 0.7 else int(rng.choice(THINGS))
        boxes.append((next(colours), cat, crowd, _rect(rng, h, w)))
    for seg_id, _, _, (y0, y1, x0, x1) in boxes:
        gt[y0:y1, x0:x1] = seg_id
    for _ in range(int(rng.integers(0, 3))):
        y0, y1, x0, x1 = _rect(rng, h, w)
        gt[y0:y1, x0:x1] = 0  # VOID
    gt_segments = []
    for seg_id, cat, crowd, _ in boxes:
        area = int((gt == seg_id).sum())
        if area == 0 and rng.random() < 0.5:
            continue  # a fully overwritten segment, dropped from the JSON; otherwise listed with 0 px
        if area and rng.random() < 0.05:
            continue  # pixels whose id the JSON does not list: ignored (panopticapi's gt_segms lookup)
        seg = {"id": seg_id, "category_id": cat, "iscrowd": crowd, "area": area}
        u = rng.random()
        if u < 0.15:
            seg["area"] += int(rng.integers(1, 20))  # pre-overwrite area (official ADE20K panoptic JSON)
        elif u < 0.25:
            del seg["area"]  # no JSON area: the PNG area (hotcoco and this project; panopticapi needs it)
        gt_segments.append(seg)
    pred = np.zeros((h, w), dtype=np.int64)
    pred_boxes = []
    for seg_id, cat, crowd, box in boxes:
        if rng.random() < 0.2:
            continue  # dropped: a false negative (or nothing, for crowd)
        if rng.random() < 0.2:
            cat = int(rng.choice(THINGS + STUFF))  # relabelled
        pred_boxes.append((cat, _jitter(rng, box, h, w)))
    for _ in range(int(rng.integers(0, 4))):
        pred_boxes.append((int(rng.choice(THINGS + STUFF)), _rect(rng, h, w, 1)))  # spurious
    if any(s["iscrowd"] for s in gt_segments) and rng.random() < 0.5:
        c = next(s for s in gt_segments if s["iscrowd"])
        ys, xs = np.nonzero(gt == c["id"])
        if ys.size:
            pred_boxes.append((c["category_id"], (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)))
    order = rng.permutation(len(pred_boxes))
    pred_ids = (rng.choice(2**24 - 1, size=len(pred_boxes), replace=False) + 1 if colour_pred_ids
                else np.arange(1, len(pred_boxes) + 1))
    for k in order:
        y0, y1, x0, x1 = pred_boxes[k][1]
        pred[y0:y1, x0:x1] = pred_ids[k]
    for _ in range(int(rng.integers(0, 2))):
        y0, y1, x0, x1 = _rect(rng, h, w)
        pred[y0:y1, x0:x1] = 0  # unlabeled
    pred_segments = [{"id": int(pred_ids[k]), "category_id": pred_boxes[k][0]} for k in range(len(pred_boxes))
                     if (pred == pred_ids[k]).any()]
    pred = pred.astype(np.uint32 if colour_pred_ids else np.int32)
    return gt, gt_segments, pred, pred_segments


def write_folder(root: Path, images: list, image_ids: list) -> tuple[str, str, str, str]:
    """COCO panoptic layout as panopticapi reads it: gt.json + gt/*.png, pred.json + pred/*.png."""
    (root / "gt").mkdir(parents=True)
    (root / "pred").mkdir()
    gt_json = {"categories": CATEGORIES, "images": [], "annotations": []}
    pred_json = {"annotations": []}
    for image_id, (gt, gt_segments, pred, pred_segments) in zip(image_ids, images):
        name = f"{image_id}.png"
        Image.fromarray(id2rgb(gt)).save(root / "gt" / name)
        Image.fromarray(id2rgb(pred)).save(root / "pred" / name)
        gt_json["images"].append({"id": image_id, "file_name": name.replace(".png", ".jpg"),
                                  "height": gt.shape[0], "width": gt.shape[1]})
        gt_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": gt_segments})
        pred_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": pred_segments})
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_json))
    return str(root / "gt.json"), str(root / "pred.json"), str(root / "gt"), str(root / "pred")


def hotcoco(*files) -> dict:
    """hotcoco's ``pq_compute`` (panopticapi's signature); its summary table goes to /dev/null."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        return hotcoco_pq_compute(*files)


def assert_same(ours: dict, ref: dict) -> None:
    """Every number of panopticapi's result dict equal to 1e-9; hotcoco's -1 ("not computed") for a
    category without TP/FP/FN or an empty group must be panopticapi's 0.0 (n = 0) here."""
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for key in ("pq", "sq", "rq"):
            want = ref[group][key] if ref[group]["n"] else 0.0
            assert ours[group][key] == pytest.approx(want, abs=TOL), (group, key)
    assert list(ours["per_class"]) == [c["id"] for c in CATEGORIES]
    for cat, r in ref["per_class"].items():
        seen = r["tp"] + r["fp"] + r["fn"] > 0
        if not seen:
            assert r["pq"] == -1.0  # hotcoco's sentinel; panopticapi writes 0.0
        for key in ("pq", "sq", "rq"):
            assert ours["per_class"][cat][key] == pytest.approx(r[key] if seen else 0.0, abs=TOL), (cat, key)


def assert_counts(ev: PanopticEvaluator, ref: dict) -> None:
    """The in-memory per-class sums (IoU, TP, FP, FN) equal hotcoco's."""
    per_cat = ev.stats.per_cat
    for cat, r in ref["per_class"].items():
        iou, tp, fp, fn = per_cat.get(cat, [0.0, 0, 0, 0])
        assert (tp, fp, fn) == (r["tp"], r["fp"], r["fn"]), cat
        assert iou == pytest.approx(r["iou"], abs=TOL), cat


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_images=st.integers(1, 4), colour_pred_ids=st.booleans())
def test_pq_equals_hotcoco_files_and_in_memory(seed, n_images, colour_pred_ids):
    rng = np.random.default_rng(seed)
    images = [random_image(rng, colour_pred_ids=colour_pred_ids) for _ in range(n_images)]
    with tempfile.TemporaryDirectory() as tmp:
        files = write_folder(Path(tmp), images, list(range(n_images)))
        ref = hotcoco(*files)
        assert_same(pq_compute(*files), ref)
        numpy_files = pq_compute(*files, engine="numpy", num_workers=1)
        assert_same(numpy_files, ref)
    ev = PanopticEvaluator(CATEGORIES)
    for image_id, (gt, gt_segments, pred, pred_segments) in enumerate(images):
        ev.process(gt, gt_segments, pred, pred_segments, image_id=image_id)
    assert_same(ev.results(), ref)
    assert_counts(ev, ref)
    # one implementation of the rules: the numpy file engine and the in-memory evaluator agree bit for bit
    assert ev.results() == numpy_files
    # the ground truth prepared once (PanopticGT, kept across evaluations), on one thread and on a pool
    prepared = [ev.prepare_gt(gt, gt_segments) for gt, gt_segments, _, _ in images]
    for threads in (1, 3):
        for _ in range(2):  # a second evaluation reuses the same prepared GT
            cached = PanopticEvaluator(CATEGORIES, threads=threads)
            for gt, (_, _, pred, pred_segments) in zip(prepared, images):
                cached.process(gt, None, pred, pred_segments)
            assert cached.results() == numpy_files


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_images_of_several_kernel_chunks_equal_hotcoco(seed):
    """Images larger than the compiled pass's chunk (97 x 130 = 12610 pixels, an odd size): every path,
    raw GT ids and prepared GT, small and colour predicted ids, equals hotcoco."""
    from maskformer_core.metrics import _pixels

    rng = np.random.default_rng(seed)
    images = [random_image(rng, h=97, w=130, colour_pred_ids=bool(k % 2)) for k in range(3)]
    assert images[0][0].size > 3 * _pixels.CHUNK
    with tempfile.TemporaryDirectory() as tmp:
        files = write_folder(Path(tmp), images, list(range(len(images))))
        ref = hotcoco(*files)
        assert_same(pq_compute(*files, engine="numpy", num_workers=1), ref)
    for threads in (1, 2):
        ev = PanopticEvaluator(CATEGORIES, threads=threads)
        prepared = PanopticEvaluator(CATEGORIES, threads=threads)
        for gt, gt_segments, pred, pred_segments in images:
            ev.process(gt, gt_segments, pred, pred_segments)
            prepared.process(ev.prepare_gt(gt, gt_segments), None, pred, pred_segments)
        assert_same(ev.results(), ref)
        assert_counts(ev, ref)
        assert prepared.results() == ev.results()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_images=st.integers(1, 6))
def test_batched_matching_equals_image_by_image(seed, n_images):
    """The rules run on many images at once (match_images: one array pass, crowd regions per image and
    category): every image gets the sums match_segments gives it alone, bit for bit, and the evaluator's
    batch size changes no number."""
    from maskformer_core.metrics import panoptic

    rng = np.random.default_rng(seed)
    images = [random_image(rng) for _ in range(n_images)]
    stats = panoptic.PQStats({c["id"]: c for c in CATEGORIES})
    entries = []
    for k, (gt, gt_segments, pred, pred_segments) in enumerate(images):
        gt_fields, pred_fields = panoptic._fields(gt_segments, pred_segments, stats, f"image {k}")
        entries.append(panoptic._image_pq(gt, gt_fields, pred, pred_fields, f"image {k}"))
    iou, counts = panoptic.match_images(entries, len(stats.cat_ids))
    assert iou.shape == (n_images, len(CATEGORIES)) and counts.shape == (n_images, 3, len(CATEGORIES))
    for k, entry in enumerate(entries):
        alone = stats.empty_like()
        panoptic.match_segments(*entry, alone)
        assert np.array_equal(alone.iou, iou[k]) and np.array_equal(alone.counts, counts[k]), k
    results = []
    for batch in (1, 2, panoptic.MATCH_BATCH):
        saved, panoptic.MATCH_BATCH = panoptic.MATCH_BATCH, batch
        try:
            ev = PanopticEvaluator(CATEGORIES, threads=1)
            for image in images:
                ev.process(*image)
            results.append(ev.results())
        finally:
            panoptic.MATCH_BATCH = saved
    assert results[0] == results[1] == results[2]


def test_predicted_segment_with_the_void_id_equals_hotcoco(tmp_path):
    """A prediction may list a segment with id 0 (DETR writes one); it owns those pixels, as in hotcoco,
    on the small-id path (ids 0..4095) and the colour-id path alike."""
    rng = np.random.default_rng(11)
    images = []
    for colour in (False, True):
        gt, gt_segments, pred, pred_segments = random_image(rng, colour_pred_ids=colour)
        first = pred_segments[0]["id"]
        pred = np.where(pred == first, 0, pred)
        pred_segments = [dict(pred_segments[0], id=0)] + pred_segments[1:]
        images.append((gt, gt_segments, pred, pred_segments))
    ref = hotcoco(*write_folder(tmp_path, images, [0, 1]))
    ev = PanopticEvaluator(CATEGORIES, threads=1)
    for image in images:
        ev.process(*image)
    assert_same(ev.results(), ref)
    assert_counts(ev, ref)


def boundary_image():
    """Hand-made edge cases: IoU exactly 0.5 (no match), a prediction exactly half on VOID (a false
    positive: ignoring needs more than half), two crowd segments of one category (the last one listed is
    the crowd region)."""
    gt = np.array([[11, 11, 11, 11, 12, 12, 12, 12, 12, 12],
                   [0, 0, 0, 0, 13, 13, 13, 13, 13, 13],
                   [14, 14, 14, 14, 14, 16, 16, 16, 16, 16],
                   [15, 15, 15, 15, 15, 16, 16, 16, 16, 16]], dtype=np.int64)
    pred = np.array([[1, 1, 0, 0, 2, 2, 2, 2, 0, 0],
                     [0, 0, 3, 3, 3, 3, 4, 4, 4, 4],
                     [5, 5, 5, 5, 5, 5, 6, 6, 6, 6],
                     [0, 0, 0, 0, 0, 0, 6, 6, 6, 6]], dtype=np.int32)
    gt_segments = [{"id": i, "category_id": c, "iscrowd": crowd, "area": a}
                   for i, c, crowd, a in ((11, 1, 0, 4), (12, 2, 0, 6), (13, 100, 0, 6), (14, 5, 1, 5), (15, 5, 1, 5),
                                          (16, 101, 0, 10))]
    pred_segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}, {"id": 3, "category_id": 3},
                     {"id": 4, "category_id": 100}, {"id": 5, "category_id": 5}, {"id": 6, "category_id": 101}]
    return gt, gt_segments, pred, pred_segments


def test_boundary_cases_equal_hotcoco(tmp_path):
    image = boundary_image()
    files = write_folder(tmp_path, [image], [0])
    ref = hotcoco(*files)
    # by hand: [iou_sum, tp, fp, fn] per category
    want = {1: [0.0, 0, 1, 1], 2: [4 / 6, 1, 0, 0], 3: [0.0, 0, 1, 0], 5: [0.0, 0, 1, 0], 100: [4 / 6, 1, 0, 0],
            101: [0.8, 1, 0, 0]}
    for cat, (iou, tp, fp, fn) in want.items():
        r = ref["per_class"][cat]
        assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn) and r["iou"] == pytest.approx(iou), cat
    ev = PanopticEvaluator(CATEGORIES)
    ev.process(*image)
    got = ev.stats.per_cat
    assert set(got) == set(want)
    for cat, (iou, tp, fp, fn) in want.items():
        assert got[cat][1:] == [tp, fp, fn] and got[cat][0] == pytest.approx(iou), cat
    assert_same(ev.results(), ref)
    assert_same(pq_compute(*files), ref)
    assert_same(pq_compute(*files, engine="numpy", num_workers=1), ref)


def test_string_image_ids_and_process_pool_match_hotcoco(tmp_path):
    """ADE20K panoptic JSONs use string image ids (file stems); hotcoco reads integer ids only, so
    pq_compute numbers the images itself. The numpy engine's process pool changes no number."""
    rng = np.random.default_rng(7)
    images = [random_image(rng) for _ in range(5)]
    ref = hotcoco(*write_folder(tmp_path / "int", images, list(range(5))))
    files = write_folder(tmp_path / "str", images, [f"ADE_val_{i:08d}" for i in range(5)])
    assert_same(pq_compute(*files), ref)
    assert_same(pq_compute(*files, engine="numpy", num_workers=2), ref)
    assert pq_compute(*files, engine="numpy", num_workers=2) == pq_compute(*files, engine="numpy", num_workers=1)
    # a prediction JSON that also holds other images (ignored, as in panopticapi), one with a string id
    data = json.loads(Path(files[1]).read_text())
    data["annotations"].append(dict(data["annotations"][0], image_id="not_in_gt"))
    (tmp_path / "extra.json").write_text(json.dumps(data))
    ints = write_folder(tmp_path / "int2", images, list(range(5)))
    (tmp_path / "int2" / "extra.json").write_text(json.dumps(
        {"annotations": json.loads(Path(ints[1]).read_text())["annotations"] + [data["annotations"][-1]]}))
    assert_same(pq_compute(files[0], str(tmp_path / "extra.json"), files[2], files[3]), ref)
    assert_same(pq_compute(ints[0], str(tmp_path / "int2" / "extra.json"), ints[2], ints[3]), ref)


def test_in_memory_threads_and_pickling_change_no_number():
    """With several threads, images are evaluated on a pool and their sums added in image order: the
    same numbers bit for bit. A pickled evaluator (gathered from another process) merges the same sums."""
    rng = np.random.default_rng(21)
    small = [random_image(rng) for _ in range(3)]
    big = [tuple(np.kron(a, np.ones((32, 32), dtype=a.dtype)) if isinstance(a, np.ndarray) else a for a in im)
           for im in small]  # 768 x 1024 px
    for im in big:
        for seg in im[1]:
            if "area" in seg:
                seg["area"] *= 1024
    single, threaded = PanopticEvaluator(CATEGORIES, threads=1), PanopticEvaluator(CATEGORIES, threads=3)
    for im in big:
        single.process(*im)
        threaded.process(*im)
    assert threaded.results() == single.results()
    assert single.results() != PanopticEvaluator(CATEGORIES).results()
    import pickle
    merged = PanopticEvaluator(CATEGORIES)
    merged.merge(pickle.loads(pickle.dumps(single)))
    assert merged.results() == single.results()


def test_in_memory_errors_name_the_image_on_any_thread_count():
    """Bad input to the in-memory evaluator: a DataError naming the image, whether the image ran inline
    (threads=1, raised by process) or on the pool (raised by a later call); GT checks also at prepare_gt."""
    rng = np.random.default_rng(4)
    gt, gt_segments, pred, pred_segments = random_image(rng)
    unlisted = pred_segments[1:]  # the PNG still holds the first segment's pixels
    for threads in (1, 2):
        ev = PanopticEvaluator(CATEGORIES, threads=threads)
        with pytest.raises(DataError, match=r"image 'img7': predicted segment\S* \[\d+\] in the PNG but not"):
            ev.process(gt, gt_segments, pred, unlisted, image_id="img7")
            ev.results()
    # the bad image in the middle of a pool task of several images: its error, naming it, is the one raised
    for threads in (1, 2):
        ev = PanopticEvaluator(CATEGORIES, threads=threads)
        with pytest.raises(DataError, match=r"image 'img2': predicted segment\S* \[\d+\] in the PNG but not"):
            for k in range(7):
                ev.process(gt, gt_segments, pred, unlisted if k == 2 else pred_segments, image_id=f"img{k}")
            ev.results()
    ev = PanopticEvaluator(CATEGORIES, threads=2)
    prepared = ev.prepare_gt(gt, gt_segments, image_id="img7")
    with pytest.raises(DataError, match=r"image 'img7': prediction size \(3, 4\) differs"):
        ev.process(prepared, None, pred[:3, :4], pred_segments, image_id="img7")
        ev.results()
    with pytest.raises(ValueError, match="gt_segments=None"):
        ev.process(prepared, gt_segments, pred, pred_segments)
    twice = gt_segments + [dict(gt_segments[0])]
    dup_id = gt_segments[0]["id"]
    with pytest.raises(DataError, match=rf"image 3: the ground-truth segments list segment id {dup_id} twice"):
        ev.prepare_gt(gt, twice, image_id=3)
    unknown = [dict(gt_segments[0], category_id=77)] + gt_segments[1:]
    with pytest.raises(DataError, match=r"image 3, ground truth: unknown category_id 77"):
        ev.prepare_gt(gt, unknown, image_id=3)
    with pytest.raises(DataError, match=r"segment id 0 is VOID"):
        ev.prepare_gt(gt, [dict(gt_segments[0], id=0)], image_id=3)


def test_failed_check_waits_for_the_concurrent_hotcoco_run(tmp_path):
    """pq_compute starts hotcoco while it checks the JSONs; a failed check still raises its own error,
    and only after hotcoco's run has ended (no thread left reading the files)."""
    import threading

    rng = np.random.default_rng(8)
    files = write_folder(tmp_path, [random_image(rng) for _ in range(3)], [0, 1, 2])
    data = json.loads(Path(files[1]).read_text())
    del data["annotations"][2]
    Path(files[1]).write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"pred.json: no prediction for the image with id 2"):
        pq_compute(*files)
    assert not [t for t in threading.enumerate() if t.name == "pq-hotcoco"]


def test_pq_stuff_equals_hotcoco_with_one_stuff_segment_per_class(tmp_path):
    """PQ^St (MaskFormer's tools/evaluate_pq_for_semantic_segmentation.py protocol) follows the same rules:
    written as panoptic files with one stuff segment per class present (id = class + 1; the ignore label
    and "no prediction" as VOID 0), hotcoco gives the same numbers."""
    k, ignore = 6, 255
    rng = np.random.default_rng(3)
    ev = PQStuffEvaluator(k, ignore)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    cats = [{"id": c + 1, "name": f"c{c}", "isthing": 0} for c in range(k)]
    gt_anns, pred_anns = [], []
    for i in range(6):
        gt = rng.integers(0, k, size=(4, 5)).repeat(4, 0).repeat(4, 1)
        gt[rng.random(gt.shape) < 0.1] = ignore
        pred = np.where(rng.random(gt.shape) < 0.75, gt, rng.integers(0, k, size=gt.shape))
        pred[rng.random(gt.shape) < 0.05] = ignore  # "no prediction" (general_semantic VOID)
        pred[pred == ignore] = ignore if i % 2 else k + 3  # any value outside 0..K-1 means no prediction
        ev.process(pred, gt)
        for lab, anns, folder in ((gt, gt_anns, "gt"), (pred, pred_anns, "pred")):
            ids = np.where((lab >= 0) & (lab < k), lab + 1, 0)
            Image.fromarray(id2rgb(ids)).save(tmp_path / folder / f"{i}.png")
            anns.append({"image_id": i, "file_name": f"{i}.png",
                         "segments_info": [{"id": int(c), "category_id": int(c), "iscrowd": 0}
                                           for c in np.unique(ids) if c != 0]})
    (tmp_path / "gt.json").write_text(json.dumps({"categories": cats, "annotations": gt_anns}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    ref = hotcoco(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), str(tmp_path / "gt"), str(tmp_path / "pred"))
    res = ev.results()
    assert res["All"]["n"] == ref["All"]["n"] == ref["Stuff"]["n"] > 0
    for key in ("pq", "sq", "rq"):
        assert res["All"][key] == pytest.approx(ref["All"][key], abs=TOL)
        assert res["Stuff"][key] == pytest.approx(ref["Stuff"][key], abs=TOL)
    for c in range(k):
        r = ref["per_class"][c + 1]
        if r["tp"] + r["fp"] + r["fn"]:
            for key in ("pq", "sq", "rq"):
                assert res["per_class"][c][key] == pytest.approx(r[key], abs=TOL), (c, key)
        assert ev.stats.per_cat.get(c, [0.0, 0, 0, 0])[1:] == [r["tp"], r["fp"], r["fn"]]


def _dup_image(j):
    j["annotations"].append(copy.deepcopy(j["annotations"][0]))


def _dup_segment(j):
    segs = j["annotations"][1]["segments_info"]
    segs.append(dict(segs[0]))


def _dup_category(j):
    j.setdefault("categories", list(CATEGORIES)).append(dict(CATEGORIES[2], name="again"))


@pytest.mark.parametrize("engine", ["hotcoco", "numpy"])
@pytest.mark.parametrize("which", ["gt", "pred"])
@pytest.mark.parametrize("mutate, message", [
    (_dup_image, r"image id 0 is listed twice in 'annotations'"),
    (_dup_segment, r"image id 1 lists segment id \d+ twice"),
    (_dup_category, r"category id 3 is listed twice in 'categories'"),
])
def test_readers_reject_duplicates_before_reading_pngs(tmp_path, engine, which, mutate, message):
    rng = np.random.default_rng(11)
    files = write_folder(tmp_path, [random_image(rng) for _ in range(2)], [0, 1])
    path = files[0] if which == "gt" else files[1]
    data = json.loads(Path(path).read_text())
    mutate(data)
    Path(path).write_text(json.dumps(data))
    for png in Path(files[3]).iterdir():
        png.unlink()  # the JSON check comes first: no PNG is opened
    with pytest.raises(DataError, match=message) as err:
        pq_compute(*files, engine=engine, num_workers=1)
    assert path in str(err.value)


@pytest.mark.parametrize("engine", ["hotcoco", "numpy"])
@pytest.mark.parametrize("ids", [("ADE_a", "ADE_b"), (0, 7)])  # string ids: hotcoco gets renumbered dicts
def test_png_json_mismatch_names_image_and_files(tmp_path, engine, ids):
    rng = np.random.default_rng(5)
    images = [random_image(rng) for _ in range(2)]
    files = write_folder(tmp_path, images, list(ids))
    data = json.loads(Path(files[1]).read_text())
    dropped = data["annotations"][1]["segments_info"].pop()
    Path(files[1]).write_text(json.dumps(data))
    where = rf"image id {ids[1]!r} \(prediction .*{ids[1]}.png, ground truth .*{ids[1]}.png\): "
    with pytest.raises(DataError, match=where + rf"predicted segment\S* \[?{dropped['id']}\]? .*in the PNG but not in "
                                                rf"segments_info"):
        pq_compute(*files, engine=engine, num_workers=1)
    data["annotations"][1]["segments_info"].append(dropped)
    data["annotations"][0]["segments_info"].append({"id": 999_999, "category_id": THINGS[0]})
    Path(files[1]).write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"image id {ids[0]!r} .*999999.* in segments_info but not in the (PNG|mask)"):
        pq_compute(*files, engine=engine, num_workers=1)


def test_unknown_ground_truth_category_is_rejected(tmp_path):
    rng = np.random.default_rng(2)
    files = write_folder(tmp_path, [random_image(rng)], [0])
    data = json.loads(Path(files[0]).read_text())
    data["annotations"][0]["segments_info"][0]["category_id"] = 77
    Path(files[0]).write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"gt.json: image id 0, segment with id \d+ has unknown category_id 77"):
        pq_compute(*files)
    with pytest.raises(ValueError, match="engine"):
        pq_compute(*files, engine="panopticapi")


def test_benchmark_script_runs_and_all_paths_agree(tmp_path):
    """benchmarks/pq_benchmark.py on 3 images: exit 0 only when every path equals hotcoco (timings are
    not checked here)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pq_benchmark.py"
    out = subprocess.run([sys.executable, str(script), "--images", "3", "--repeats", "1", "--workers", "1",
                          "--data-dir", str(tmp_path / "bench")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every path equal to hotcoco to 1e-9: True; numpy engine == in-memory bit for bit: True" in out.stdout
    for row in ("hotcoco pq_compute (files)", "pq_compute (files; checks + hotcoco)", "in-memory PanopticEvaluator",
                "same, GT prepared once (PanopticGT, cached)", "GT preparation (once per val set, not above)"):
        assert row in out.stdout
    # a folder the script did not generate is refused, not deleted
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    out = subprocess.run([sys.executable, str(script), "--images", "3", "--data-dir", str(tmp_path / "mine")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and (tmp_path / "mine" / "keep.txt").exists()
