"""Panoptic quality (PQ/SQ/RQ): a fast drop-in for the COCO panoptic API ``pq_compute`` plus an in-memory
evaluator (FACTS E.2; cocodataset/panopticapi ``panopticapi/evaluation.py``).

Matching rules (identical to panopticapi): ids come from PNGs with id = R + 256 G + 256^2 B, 0 = VOID; a
(GT, prediction) pair of the same category with a non-crowd GT is a true positive when IoU > 0.5, where
the union leaves out the prediction's overlap with VOID; unmatched non-crowd GT segments are false
negatives; an unmatched prediction is a false positive unless more than half of it lies on VOID plus the
crowd region of its category (the last crowd segment of a category in the JSON wins). GT areas come
from the GT JSON ``area`` field (as in panopticapi) when present, else from the PNG.

Speed: PNGs are decoded with OpenCV straight into 32-bit words; instead of ``np.unique`` over 64-bit
combined ids (a sort of every pixel), the GT and prediction maps are run-length encoded jointly in one
pass, the few thousand run values are mapped to dense segment indices through a tiny collision-free
lookup table (id mod m), and the GT x prediction intersections are one weighted ``np.bincount``;
images are spread over a process pool (one process per core).

Results use panopticapi's structure: ``{"All"|"Things"|"Stuff": {"pq","sq","rq","n"}, "per_class":
{category_id: {"pq","sq","rq"}}}`` as fractions in [0, 1]. Where panopticapi divides by zero (no
category with TP + FP + FN > 0 in a group), we return 0.0 with n = 0.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

from maskformer_core.errors import DataError

VOID = 0
OFFSET = 256 * 256 * 256  # panopticapi's id offset; ids are 24-bit colours


def rgb2id(color: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 colours -> [H, W] uint32 ids (R + 256 G + 256^2 B)."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] < 3:
        raise ValueError(f"rgb2id expects [H, W, 3], got shape {color.shape}")
    if color.dtype == np.uint8:
        # pad to 4 bytes per pixel and view as little-endian uint32: one copy, no arithmetic
        rgbx = np.zeros(color.shape[:-1] + (4,), dtype=np.uint8)
        rgbx[..., :3] = color[..., :3]
        return rgbx.view("<u4")[..., 0]
    c = color.astype(np.uint32)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """[H, W] integer ids -> [H, W, 3] uint8 colours (inverse of ``rgb2id`` for ids < 2^24)."""
    ids = np.ascontiguousarray(np.asarray(ids).astype("<u4"))
    return ids.view(np.uint8).reshape(ids.shape + (4,))[..., :3].copy()


def _decode_rgbx(path: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a PNG into flat uint32 words R | G << 8 | B << 16 | A << 24, plus (H, W).

    The alpha byte (255, or the PNG's alpha) is masked off later on the few run values only, so the
    only full-image work besides libpng's decode is one SIMD colour conversion (OpenCV). 8-bit RGB(A)
    PNGs take that path; anything else goes through PIL's RGB conversion. DataError naming the file
    when it is missing or unreadable.
    """
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED) if os.path.isfile(path) else None
    if img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2RGBA if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        rgba = cv2.cvtColor(img, code)
        return rgba.view("<u4").reshape(-1), (img.shape[0], img.shape[1])
    try:
        with Image.open(path) as pil:
            rgb = np.asarray(pil.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"panoptic PNG not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot decode panoptic PNG {path}: {exc}") from None
    return rgb2id(rgb).reshape(-1), (rgb.shape[0], rgb.shape[1])


def read_panoptic_png(path: str) -> np.ndarray:
    """Decode a panoptic PNG into a [H, W] uint32 id map; DataError naming the file when unreadable."""
    words, size = _decode_rgbx(path)
    return (words & np.uint32(0xFFFFFF)).reshape(size)


