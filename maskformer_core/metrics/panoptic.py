"""Panoptic quality (PQ/SQ/RQ): ``pq_compute`` for COCO panoptic files and the in-memory ``PanopticEvaluator``.

The protocol is the COCO panoptic API's (cocodataset/panopticapi ``panopticapi/evaluation.py``, which
facebookresearch/MaskFormer calls through detectron2's ``COCOPanopticEvaluator``; paper Sec. 4,
"Evaluation metrics": PQ of Kirillov et al.). Its rules are implemented once, in ``match_images``
(array operations over a batch of images; ``match_segments`` is a batch of one), and shared by the
in-memory evaluator, the numpy file engine and PQ^St (``pq_stuff.py``):

- ids come from PNGs with id = R + 256 G + 256^2 B; 0 = VOID (a predicted segment that lists id 0 owns
  those pixels, as in hotcoco; panopticapi rejects such a prediction; a GT segment may not use it);
- a (GT, prediction) pair of the same category with a non-crowd GT is a true positive when IoU > 0.5,
  where the union leaves out the prediction's overlap with VOID; GT areas come from the GT JSON ``area``
  field when present (panopticapi reads only that), else from the PNG;
- unmatched non-crowd GT segments are false negatives; an unmatched prediction is a false positive
  unless more than half of it lies on VOID plus the crowd region of its category (the last crowd
  segment of a category in the JSON wins, as panopticapi's dict overwrite does);
- per category PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2);
  All/Things/Stuff average over the categories with TP + FP + FN > 0 (``n``).

``pq_compute`` (files): both JSONs are read (orjson) and checked here (an image, a segment id within an
image or a category listed twice; unknown categories; a GT image without prediction; missing PNGs), each
error naming the file and the value. hotcoco does none of these checks (it keeps the last duplicate), so
they stay. The PNG work is delegated to hotcoco (``engine="hotcoco"``, the default; Rust,
``hotcoco.panoptic.PanopticEval``), which implements panopticapi's pq_compute and is faster than any
numpy PNG path (``benchmarks/pq_benchmark.py``). With integer image ids hotcoco reads the two files itself
and starts before the checks, on its own threads; a failed check waits for it, discards its result and
raises the check's error. ``engine="numpy"`` evaluates the files with this module's reader and rules
instead (a process pool); the tests hold both to hotcoco.

In-memory (training): the passes over the pixels are compiled (numba, ``_pixels.py``). With the GT
prepared once (``PanopticGT``: dense uint8 indices, kept across evaluations of a validation set) and the
post-processors' small predicted ids, one kernel counts the GT x prediction histogram straight from the
two maps, one addition per joint run (~10^4 for a COCO image); otherwise a kernel finds the joint runs
and the run values are mapped to dense segment indices and counted by one weighted ``np.bincount``. The
passes run ``POOL_CHUNK`` images at a time on a thread pool and the caller's thread (the kernels release
the GIL), and the images are matched ``MATCH_BATCH`` at a time by ``match_images`` (no Python loop over
segments or images), their sums added in image order.

Results use panopticapi's structure: ``{"All"|"Things"|"Stuff": {"pq","sq","rq","n"}, "per_class":
{category_id: {"pq","sq","rq"}}}`` as fractions in [0, 1]. Where panopticapi divides by zero (a group
without any category with TP + FP + FN > 0) the group is 0.0 with n = 0; a category with TP + FP + FN = 0
is 0.0 in ``per_class`` (panopticapi's value; hotcoco's -1 sentinel is mapped to it).
"""
from __future__ import annotations

import multiprocessing
import os
import re
import threading
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from operator import itemgetter
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

from maskformer_core.data.formats import first_duplicate
from maskformer_core.errors import DataError

try:
    from orjson import loads as _json_loads
except ImportError:  # orjson is a dependency (pyproject.toml); json gives the same dicts, slower
    from json import loads as _json_loads

VOID = 0
OFFSET = 256 * 256 * 256  # panopticapi's id offset; ids are 24-bit colours
ENGINES = ("hotcoco", "numpy")
_INT = {int}  # segment ids read_annotations takes without a closer look
_GET_ID, _GET_CATEGORY = itemgetter("id"), itemgetter("category_id")
POOL_CHUNK = 16  # images per task of PanopticEvaluator's thread pool (fewer hand-overs of the GIL)
MATCH_BATCH = 64  # images matched at once by PanopticEvaluator (match_images); any size gives the same numbers


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


_TABLE_BITS = 24  # panoptic PNG ids are 24-bit colours


class _IdTable:
    """A reusable id -> segment index table for ids below 2^24 and up to 253 segments: a zeroed 16 MiB
    uint8 array (the OS provides only the pages of the ids written, so a short evaluation stays cheap);
    each image sets the entries of its ids (index + 1; 0 = not a segment of this image) and resets them."""

    def __init__(self) -> None:
        self.table: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"table": None}  # scratch space: never pickled (evaluators are gathered across processes)

    def index(self, values: np.ndarray, seg_ids: list, void: int) -> np.ndarray:
        """uint8 indices of ``values``: i for ``seg_ids[i]``, S for ``void``, S + 1 for any other id."""
        if self.table is None:
            self.table = np.zeros(1 << _TABLE_BITS, dtype=np.uint8)
        t = self.table
        s = len(seg_ids)
        try:
            if void not in seg_ids:
                t[void] = s + 1
            t[seg_ids] = np.arange(1, s + 1, dtype=np.uint8)
            idx = t[values]
        finally:
            t[void] = 0
            t[seg_ids] = 0
        idx -= 1  # entry 0 (an id no segment lists) wraps to 255 ...
        np.minimum(idx, s + 1, out=idx)  # ... and becomes S + 1
        return idx