def _dense_index(ids: np.ndarray, seg_ids: Sequence[int], void: int) -> np.ndarray:
    """Map an id map to dense indices: i for ``seg_ids[i]``, S for ``void``, S + 1 for any other id.

    Uses a lookup table indexed by ``id mod m`` with m chosen so that the known ids do not collide,
    then checks the stored id to send unknown ids to S + 1. O(pixels), no sorting.
    """
    seg_ids = list(seg_ids)
    s = len(seg_ids)
    # A segment may use the VOID id (DETR writes segment 0); its pixels then belong to the segment.
    known = np.asarray(seg_ids + ([] if void in seg_ids else [void]), dtype=np.int64)
    n = known.size
    ids = ids.ravel()
    if ids.dtype != np.uint32:
        if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
            raise DataError(f"segment ids must be in 0..2^32-1, got range {ids.min()}..{ids.max()}")
        ids = ids.astype(np.uint32)
    m = max(2, n * n)
    while len(set((known % m).tolist())) != n:
        m += 1
    slots = known % m
    lut_idx = np.full(m, s + 1, dtype=np.int64)
    lut_idx[slots] = np.arange(n)
    lut_val = (np.arange(m, dtype=np.int64) + 1) % (2**32)  # never equal to an id hashing to that slot
    lut_val[slots] = known
    r = ids % np.uint32(m)
    idx = lut_idx[r]
    idx[lut_val.astype(np.uint32)[r] != ids] = s + 1
    return idx


class PQStats:
    """Per-category accumulators ``{category_id: [iou_sum, tp, fp, fn]}`` (panopticapi's PQStat)."""

    def __init__(self) -> None:
        self.per_cat: dict[int, list] = {}

    def _get(self, cat: int) -> list:
        if cat not in self.per_cat:
            self.per_cat[cat] = [0.0, 0, 0, 0]
        return self.per_cat[cat]

    def __iadd__(self, other: "PQStats") -> "PQStats":
        for cat, (iou, tp, fp, fn) in other.per_cat.items():
            acc = self._get(cat)
            acc[0] += iou
            acc[1] += tp
            acc[2] += fp
            acc[3] += fn
        return self

    def average(self, categories: dict, isthing: bool | None) -> tuple[dict, dict]:
        """(``{"pq","sq","rq","n"}``, per-class dict) over ``categories`` filtered by isthing."""
        pq = sq = rq = 0.0
        n = 0
        per_class: dict = {}
        for cat_id, info in categories.items():
            if isthing is not None and (info.get("isthing", 0) == 1) != isthing:
                continue
            iou, tp, fp, fn = self.per_cat.get(cat_id, [0.0, 0, 0, 0])
            if tp + fp + fn == 0:
                per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_c = iou / tp if tp != 0 else 0.0
            rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[cat_id] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq += pq_c
            sq += sq_c
            rq += rq_c
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def results(self, categories: dict) -> dict:
        """panopticapi's result dict for ``categories`` ({id: {"isthing", ...}})."""
        out: dict = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            out[name], per_class = self.average(categories, isthing)
            if name == "All":
                out["per_class"] = per_class
        return out


def match_segments(hist: np.ndarray, gt_ids: Sequence[int], gt_cats: Sequence[int], gt_crowd: Sequence[bool],
                   gt_areas: np.ndarray, pred_ids: Sequence[int], pred_cats: Sequence[int], pred_areas: np.ndarray,
                   stats: PQStats) -> None:
    """panopticapi's per-image matching from a joint histogram, accumulated into ``stats``.

    Args:
        hist: ``[G + 2, P + 2]`` int pixel counts; rows = GT segments (JSON order), GT VOID (row G) and
            GT ids absent from the JSON (row G + 1); columns = predicted segments, VOID, unknown.
        gt_*: per GT segment id, category, crowd flag, area; pred_*: per predicted segment.
    """
    g, p = len(gt_ids), len(pred_ids)
    inter = hist[:g, :p]
    pred_void = hist[g, :p]
    gt_cats_a = np.asarray(gt_cats, dtype=np.int64)
    pred_cats_a = np.asarray(pred_cats, dtype=np.int64)
    crowd = np.asarray(gt_crowd, dtype=bool)
    gt_matched = np.zeros(g, dtype=bool)
    pred_matched = np.zeros(p, dtype=bool)
    if g and p:
        cand = (inter > 0) & ~crowd[:, None] & (gt_cats_a[:, None] == pred_cats_a[None, :])
        gi, pj = np.nonzero(cand)
        if gi.size:
            union = pred_areas[pj] + gt_areas[gi] - inter[gi, pj] - pred_void[pj]
            iou = inter[gi, pj] / union
            ok = iou > 0.5
            gi, pj, iou = gi[ok], pj[ok], iou[ok]
            # Accumulate in panopticapi's order (sorted by GT id, then prediction id) so float sums match.
            order = np.lexsort((np.asarray(pred_ids, dtype=np.int64)[pj], np.asarray(gt_ids, dtype=np.int64)[gi]))
            for k in order:
                acc = stats._get(int(gt_cats_a[gi[k]]))
                acc[1] += 1
                acc[0] += float(iou[k])
            gt_matched[gi] = True
            pred_matched[pj] = True
    crowd_row: dict[int, int] = {}
    for i in range(g):
        if gt_matched[i]:
            continue
        if crowd[i]:
            crowd_row[int(gt_cats_a[i])] = i  # the last crowd segment of a category wins
            continue
        stats._get(int(gt_cats_a[i]))[3] += 1
    for j in range(p):
        if pred_matched[j]:
            continue
        cat = int(pred_cats_a[j])
        ignored = int(pred_void[j])
        if cat in crowd_row:
            ignored += int(hist[crowd_row[cat], j])
        if ignored / pred_areas[j] > 0.5:
            continue
        stats._get(cat)[2] += 1