class _Workspace:
    """Per-thread scratch (the id table, the kernels' flags and run-start buffers) for one evaluator.
    Never pickled."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    @property
    def table(self) -> _IdTable:
        t = getattr(self._local, "table", None)
        if t is None:
            t = self._local.table = _IdTable()
        return t

    @property
    def flags(self) -> np.ndarray:
        f = getattr(self._local, "flags", None)
        if f is None:
            f = self._local.flags = _kernels().new_flags()
        return f

    def starts(self, n: int) -> np.ndarray:
        """A reusable intp buffer of at least n elements for the run starts (fresh 2.4 MB arrays per image
        cost page faults that take as long as the pass that fills them)."""
        buf = getattr(self._local, "starts", None)
        if buf is None or buf.size < n:
            buf = self._local.starts = np.empty(max(n, 1), dtype=np.intp)
        return buf


def _kernels():
    """The compiled pixel passes (``_pixels``), imported on first use: numba takes ~0.4 s to import."""
    from maskformer_core.metrics import _pixels
    return _pixels


def _dense_index(ids: np.ndarray, seg_ids: Sequence[int], void: int, table: _IdTable | None = None) -> np.ndarray:
    """Dense indices of flat ids: i for ``seg_ids[i]``, S for ``void``, S + 1 for any other id.

    A segment may use the VOID id (DETR writes segment 0); its pixels then belong to the segment. Small
    ids (post-processor outputs 1..N) go through a direct lookup table, ids below 2^24 (PNG colours)
    through ``table`` when given, others through a binary search in the sorted known ids. DataError for
    ids outside 0..2^32-1.
    """
    seg_ids = list(seg_ids)
    ids = np.asarray(ids).reshape(-1)
    s = len(seg_ids)
    if not ids.size:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= 2**32:
        raise DataError(f"segment ids must be in 0..2^32-1, got range {lo}..{hi}")
    top = max(seg_ids + [void])
    if top < 4096:
        lut = np.full(top + 2, s + 1, dtype=np.int64)
        if void not in seg_ids:
            lut[void] = s
        lut[seg_ids] = np.arange(s)
        return lut[ids] if hi <= top + 1 else lut[np.minimum(ids, top + 1)]
    if table is not None and max(hi, top) < 2**_TABLE_BITS and s < 254:
        return table.index(ids, seg_ids, void)
    known = np.asarray(seg_ids + ([] if void in seg_ids else [void]), dtype=np.int64)
    order = np.argsort(known, kind="stable")
    ordered = known[order]
    pos = np.searchsorted(ordered, ids)
    np.minimum(pos, ordered.size - 1, out=pos)
    idx = order[pos]
    idx[ordered[pos] != ids] = s + 1
    return idx


class PQStats:
    """Per-category sums over a fixed category list (panopticapi's PQStat): ``iou``, ``tp``, ``fp``, ``fn``.

    ``categories``: ``{id: {"isthing", ...}}`` in output order; ``index(ids)`` maps category ids to the
    dense positions that ``match_segments`` accumulates into.
    """

    def __init__(self, categories: dict) -> None:
        self.categories = categories
        self.cat_ids = np.asarray(list(categories), dtype=np.int64)
        self.position = {cat: k for k, cat in enumerate(categories)}
        c = len(self.cat_ids)
        self.iou = np.zeros(c, dtype=np.float64)
        self.counts = np.zeros((3, c), dtype=np.int64)  # rows: TP, FP, FN
        self.tp, self.fp, self.fn = self.counts

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.tp, self.fp, self.fn = self.counts  # views again after unpickling

    def empty_like(self) -> "PQStats":
        """Zero sums over the same categories (one image's statistics), without rebuilding the index."""
        out = PQStats.__new__(PQStats)
        out.categories, out.cat_ids, out.position = self.categories, self.cat_ids, self.position
        out.iou = np.zeros_like(self.iou)
        out.counts = np.zeros_like(self.counts)
        out.tp, out.fp, out.fn = out.counts
        return out

    def index(self, cat_ids: Iterable, where: str) -> np.ndarray:
        """Dense positions of ``cat_ids``; DataError naming ``where`` and the first unknown category id."""
        try:
            return np.array([self.position[c] for c in cat_ids], dtype=np.intp)
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: unknown category_id {exc.args[0]!r} "
                            f"(not among the {len(self.cat_ids)} categories)") from None

    def __iadd__(self, other: "PQStats") -> "PQStats":
        self.iou += other.iou
        self.counts += other.counts
        return self

    @property
    def per_cat(self) -> dict[int, list]:
        """``{category_id: [iou_sum, tp, fp, fn]}`` for the categories seen (TP + FP + FN > 0)."""
        seen = np.flatnonzero(self.tp + self.fp + self.fn)
        return {int(self.cat_ids[k]): [float(self.iou[k]), int(self.tp[k]), int(self.fp[k]), int(self.fn[k])]
                for k in seen}

    def average(self, isthing: bool | None) -> tuple[dict, dict]:
        """(``{"pq","sq","rq","n"}``, per-class dict) over the categories filtered by isthing."""
        pq = sq = rq = 0.0
        n = 0
        per_class: dict = {}
        for k, (cat_id, info) in enumerate(self.categories.items()):
            if isthing is not None and (info.get("isthing", 0) == 1) != isthing:
                continue
            iou, tp, fp, fn = float(self.iou[k]), int(self.tp[k]), int(self.fp[k]), int(self.fn[k])
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

    def results(self) -> dict:
        """panopticapi's result dict (All, per_class, Things, Stuff)."""
        out: dict = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            out[name], per_class = self.average(isthing)
            if name == "All":
                out["per_class"] = per_class
        return out


def match_segments(hist: np.ndarray, gt_cat: np.ndarray, gt_crowd: np.ndarray, gt_area: np.ndarray,
                   pred_cat: np.ndarray, pred_area: np.ndarray, stats: PQStats) -> None:
    """panopticapi's per-image matching from a joint histogram, added to ``stats`` (one image of
    ``match_images``, the one copy of the rules).

    Args:
        hist: ``[G + 2, P + 2]`` int pixel counts; rows = GT segments (JSON order), GT VOID (row G) and
            GT ids absent from the JSON (row G + 1); columns = predicted segments, VOID, unknown.
        gt_cat, pred_cat: dense category positions in ``stats`` (``stats.index``); gt_crowd: bool [G];
        gt_area, pred_area: int [G], [P] (GT areas from the JSON where given).
    """
    iou, counts = match_images([(hist, gt_cat, gt_crowd, gt_area, pred_cat, pred_area)], len(stats.cat_ids))
    stats.iou += iou[0]
    stats.counts += counts[0]


def match_images(images: Sequence[tuple], num_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """panopticapi's per-image matching for a batch of images at once: per-image sums ``(iou [N, C] float64,
    counts [N, 3, C] int64)`` (counts rows: TP, FP, FN), for ``PQStats`` to add in image order.

    ``images``: ``(hist, gt_cat, gt_crowd, gt_area, pred_cat, pred_area)`` per image, as ``match_segments``
    takes them. The images' GT x prediction intersections are gathered into one list of (GT segment,
    predicted segment, pixels) entries over all images (segment indices offset per image), and every rule
    is one array operation on it; an image's IoU sum per category adds its TPs in (GT, prediction) order,
    as panopticapi's loop does, so the numbers do not depend on how images are batched.
    """
    c = int(num_categories)
    n = len(images)
    if not n:
        return np.zeros((0, c)), np.zeros((0, 3, c), dtype=np.int64)
    hists, g_cat, g_crowd, g_area, p_cat, p_area = zip(*images)
    g_n = np.fromiter(map(len, g_cat), dtype=np.intp, count=n)
    p_n = np.fromiter(map(len, p_cat), dtype=np.intp, count=n)
    width = p_n + 2
    # every image's [G + 2, P + 2] histogram, flat and one after the other; its nonzero entries, located
    size = (g_n + 2) * width
    start = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(size, out=start[1:])
    flat = np.concatenate([np.asarray(h, dtype=np.int64).reshape(-1) for h in hists])
    nz = np.flatnonzero(flat)
    img = np.repeat(np.arange(n), np.diff(np.searchsorted(nz, start)))
    r, k = np.divmod(nz - start[img], width[img])
    v = flat[nz]
    seg = (r <= g_n[img]) & (k < p_n[img])  # GT segments and GT VOID x predicted segments
    r, k, v, img = r[seg], k[seg], v[seg], img[seg]
    row0 = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(g_n, out=row0[1:])
    col0 = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(p_n, out=col0[1:])
    k = k + col0[img]
    void = r == g_n[img]  # the prediction's overlap with GT VOID
    pred_void = np.bincount(k[void], weights=v[void], minlength=col0[n]).astype(np.int64)
    r, k, v = r[~void] + row0[img[~void]], k[~void], v[~void]
    gt_img = np.repeat(np.arange(n), g_n)
    pred_img = np.repeat(np.arange(n), p_n)
    gt_cat = np.concatenate(g_cat).astype(np.intp, copy=False)
    pred_cat = np.concatenate(p_cat).astype(np.intp, copy=False)
    gt_crowd = np.concatenate(g_crowd).astype(bool, copy=False)
    gt_area = np.concatenate(g_area).astype(np.int64, copy=False)
    pred_area = np.concatenate(p_area).astype(np.int64, copy=False)
    # a (GT, prediction) pair is a candidate when both have the same category and the GT is not crowd
    same = gt_cat[r] == pred_cat[k]
    cand = same & ~gt_crowd[r]
    ri, ki, both = r[cand], k[cand], v[cand]
    # IoU with the union leaving out the prediction's overlap with VOID; TP when IoU > 0.5 (unique)
    iou = both / (pred_area[ki] + gt_area[ri] - both - pred_void[ki])
    ok = iou > 0.5
    ri, ki, iou = ri[ok], ki[ok], iou[ok]
    gt_unmatched = ~gt_crowd  # crowd segments are never matched and never false negatives
    gt_unmatched[ri] = False
    pred_unmatched = np.ones(len(pred_cat), dtype=bool)
    pred_unmatched[ki] = False
    # VOID plus the last crowd segment of the prediction's category in its image (panopticapi's dict
    # overwrite): reverse the crowd segments, keep the first occurrence per (image, category)
    ignored = pred_void.copy()
    crowd = np.flatnonzero(gt_crowd)
    if crowd.size and r.size:
        rev = crowd[::-1]
        _, first = np.unique(gt_img[rev] * c + gt_cat[rev], return_index=True)
        last_crowd = np.zeros(len(gt_cat), dtype=bool)
        last_crowd[rev[first]] = True
        m = same & last_crowd[r]
        ignored[k[m]] += v[m]  # one such GT segment per predicted segment: no repeated index
    # an unmatched prediction is a FP unless ignored / area > 0.5 (exact in integers: pixel counts)
    fp = pred_unmatched & (2 * ignored <= pred_area)
    tp_img = gt_img[ri]
    iou_sums = np.bincount(tp_img * c + gt_cat[ri], weights=iou, minlength=n * c).reshape(n, c)
    keys = np.concatenate([tp_img * (3 * c) + gt_cat[ri],
                           pred_img[fp] * (3 * c) + c + pred_cat[fp],
                           gt_img[gt_unmatched] * (3 * c) + 2 * c + gt_cat[gt_unmatched]])
    counts = np.bincount(keys, minlength=n * 3 * c).reshape(n, 3, c)
    return iou_sums, counts.astype(np.int64, copy=False)


def _runs(gt: np.ndarray, pred: np.ndarray,
          work: _Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encode a pair of flat id maps jointly: (gt value, pred value, length) per run.

    Panoptic maps are piecewise constant, so a 480x640 image has ~10^4 joint runs; everything after this
    pass over the pixels (``_pixels.run_starts``) works on the runs only.
    """
    n = gt.size
    if n == 0:
        return gt[:0], pred[:0], np.zeros(0, dtype=np.int64)
    kernels = _kernels()
    work = _Workspace() if work is None else work
    buf = work.starts(n)
    starts = buf[:kernels.run_starts(gt, pred, work.flags, buf)]
    lengths = np.empty(starts.size, dtype=np.int64)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = n - starts[-1]
    return gt[starts], pred[starts], lengths


def _segment_fields(segments: Sequence[dict], where: str, what: str, gt: bool) -> tuple:
    """One pass over a segments list: (ids, category ids[, crowd flags, JSON areas or -1]); DataError
    naming ``where`` for a missing key or a non-integer id."""
    try:
        if gt:
            rows = [(int(s["id"]), s["category_id"], s.get("iscrowd", 0) == 1, s.get("area", -1)) for s in segments]
            return tuple(list(col) for col in zip(*rows)) if rows else ([], [], [], [])
        return [int(s["id"]) for s in segments], [s["category_id"] for s in segments]
    except KeyError as exc:
        raise DataError(f"{where}: a {what} segment has no {exc.args[0]!r} key") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: a {what} segment has a non-integer id ({exc})") from None


def _check_segment_ids(ids: list, where: str, what: str) -> None:
    if len(set(ids)) != len(ids):
        dup = [i for i, k in Counter(ids).items() if k > 1]
        raise DataError(f"{where}: the {what} segments list segment id {dup[0]} twice")


def _gt_fields(gt_segments: Sequence[dict], where: str) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Checked GT segment fields: (ids, category ids, crowd flags bool [G], JSON areas int64 [G], -1 = none)."""
    gt_ids, gt_cats, gt_crowd, gt_area = _segment_fields(gt_segments, where, "ground-truth", gt=True)
    _check_segment_ids(gt_ids, where, "ground-truth")
    if VOID in gt_ids:
        raise DataError(f"{where}: ground-truth segment id 0 is VOID (0 = unlabeled), not a segment")
    g = len(gt_ids)
    return gt_ids, gt_cats, np.array(gt_crowd, dtype=bool).reshape(g), np.array(gt_area, dtype=np.int64).reshape(g)


def _fields(gt_segments: Sequence[dict] | None, pred_segments: Sequence[dict], stats: PQStats,
            where: str) -> tuple[tuple | None, tuple]:
    """One image's checked segment fields: GT ``(ids, category positions, crowd, JSON areas or -1)`` (None
    when ``gt_segments`` is None: a ``PanopticGT`` holds them) and predicted ``(ids, category positions)``;
    DataError naming ``where`` (duplicate or VOID ids, missing keys, unknown categories)."""
    gt = None
    if gt_segments is not None:
        gt_ids, gt_cats, gt_crowd, gt_area = _gt_fields(gt_segments, where)
    pred_ids, pred_cats = _segment_fields(pred_segments, where, "predicted", gt=False)
    _check_segment_ids(pred_ids, where, "prediction")
    if gt_segments is not None:
        gt = (gt_ids, stats.index(gt_cats, f"{where}, ground truth"), gt_crowd, gt_area)
    return gt, (pred_ids, stats.index(pred_cats, f"{where}, prediction"))


def _image_pq(gt_map: np.ndarray, gt_fields: tuple, pred_map: np.ndarray, pred_fields: tuple, where: str,
              id_mask=None, work: _Workspace | None = None) -> tuple:
    """Check one image's prediction against its segments and return its ``match_images`` entry.

    ``gt_map``/``pred_map``: integer id maps of the same shape (or flat arrays of equal size);
    ``gt_fields``/``pred_fields``: from ``_fields``; ``id_mask``: applied to the run values (0xFFFFFF for
    raw RGBX words); ``where`` names the image (and files) in errors.
    """
    if gt_map.shape != pred_map.shape:
        raise DataError(f"{where}: prediction size {pred_map.shape} differs from ground-truth size {gt_map.shape}")
    gt_ids, gt_cat, gt_crowd, gt_area = gt_fields
    gt_flat, pred_flat = np.asarray(gt_map).reshape(-1), np.asarray(pred_map).reshape(-1)
    pred_ids = pred_fields[0]
    if id_mask is None and _small_ids(pred_ids) and gt_flat.dtype.kind in "iu" and pred_flat.dtype.kind in "iu":
        # the histogram straight from the pixels: each GT run's id looked up among the image's ids
        order = np.argsort(gt_ids + [VOID], kind="stable")
        keys = np.asarray(gt_ids + [VOID], dtype=np.int64)[order]
        rows = np.append(order, len(gt_ids) + 1).astype(np.intp)  # row G is VOID (its list position), G + 1 the rest
        hist = _pixel_hist(gt_flat, pred_flat, keys, rows, len(gt_ids), pred_ids, work or _Workspace())
        if hist is not None:
            return _hist_entry(hist, gt_cat, gt_crowd, gt_area, pred_fields, where, pred_flat)
        _dense_index(gt_flat, gt_ids, VOID)  # a GT id outside 0..2^32-1: its DataError
    gt_run, pred_run, lengths = _runs(gt_flat, pred_flat, work)
    table = None if work is None else work.table
    if id_mask is not None:
        gt_run = gt_run & id_mask
        pred_run = pred_run & id_mask
    gi = _dense_index(gt_run, gt_ids, VOID, table)
    return _runs_image(gi, pred_run, lengths, gt_cat, gt_crowd, gt_area, pred_fields, where, table)


def _runs_image(gi: np.ndarray, pred_run: np.ndarray, lengths: np.ndarray, gt_cat: np.ndarray, gt_crowd: np.ndarray,
                gt_area: np.ndarray, pred_fields: tuple, where: str, table: _IdTable | None = None) -> tuple:
    """The part of ``_image_pq`` after the pass over the pixels: the joint histogram of the runs, its
    checks, and the image's ``match_images`` entry.

    ``gi``: dense GT index per joint run (0..G-1 segments, G = VOID, G + 1 = ids the JSON does not list);
    ``pred_run``: the predicted id per run; ``lengths``: pixels per run; ``gt_cat``: category positions;
    ``gt_area``: JSON areas, -1 where the PNG's area is to be used.
    """
    pred_ids = pred_fields[0]
    g, p = len(gt_cat), len(pred_ids)
    if _small_ids(pred_ids):  # counted over the raw ids (no per-run search)
        cols = _columns(pred_ids)
        pj = cols[np.where((pred_run < 0) | (pred_run >= cols.size - 1), cols.size - 1, pred_run)]
    else:
        pj = _dense_index(pred_run, pred_ids, VOID, table)
    key = np.multiply(gi, p + 2, dtype=np.intp)
    key += pj
    hist = np.bincount(key, weights=lengths, minlength=(g + 2) * (p + 2)).astype(np.int64).reshape(g + 2, p + 2)
    return _hist_entry(hist, gt_cat, gt_crowd, gt_area, pred_fields, where, pred_run)


_NO_KEYS, _NO_ROWS = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.intp)  # joint_hist: GT values are rows
SMALL_ID = 4096  # predicted ids below this (the post-processors' 1..N) are histogram columns as they are


def _small_ids(pred_ids: list) -> bool:
    return not pred_ids or (min(pred_ids) >= 0 and max(pred_ids) < SMALL_ID)


def _pixel_hist(gt_flat: np.ndarray, pred_flat: np.ndarray, keys: np.ndarray, rows: np.ndarray, g: int,
                pred_ids: list, work: _Workspace) -> np.ndarray | None:
    """The ``[G + 2, P + 2]`` joint histogram of a GT map and small predicted ids, counted from the pixels by
    ``_pixels.joint_hist`` (GT values are rows when ``rows`` is empty, else looked up in ``keys``); None for a
    GT value outside 0..2^32-1."""
    p = len(pred_ids)
    hist = np.zeros((g + 2, p + 2), dtype=np.int64)
    ok = _kernels().joint_hist(gt_flat, pred_flat, keys, rows, _columns(pred_ids), p + 2, work.flags, hist.reshape(-1))
    return hist if ok else None


def _columns(pred_ids: list) -> np.ndarray:
    """The column table of the kernels (``_pixels._col``) for small predicted ids: entry v is the column of
    id v in the ``[G + 2, P + 2]`` histogram (j for the j-th listed segment, P for VOID, P + 1 for ids no
    segment lists); the last entry, P + 1, is the column of every id above the listed ones."""
    p = len(pred_ids)
    cols = np.full(max(pred_ids, default=VOID) + 2, p + 1, dtype=np.intp)
    cols[VOID] = p  # ... unless a segment lists id 0 (it owns those pixels, as in hotcoco)
    cols[pred_ids] = np.arange(p)
    return cols


def _hist_entry(hist: np.ndarray, gt_cat: np.ndarray, gt_crowd: np.ndarray, gt_area: np.ndarray, pred_fields: tuple,
                where: str, pred_values: np.ndarray) -> tuple:
    """Check an image's ``[G + 2, P + 2]`` joint histogram against the predicted segments and return its
    ``match_images`` entry; ``pred_values`` (the predicted ids per run or per pixel) names unknown ids in
    the error."""
    pred_ids, pred_cat = pred_fields
    g, p = len(gt_cat), len(pred_ids)
    if hist[:, p + 1].any():
        unknown = np.setdiff1d(pred_values, pred_ids + [VOID])[:10].tolist()
        raise DataError(f"{where}: predicted segment(s) {unknown} in the PNG but not in segments_info")
    pred_area = hist[:, :p].sum(axis=0)
    if p and (pred_area == 0).any():
        missing = [pred_ids[j] for j in np.flatnonzero(pred_area == 0)]
        raise DataError(f"{where}: predicted segment(s) {missing} in segments_info but not in the PNG")
    from_png = gt_area < 0  # no JSON area: the PNG's
    if from_png.any():
        gt_area = gt_area.copy()
        gt_area[from_png] = hist[:g].sum(axis=1)[from_png]
    return hist, gt_cat, gt_crowd, gt_area, pred_cat, pred_area


class PanopticGT:
    """One image's ground truth, prepared once for repeated in-memory evaluation (``PanopticEvaluator.prepare_gt``).

    The validation set is evaluated many times during training; its id maps (24-bit colours, read as
    int64) and segments lists do not change. Prepared, an image is ``index``: a flat uint8 map (uint16
    above 254 segments) of dense indices, i for the i-th segment of the JSON, G for VOID and G + 1 for
    ids the JSON does not list; ``cats`` (category ids), ``crowd`` (bool [G]) and ``area`` (int64 [G], the
    JSON ``area`` or, without it, the PNG's). ``shape``: (H, W). About 300 kB for a 480x640 COCO image.
    """

    __slots__ = ("index", "shape", "cats", "crowd", "area")

    def __init__(self, gt_ids, gt_segments: Sequence[dict], where: str = "ground truth",
                 work: _Workspace | None = None) -> None:
        gt_map = _as_id_map(gt_ids, "gt_ids")
        ids, self.cats, self.crowd, area = _gt_fields(gt_segments, where)
        g = len(ids)
        dtype = np.uint8 if g + 2 <= 256 else np.uint16 if g + 2 <= 65536 else np.int32
        # the map's runs (~5x10^3 for a COCO image) are looked up, then expanded back to pixels
        values, _, lengths = _runs(gt_map.reshape(-1), gt_map.reshape(-1), work)
        dense = _dense_index(values, ids, VOID, None if work is None else work.table)
        self.index = np.repeat(dense.astype(dtype), lengths)
        self.index.flags.writeable = False
        self.shape = tuple(gt_map.shape)
        png_area = np.bincount(dense, weights=lengths, minlength=g + 2)[:g].astype(np.int64)
        self.area = np.where(area < 0, png_area, area)

    @property
    def nbytes(self) -> int:
        """Memory held by the prepared arrays (what a cache of prepared GT budgets for)."""
        return int(sum(np.asarray(a).nbytes for a in (self.index, self.cats, self.crowd, self.area)))


def _pq_worker(args) -> list[tuple]:
    """Per-image statistics ``(iou, counts)`` arrays of a chunk of (gt_ann, pred_ann) pairs, in order."""
    pairs, gt_folder, pred_folder, categories = args
    images = []
    work = _Workspace()
    stats = PQStats(categories)  # the category index only
    for gt_ann, pred_ann in pairs:
        gt_path = os.path.join(gt_folder, gt_ann["file_name"])
        pred_path = os.path.join(pred_folder, pred_ann["file_name"])
        where = f"image id {gt_ann['image_id']!r} (prediction {pred_path}, ground truth {gt_path})"
        gt_fields, pred_fields = _fields(gt_ann["segments_info"], pred_ann["segments_info"], stats, where)
        gt_words, gt_size = _decode_rgbx(gt_path)
        pred_words, pred_size = _decode_rgbx(pred_path)
        if gt_size != pred_size:
            raise DataError(f"{where}: prediction size {pred_size} differs from ground-truth size {gt_size}")
        images.append(_image_pq(gt_words, gt_fields, pred_words, pred_fields, where, id_mask=np.uint32(0xFFFFFF),
                                work=work))
    iou, counts = match_images(images, len(stats.cat_ids))
    return list(zip(iou, counts))


def _load_json(path: str, what: str) -> dict:
    """A panoptic JSON with orjson (about twice as fast as ``json`` on COCO-sized files; part of the
    file-based pq_compute's time); DataError naming the file when missing, invalid or without annotations."""
    try:
        with open(path, "rb") as f:
            data = _json_loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{what} JSON not found: {path}") from None
    except ValueError as exc:  # json.JSONDecodeError and orjson.JSONDecodeError are ValueErrors
        raise DataError(f"{what} JSON {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{what} JSON {path} has no 'annotations' list")
    return data


def read_categories(data: dict, path: str, required: bool = True) -> dict:
    """``{id: category}`` of a panoptic JSON in file order; DataError naming the file for a missing list,
    a category without ``id`` or a category id listed twice."""
    if "categories" not in data:
        if required:
            raise DataError(f"ground-truth JSON {path} has no 'categories' list")
        return {}
    cats = data["categories"]
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise DataError(f"{path}: 'categories' must be a list of objects with an 'id'")
    dup = first_duplicate(c["id"] for c in cats)
    if dup is not None:
        raise DataError(f"{path}: category id {dup!r} is listed twice in 'categories'")
    return {c["id"]: c for c in cats}


def read_annotations(data: dict, path: str, categories: dict) -> dict:
    """``{image_id: annotation}`` of a panoptic JSON in file order, checked: DataError naming the file and
    the value for an image listed twice, a segment id listed twice within an image, a missing key or a
    segment whose category_id is not among ``categories``."""
    out: dict = {}
    known = set(categories)
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotation #{k} is not an object")
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise DataError(f"{path}: annotation #{k} has no {key!r} key")
        image_id = ann["image_id"]
        try:
            hash(image_id)
        except TypeError:
            raise DataError(f"{path}: annotation #{k} has an image_id that is not a number or string: "
                            f"{image_id!r}") from None
        if image_id in out:
            raise DataError(f"{path}: image id {image_id!r} is listed twice in 'annotations'")
        segments = ann["segments_info"]
        if not isinstance(segments, list):
            raise DataError(f"{path}: image id {image_id!r}: 'segments_info' is not a list")
        try:  # the common case in C-level set operations; anything odd goes through the checks below
            ids = list(map(_GET_ID, segments))
            if (set(map(type, ids)) <= _INT and len(set(ids)) == len(ids)
                    and known.issuperset(map(_GET_CATEGORY, segments))):
                out[image_id] = ann
                continue
        except (KeyError, TypeError):
            pass
        ids, cats = _segment_fields(segments, f"{path}: image id {image_id!r}", "listed", gt=False)
        dup = first_duplicate(ids)
        if dup is not None:
            raise DataError(f"{path}: image id {image_id!r} lists segment id {dup} twice")
        for seg_id, cat in zip(ids, cats):
            if cat not in categories:
                raise DataError(f"{path}: image id {image_id!r}, segment with id {seg_id} has unknown "
                                f"category_id {cat}")
        out[image_id] = ann
    return out


def default_num_workers() -> int:
    """Processes for pq_compute: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: str | None = None, pred_folder: str | None = None,
               *, num_workers: int | None = None, engine: str = "hotcoco") -> dict:
    """PQ of a prediction folder + JSON against the GT (drop-in for ``panopticapi.evaluation.pq_compute``).

    Folders default to the JSON path without ``.json``, as in panopticapi. Every GT image needs a
    prediction (matched by ``image_id``, a number or a string); predictions of other images are ignored.
    Both JSONs are checked (see ``read_categories`` / ``read_annotations``) and a failed check is the
    error raised, before any result; with integer image ids hotcoco already reads (never writes) while
    they run. PNG/JSON mismatches raise DataError naming the image and files. ``engine``: ``hotcoco``
    (default; its own thread pool, one thread per core, ``RAYON_NUM_THREADS`` limits it) or ``numpy``
    (this module's reader and rules on ``num_workers`` processes, default: the usable cores). Returns
    panopticapi's result dict.
    """
    if engine not in ENGINES:
        raise ValueError(f"pq_compute: engine must be one of {ENGINES}, got {engine!r}")
    gt_folder = gt_json_file.replace(".json", "") if gt_folder is None else gt_folder
    pred_folder = pred_json_file.replace(".json", "") if pred_folder is None else pred_folder
    early = None
    if engine == "hotcoco" and os.path.isfile(gt_json_file) and os.path.isfile(pred_json_file):
        # hotcoco reads the two files itself (it takes them as they are when every image id is a
        # non-negative integer); it runs on its own threads while the JSONs are read and checked below. It
        # only reads; when a check fails its run is awaited and discarded and the check's DataError is
        # raised, so a bad input gives the same error as if the checks had come first.
        early = _HotcocoRun(gt_json_file, pred_json_file, gt_folder, pred_folder)
    try:
        gt_json = _load_json(gt_json_file, "ground-truth")
        pred_json = _load_json(pred_json_file, "prediction")
        pairs, categories = _checked_pairs(gt_json, pred_json, gt_json_file, pred_json_file, gt_folder, pred_folder)
    except BaseException:
        if early is not None:
            early.join()  # its result or error is discarded: the check's error is the one to report
        raise
    if early is not None:
        if _plain_image_ids(gt_json) and _plain_image_ids(pred_json):
            return _hotcoco_results(early, pairs, gt_folder, pred_folder, categories)
        early.join()  # string image ids: hotcoco could not take the files (its run is discarded)
    if engine == "hotcoco":  # some image id is not a non-negative integer: hotcoco gets renumbered dicts
        gt = {"categories": list(categories.values()),
              "annotations": [dict(g, image_id=i) for i, (g, _) in enumerate(pairs)]}
        pred = {"annotations": [dict(p, image_id=i) for i, (_, p) in enumerate(pairs)]}
        return _hotcoco_results(_HotcocoRun(gt, pred, gt_folder, pred_folder), pairs, gt_folder, pred_folder,
                                categories, renumbered=True)
    return _run_pool(pairs, gt_folder, pred_folder, categories, num_workers).results()


def _plain_image_ids(data: dict) -> bool:
    """Whether every annotation of a loaded panoptic JSON has a non-negative integer image_id (what hotcoco
    reads from a file; ``read_annotations`` checks the rest)."""
    try:
        return all(type(a["image_id"]) is int and a["image_id"] >= 0 for a in data["annotations"])
    except (KeyError, TypeError):
        return False


def _checked_pairs(gt_json: dict, pred_json: dict, gt_json_file: str, pred_json_file: str, gt_folder: str,
                   pred_folder: str) -> tuple[list, dict]:
    """(gt_ann, pred_ann) pairs in GT order and the GT categories, after every JSON and file check."""
    categories = read_categories(gt_json, gt_json_file)
    read_categories(pred_json, pred_json_file, required=False)
    gt_anns = read_annotations(gt_json, gt_json_file, categories)
    pred_anns = read_annotations(pred_json, pred_json_file, categories)
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not os.path.isdir(folder):
            raise DataError(f"{what} segmentation folder {folder} does not exist")
    listed = {folder: set(os.listdir(folder)) for folder in (gt_folder, pred_folder)}  # one call, not a stat per PNG
    pairs = []
    for image_id, gt_ann in gt_anns.items():
        if image_id not in pred_anns:
            raise DataError(f"{pred_json_file}: no prediction for the image with id {image_id!r}")
        pred_ann = pred_anns[image_id]
        for ann, folder in ((gt_ann, gt_folder), (pred_ann, pred_folder)):
            name = ann["file_name"]
            if not (name in listed[folder] or os.path.isfile(os.path.join(folder, name))):  # (names with a folder)
                raise DataError(f"panoptic PNG not found: {os.path.join(folder, name)} (image id {image_id!r})")
        pairs.append((gt_ann, pred_ann))
    return pairs, categories


class _HotcocoRun:
    """hotcoco's ``PanopticEval(gt, pred).evaluate()`` on a background thread (hotcoco releases the GIL and
    evaluates on its own thread pool, one thread per core; ``RAYON_NUM_THREADS`` limits it). ``gt``/``pred``:
    JSON paths or dicts."""

    def __init__(self, gt, pred, gt_folder: str, pred_folder: str) -> None:
        try:
            from hotcoco.panoptic import PanopticEval
        except ImportError:
            raise ImportError("pq_compute(engine='hotcoco') needs the hotcoco package (a dependency of this project: "
                              "pip install 'hotcoco>=1.3,<2'); engine='numpy' works without it") from None
        self._make = lambda: PanopticEval(gt, pred, gt_folder=gt_folder, pred_folder=pred_folder)
        self._result: dict | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pq-hotcoco", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            ev = self._make()
            ev.evaluate()
            self._result = ev.results()
        except BaseException as exc:  # handed to the caller in wait()
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> dict:
        """hotcoco's ``results()``; re-raises its error."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _hotcoco_results(run: _HotcocoRun, pairs: list, gt_folder: str, pred_folder: str, categories: dict,
                     renumbered: bool = False) -> dict:
    """panopticapi's result dict from a hotcoco run over the checked (gt_ann, pred_ann) pairs.

    ``renumbered``: hotcoco was given the images numbered 0..N-1 in GT order (it takes integer image ids
    only; string ids, as in ADE20K panoptic, work that way). Its error messages are given the original
    image id and file names.
    """
    try:
        res = run.wait()
    except (ValueError, OSError) as exc:
        by_id = dict(enumerate(pairs)) if renumbered else {g["image_id"]: (g, p) for g, p in pairs}
        message = str(exc)
        m = re.match(r"image (\d+): (.*)", message, re.S)
        if m and int(m.group(1)) in by_id:
            g, p = by_id[int(m.group(1))]
            message = (f"image id {g['image_id']!r} (prediction {os.path.join(pred_folder, p['file_name'])}, "
                       f"ground truth {os.path.join(gt_folder, g['file_name'])}): {m.group(2)}")
        raise DataError(message) from None
    out: dict = {}
    for name in ("All", "Things", "Stuff"):
        r = res[name]
        n = int(r["n"])
        out[name] = ({"pq": float(r["pq"]), "sq": float(r["sq"]), "rq": float(r["rq"]), "n": n} if n
                     else {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0})
        if name == "All":
            out["per_class"] = {}
            for cat_id in categories:
                c = res["per_class"].get(cat_id)
                seen = c is not None and c["tp"] + c["fp"] + c["fn"] > 0
                out["per_class"][cat_id] = ({"pq": float(c["pq"]), "sq": float(c["sq"]), "rq": float(c["rq"])} if seen
                                            else {"pq": 0.0, "sq": 0.0, "rq": 0.0})
    return out


def _run_pool(pairs: list, gt_folder: str, pred_folder: str, categories: dict, num_workers: int | None) -> PQStats:
    workers = default_num_workers() if num_workers is None else max(1, int(num_workers))
    workers = min(workers, max(1, len(pairs)))
    # Contiguous chunks, one per process, summed in order (panopticapi's split).
    chunks = [list(c) for c in _split(pairs, workers)]
    # Per-image statistics are added in image order, so the float sums (and thus the results) do not
    # depend on the number of processes and equal PanopticEvaluator's bit for bit.
    total = PQStats(categories)
    if workers == 1:
        per_image = [_pq_worker((pairs, gt_folder, pred_folder, categories))]
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(processes=workers) as pool:
            per_image = pool.map(_pq_worker, [(c, gt_folder, pred_folder, categories) for c in chunks], chunksize=1)
    for chunk in per_image:
        for iou, counts in chunk:
            total.iou += iou
            total.counts += counts
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
        threads: images evaluated at once (default: the usable cores). With more than one, ``process``
            gathers ``POOL_CHUNK`` images and hands them to one of ``threads - 1`` pool threads, or every
            ``threads``-th time evaluates them itself (the compiled passes over the pixels release the GIL,
            so images overlap each other and the caller's next forward pass); per-image sums are added in
            image order, so the results do not depend on it, bit for bit. An image's error is raised by a
            later ``process``, ``results`` or ``evaluate`` call and names the image.

    ``process(gt_ids, gt_segments, pred_ids, pred_segments, image_id=None)``: id maps ``[H, W]`` int
    (or ``[H, W, 3]`` uint8 colours) with 0 = VOID; GT segments ``{"id", "category_id", "iscrowd",
    ("area")}``, predicted ``{"id", "category_id", ...}`` (e.g. the ``panoptic_seg`` of the ``general``
    post-processor). ``gt_ids`` may instead be a ``PanopticGT`` from ``prepare_gt`` (kept across
    evaluations of the same validation set; faster). The maps must not be changed until ``results``.
    ``evaluate()`` -> ``{"PQ","SQ","RQ","PQ_th","SQ_th","RQ_th","PQ_st","SQ_st","RQ_st"}`` (x100);
    ``results()`` -> panopticapi's dict (fractions, with ``per_class``).
    """

    def __init__(self, categories, threads: int | None = None):
        if isinstance(categories, dict):
            categories = list(categories.values())
        if not categories:
            raise ValueError("PanopticEvaluator needs at least one category")
        dup = first_duplicate(int(c["id"]) for c in categories)
        if dup is not None:
            raise ValueError(f"PanopticEvaluator: category id {dup} is listed twice")
        self.categories = {int(c["id"]): dict(c) for c in categories}
        self.threads = max(1, int(default_num_workers() if threads is None else threads))
        self._work = _Workspace()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque = deque()
        self._turn = 0
        self._chunk: list = []
        self._ready: list = []
        self.reset()

    def __getstate__(self) -> dict:
        self._drain()
        self._match()
        state = dict(self.__dict__)
        state["_pool"], state["_pending"], state["_chunk"], state["_ready"] = None, deque(), [], []
        return state

    @property
    def stats(self) -> PQStats:
        """The per-category sums of the images processed so far (waits for the pending ones)."""
        self._drain()
        self._match()
        return self._stats

    def reset(self) -> None:
        self._chunk = []
        self._drain(errors=False)
        self._ready = []
        self._stats = PQStats(self.categories)
        self._count = 0

    def prepare_gt(self, gt_ids, gt_segments: Sequence[dict], image_id=None) -> PanopticGT:
        """One image's ground truth in the compact form ``process`` reads fastest (``PanopticGT``): keep it
        (e.g. per image id) and pass it to ``process`` of this or a later evaluator in place of ``gt_ids``.
        Its checks (duplicate ids, VOID as a segment, unknown categories) are those of ``process``."""
        where = f"image {image_id!r}" if image_id is not None else "ground truth"
        gt = PanopticGT(gt_ids, gt_segments, where, self._work)
        self._stats.index(gt.cats, f"{where}, ground truth")
        return gt

    def process(self, gt_ids, gt_segments: Sequence[dict] | None, pred_ids, pred_segments: Sequence[dict],
                image_id=None) -> None:
        """Add one image (see the class docstring); the numbers are the same with a ``PanopticGT``."""
        where = f"image {image_id!r}" if image_id is not None else f"image #{self._count} of this evaluation"
        pred = _as_id_map(pred_ids, "pred_ids")
        if isinstance(gt_ids, PanopticGT):
            if gt_segments is not None:
                raise ValueError("PanopticEvaluator.process: a prepared PanopticGT holds its segments; "
                                 "pass gt_segments=None")
            gt = gt_ids
        else:
            gt = _as_id_map(gt_ids, "gt_ids")
            if gt_segments is None:
                raise ValueError("PanopticEvaluator.process: gt_segments is None but gt_ids is not a PanopticGT")
        # the segments lists are checked here, in the caller's thread: their errors are raised at once
        gt_fields, pred_fields = _fields(gt_segments, pred_segments, self._stats, where)
        if gt_fields is None:
            gt_fields = (None, self._stats.index(gt.cats, f"{where}, ground truth"), gt.crowd, gt.area)
        self._count += 1
        if self.threads == 1:
            self._ready.append(self._image(gt, gt_fields, pred, pred_fields, where))
        else:
            self._chunk.append((gt, gt_fields, pred, pred_fields, where))
            if len(self._chunk) >= POOL_CHUNK:
                self._submit()
            while len(self._pending) > 2 * self.threads:  # bounded: at most a few images held in memory
                entries, error = self._pending.popleft().result()
                self._ready.extend(entries)
                if error is not None:
                    raise error
        if len(self._ready) >= MATCH_BATCH:
            self._match()

    def _submit(self) -> None:
        """Hand the images gathered so far to a pool thread as one task (fewer, larger tasks: less overhead),
        or, every ``threads``-th time, evaluate them in the calling thread: it then releases the GIL in each
        image's kernel, so the pool threads are not kept waiting for it while the caller feeds images."""
        if not self._chunk:
            return
        self._turn += 1
        if self._turn % self.threads == 0:
            done: Future = Future()
            done.set_result(self._images(self._chunk))
            self._pending.append(done)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="pq-image")
            self._pending.append(self._pool.submit(self._images, self._chunk))
        self._chunk = []

    def _images(self, jobs: list) -> tuple[list, Exception | None]:
        """``_image`` of several images in order: their entries up to the first error, and that error."""
        out = []
        for job in jobs:
            try:
                out.append(self._image(*job))
            except Exception as exc:
                return out, exc
        return out, None

    def _image(self, gt, gt_fields: tuple, pred: np.ndarray, pred_fields: tuple, where: str) -> tuple:
        """One image's pass over the pixels: its ``match_images`` entry (matched with others in ``_match``)."""
        if isinstance(gt, PanopticGT):
            if pred.shape != gt.shape:
                raise DataError(f"{where}: prediction size {pred.shape} differs from ground-truth size {gt.shape}")
            _, gt_cat, gt_crowd, gt_area = gt_fields
            flat = pred.reshape(-1)
            pred_ids = pred_fields[0]
            if _small_ids(pred_ids):  # the histogram straight from the pixels (one kernel, no runs array)
                hist = _pixel_hist(gt.index, flat, _NO_KEYS, _NO_ROWS, len(gt_cat), pred_ids, self._work)
                return _hist_entry(hist, gt_cat, gt_crowd, gt_area, pred_fields, where, flat)
            gi, pred_run, lengths = _runs(gt.index, flat, self._work)
            return _runs_image(gi, pred_run, lengths, gt_cat, gt_crowd, gt_area, pred_fields, where, self._work.table)
        return _image_pq(gt, gt_fields, pred, pred_fields, where, work=self._work)

    def _match(self) -> None:
        """Match the images whose pixel passes are done, all at once (``match_images``), and add their
        statistics in image order."""
        if not self._ready:
            return
        iou, counts = match_images(self._ready, len(self._stats.cat_ids))
        self._ready = []
        for k in range(len(iou)):  # image by image: float sums independent of the batches
            self._stats.iou += iou[k]
        self._stats.counts += counts.sum(axis=0)

    def _drain(self, errors: bool = True) -> None:
        """Collect the pending images' passes in order; the first error is raised after all have finished
        (the images before it are kept, those after it dropped)."""
        self._submit()
        first = None
        while self._pending:
            entries, error = self._pending.popleft().result()
            if first is None:
                self._ready.extend(entries)
                first = error
        if first is not None and errors:
            raise first

    def merge(self, other: "PanopticEvaluator") -> None:
        """Add another evaluator's statistics (e.g. gathered from other processes)."""
        self._stats = self.stats
        self._stats += other.stats

    def results(self) -> dict:
        return self.stats.results()

    def evaluate(self) -> dict[str, float]:
        return pq_summary(self.results())