def _runs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encode a pair of flat id maps jointly: (gt value, pred value, length) per run.

    Panoptic maps are piecewise constant, so a 480x640 image has a few thousand joint runs; everything
    after this single pass over the pixels works on the runs only.
    """
    n = gt.size
    if n == 0:
        return gt[:0], pred[:0], np.zeros(0, dtype=np.int64)
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(gt[1:], gt[:-1], out=change[1:])
    change[1:] |= pred[1:] != pred[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=n)
    return gt[starts], pred[starts], lengths


def _image_pq(gt_map: np.ndarray, gt_segments: Sequence[dict], pred_map: np.ndarray, pred_segments: Sequence[dict],
              categories: dict | set, where: str, stats: PQStats, id_mask=None) -> None:
    """Check one image's prediction against its segments list and accumulate its PQ statistics.

    ``gt_map``/``pred_map``: integer id maps of the same shape (or flat arrays of equal size);
    ``id_mask``: applied to the run values (0xFFFFFF for raw RGBX words); ``where`` names the image
    (and files) in errors.
    """
    if gt_map.shape != pred_map.shape:
        raise DataError(f"{where}: prediction size {pred_map.shape} differs from ground-truth size {gt_map.shape}")
    pred_ids = [int(s["id"]) for s in pred_segments]
    if len(set(pred_ids)) != len(pred_ids):
        raise DataError(f"{where}: duplicate segment ids in the prediction JSON: {pred_ids}")
    gt_ids = [int(s["id"]) for s in gt_segments]
    if len(set(gt_ids)) != len(gt_ids) or VOID in gt_ids:
        raise DataError(f"{where}: ground-truth segment ids must be unique and non-zero (0 = VOID), got {gt_ids}")
    for s in pred_segments:
        if s["category_id"] not in categories:
            raise DataError(f"{where}: segment with id {s['id']} has unknown category_id {s['category_id']}")
    g, p = len(gt_ids), len(pred_ids)
    gt_run, pred_run, lengths = _runs(np.asarray(gt_map).reshape(-1), np.asarray(pred_map).reshape(-1))
    if id_mask is not None:
        gt_run = gt_run & id_mask
        pred_run = pred_run & id_mask
    gi = _dense_index(gt_run, gt_ids, VOID)
    pj = _dense_index(pred_run, pred_ids, VOID)
    hist = np.bincount(gi * (p + 2) + pj, weights=lengths, minlength=(g + 2) * (p + 2))
    hist = hist.astype(np.int64).reshape(g + 2, p + 2)
    if hist[:, p + 1].any():
        unknown = np.unique(pred_run[pj == p + 1])[:10].tolist()
        raise DataError(f"{where}: segment(s) with id {unknown} present in the PNG and not in the JSON")
    pred_areas = hist[:, :p].sum(axis=0)
    if p and (pred_areas == 0).any():
        missing = [pred_ids[j] for j in np.nonzero(pred_areas == 0)[0]]
        raise DataError(f"{where}: segment(s) with id {missing} present in the JSON and not in the PNG")
    gt_png_areas = hist[:g, :].sum(axis=1)
    gt_areas = np.array([s["area"] if "area" in s else gt_png_areas[i] for i, s in enumerate(gt_segments)], dtype=np.int64)
    match_segments(hist, gt_ids, [s["category_id"] for s in gt_segments], [s.get("iscrowd", 0) == 1 for s in gt_segments],
                   gt_areas, pred_ids, [s["category_id"] for s in pred_segments], pred_areas, stats)


def _pq_worker(args) -> list[PQStats]:
    """Per-image statistics of a chunk of (gt_ann, pred_ann) pairs, in order."""
    pairs, gt_folder, pred_folder, categories = args
    out = []
    for gt_ann, pred_ann in pairs:
        gt_path = os.path.join(gt_folder, gt_ann["file_name"])
        pred_path = os.path.join(pred_folder, pred_ann["file_name"])
        where = f"image id {gt_ann['image_id']!r} (prediction {pred_path}, ground truth {gt_path})"
        stats = PQStats()
        gt_words, gt_size = _decode_rgbx(gt_path)
        pred_words, pred_size = _decode_rgbx(pred_path)
        if gt_size != pred_size:
            raise DataError(f"{where}: prediction size {pred_size} differs from ground-truth size {gt_size}")
        _image_pq(gt_words, gt_ann["segments_info"], pred_words, pred_ann["segments_info"], categories, where, stats,
                  id_mask=np.uint32(0xFFFFFF))
        out.append(stats)
    return out


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} JSON not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} JSON {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "annotations" not in data:
        raise DataError(f"{what} JSON {path} has no 'annotations' list")
    return data


def default_num_workers() -> int:
    """Processes for pq_compute: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: str | None = None, pred_folder: str | None = None,
               *, num_workers: int | None = None) -> dict:
    """PQ of a prediction folder + JSON against the GT (drop-in for ``panopticapi.evaluation.pq_compute``).

    Folders default to the JSON path without ``.json``, as in panopticapi. Every GT image needs a
    prediction (matched by ``image_id``). Raises DataError naming the file / image / segment for
    missing files, unknown categories and PNG/JSON mismatches. Returns panopticapi's result dict.
    """
    gt_json = _load_json(gt_json_file, "ground-truth")
    pred_json = _load_json(pred_json_file, "prediction")
    gt_folder = gt_json_file.replace(".json", "") if gt_folder is None else gt_folder
    pred_folder = pred_json_file.replace(".json", "") if pred_folder is None else pred_folder
    if "categories" not in gt_json:
        raise DataError(f"ground-truth JSON {gt_json_file} has no 'categories' list")
    categories = {el["id"]: el for el in gt_json["categories"]}
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not os.path.isdir(folder):
            raise DataError(f"{what} segmentation folder {folder} does not exist")
    pred_by_image = {el["image_id"]: el for el in pred_json["annotations"]}
    pairs = []
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_image:
            raise DataError(f"{pred_json_file}: no prediction for the image with id {image_id!r}")
        pred_ann = pred_by_image[image_id]
        for s in pred_ann.get("segments_info", []):
            if s.get("category_id") not in categories:
                raise DataError(f"{pred_json_file}: image id {image_id!r}, segment with id {s.get('id')} has unknown "
                                f"category_id {s.get('category_id')}")
        for ann, folder in ((gt_ann, gt_folder), (pred_ann, pred_folder)):
            path = os.path.join(folder, ann["file_name"])
            if not os.path.isfile(path):
                raise DataError(f"panoptic PNG not found: {path} (image id {image_id!r})")
        pairs.append((gt_ann, pred_ann))
    stats = _run_pool(pairs, gt_folder, pred_folder, categories, num_workers)
    return stats.results(categories)


def _run_pool(pairs: list, gt_folder: str, pred_folder: str, categories: dict, num_workers: int | None) -> PQStats:
    workers = default_num_workers() if num_workers is None else max(1, int(num_workers))
    workers = min(workers, max(1, len(pairs)))
    # Contiguous chunks, one per process, summed in order (panopticapi's split).
    chunks = [list(c) for c in _split(pairs, workers)]
    # Per-image statistics are added in image order, so the float sums (and thus the results) do not
    # depend on the number of processes and equal PanopticEvaluator's bit for bit.
    total = PQStats()
    if workers == 1:
        per_image = [_pq_worker((pairs, gt_folder, pred_folder, categories))]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(processes=workers) as pool:
            per_image = pool.map(_pq_worker, [(c, gt_folder, pred_folder, categories) for c in chunks], chunksize=1)
    for chunk in per_image:
        for stats in chunk:
            total += stats
    return total


def _split(items: list, n: int) -> Iterable[list]:
    base, extra = divmod(len(items), n)
    start = 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        yield items[start:start + size]
        start += size


def pq_summary(results: dict) -> dict[str, float]:
    """detectron2-style flat metrics (x100) from a panopticapi result dict: PQ, SQ, RQ, PQ_th, ..., RQ_st."""
    out = {}
    for key, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for m in ("pq", "sq", "rq"):
            out[f"{m.upper()}{suffix}"] = 100.0 * results[key][m]
    return out


def _as_id_map(x, what: str) -> np.ndarray:
    arr = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
        return rgb2id(arr)
    if arr.ndim != 2:
        raise DataError(f"{what} must be an [H, W] id map or [H, W, 3] uint8 colours, got shape {arr.shape}")
    return arr


class PanopticEvaluator:
    """In-memory PQ with pq_compute's rules; predictions are never written to PNG.

    Args:
        categories: list of ``{"id", "isthing", ("name")}`` (or a dict id -> such dict); segment
            ``category_id`` values in GT and predictions use these ids.

    ``process(gt_ids, gt_segments, pred_ids, pred_segments, image_id=None)``: id maps ``[H, W]`` int
    (or ``[H, W, 3]`` uint8 colours) with 0 = VOID; GT segments ``{"id", "category_id", "iscrowd",
    ("area")}``, predicted ``{"id", "category_id", ...}`` (e.g. the ``panoptic_seg`` of the ``general``
    post-processor). ``evaluate()`` -> ``{"PQ","SQ","RQ","PQ_th","SQ_th","RQ_th","PQ_st","SQ_st","RQ_st"}``
    (x100); ``results()`` -> panopticapi's dict (fractions, with ``per_class``).
    """

    def __init__(self, categories):
        if isinstance(categories, dict):
            categories = list(categories.values())
        self.categories = {int(c["id"]): dict(c) for c in categories}
        if not self.categories:
            raise ValueError("PanopticEvaluator needs at least one category")
        self.reset()

    def reset(self) -> None:
        self.stats = PQStats()
        self._count = 0

    def process(self, gt_ids, gt_segments: Sequence[dict], pred_ids, pred_segments: Sequence[dict], image_id=None) -> None:
        where = f"image {image_id!r}" if image_id is not None else f"image #{self._count} of this evaluation"
        local = PQStats()  # per-image sums first, as pq_compute does
        _image_pq(_as_id_map(gt_ids, "gt_ids"), list(gt_segments), _as_id_map(pred_ids, "pred_ids"), list(pred_segments),
                  self.categories, where, local)
        self.stats += local
        self._count += 1

    def merge(self, other: "PanopticEvaluator") -> None:
        """Add another evaluator's statistics (e.g. gathered from other processes)."""
        self.stats += other.stats

    def results(self) -> dict:
        return self.stats.results(self.categories)

    def evaluate(self) -> dict[str, float]:
        return pq_summary(self.results())
