"""Benchmark of the PQ evaluation paths against hotcoco on COCO-sized synthetic panoptic data (issues 3, 14).

Generates N deterministic 480x640 images with ~30 segments each (GT with things, stuff, crowd and VOID;
a prediction with moved, relabelled, dropped and spurious segments; COCO panoptic PNG + JSON format) in a
temp dir and prints one table, all paths timed in the same run after one warm-up (median of N runs,
round-robin; CPU seconds of all threads and pool processes beside), then with ``--pairs`` the paired ratio
of each goal (hotcoco and the path back to back, alternating which goes first; the median ratio):

- hotcoco's file-based ``pq_compute`` (the reference; Rust, its own thread pool);
- this project's file-based ``pq_compute`` (checks both JSONs, then delegates the PNG work to hotcoco;
  goal: no slower than hotcoco) and its ``engine="numpy"`` (own PNG reader and rules, process pool);
- the in-memory ``PanopticEvaluator`` used during training (GT id maps as the data loader gives them,
  int64; predictions as the post-processor gives them, int32; no PNG round trip; goal: >= 5x faster than
  hotcoco's file-based evaluation), the same with uint32 GT maps (half the bytes to read), and the same
  with the GT prepared once (``PanopticGT``: uint8 dense indices, kept across evaluations of a validation
  set, as ``pipeline.evaluation.evaluate(gt_cache=...)`` does for a training run); the preparation is its
  own row (paid once per validation set, not per evaluation);
- the floor of the in-memory path with prepared GT: the comparisons of neighbouring pixels in both maps
  that its compiled kernel's flag pass makes (numpy, SIMD), and a plain copy of the prediction maps
  (memory bandwidth);
- for context: merely decoding the PNGs (OpenCV, same processes) and detectron2's way (write every
  prediction as PNG + JSON, then ``pq_compute`` the files).

Every path must give the same numbers (PQ/SQ/RQ/n of All/Things/Stuff and per class) to 1e-9, and this
project's own paths bit for bit; the script checks this and exits 1 otherwise.

Usage: python benchmarks/pq_benchmark.py [--images 120] [--workers N] [--repeats 7] [--data-dir DIR] [--pairs N]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hotcoco.panoptic import pq_compute as hotcoco_pq_compute  # noqa: E402

from maskformer_core.metrics.panoptic import (PanopticEvaluator, default_num_workers, id2rgb, pq_compute,  # noqa: E402
                                              read_panoptic_png)

H, W = 480, 640
NUM_THINGS, NUM_STUFF = 80, 53  # COCO panoptic: 133 categories
CATEGORIES = [{"id": i + 1, "name": f"c{i + 1}", "isthing": int(i < NUM_THINGS)} for i in range(NUM_THINGS + NUM_STUFF)]


def _voronoi(rng: np.random.Generator, seeds: np.ndarray) -> np.ndarray:
    """Label map [H, W] of the nearest seed, computed at half resolution (flat regions, PNG-like COCO)."""
    ys, xs = np.mgrid[0:H // 2, 0:W // 2]
    d = (ys[..., None] - seeds[:, 0] / 2) ** 2 + (xs[..., None] - seeds[:, 1] / 2) ** 2
    lab = d.argmin(-1)
    return np.repeat(np.repeat(lab, 2, 0), 2, 1)


def _make_image(i: int, root: Path) -> tuple[dict, dict, list]:
    rng = np.random.default_rng(1000 + i)
    n = int(rng.integers(24, 37))
    seeds = np.stack([rng.uniform(0, H, n), rng.uniform(0, W, n)], 1)
    gt_lab = _voronoi(rng, seeds)
    # prediction: jittered seeds, a few extra and a few missing segments
    jitter = seeds + rng.normal(0, 12, seeds.shape)
    extra = np.stack([rng.uniform(0, H, 3), rng.uniform(0, W, 3)], 1)
    pred_seeds = np.concatenate([jitter, extra])
    pred_lab = _voronoi(rng, pred_seeds)
    cats = rng.integers(1, len(CATEGORIES) + 1, n)
    gt_ids = rng.choice(2**24 - 2, n, replace=False) + 1  # random colours, as COCO's IdGenerator gives
    gt_map = gt_ids[gt_lab].astype(np.uint32)
    void = rng.random((H // 8, W // 8)) < 0.05
    gt_map[np.repeat(np.repeat(void, 8, 0), 8, 1)] = 0
    gt_segments = []
    for j in range(n):
        area = int((gt_map == gt_ids[j]).sum())
        if area:
            gt_segments.append({"id": int(gt_ids[j]), "category_id": int(cats[j]), "iscrowd": int(rng.random() < 0.03),
                                "area": area})
    pred_cats = np.concatenate([np.where(rng.random(n) < 0.85, cats, rng.integers(1, len(CATEGORIES) + 1, n)),
                                rng.integers(1, len(CATEGORIES) + 1, 3)])
    drop = rng.random(n + 3) < 0.05
    pred_map = (pred_lab + 1).astype(np.int32)  # small ids 1..N, as panoptic inference returns
    pred_map[drop[pred_lab]] = 0
    pred_segments = [{"id": int(k + 1), "category_id": int(pred_cats[k]), "isthing": bool(pred_cats[k] <= NUM_THINGS)}
                     for k in range(n + 3) if not drop[k] and (pred_map == k + 1).any()]
    name = f"{i:012d}.png"
    Image.fromarray(id2rgb(gt_map)).save(root / "gt" / name)
    Image.fromarray(id2rgb(pred_map)).save(root / "pred" / name)
    return ({"image_id": i, "file_name": name, "segments_info": gt_segments},
            {"image_id": i, "file_name": name, "segments_info": pred_segments}, [])


def generate(root: Path, n: int, workers: int) -> None:
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        anns = pool.starmap(_make_image, [(i, root) for i in range(n)])
    (root / "gt.json").write_text(json.dumps({"categories": CATEGORIES, "annotations": [a[0] for a in anns],
                                              "images": [{"id": i, "file_name": a[0]["file_name"]} for i, a in enumerate(anns)]}))
    (root / "pred.json").write_text(json.dumps({"annotations": [a[1] for a in anns]}))


def _decode_chunk(paths: list[str]) -> int:
    """The floor: OpenCV's PNG decode into a numpy array (the decoder pq_compute uses, and faster than
    PIL's ``load()`` here), nothing else."""
    total = 0
    for p in paths:
        total += cv2.imread(p, cv2.IMREAD_UNCHANGED).shape[0]
    return total


def decode_floor(root: Path, workers: int) -> None:
    """Decode every GT and prediction PNG once (same decoder and pool layout as pq_compute)."""
    names = sorted(os.listdir(root / "gt"))
    per = [[] for _ in range(workers)]
    base, extra = divmod(len(names), workers)
    start = 0
    for w in range(workers):
        size = base + (1 if w < extra else 0)
        for nm in names[start:start + size]:
            per[w] += [str(root / "gt" / nm), str(root / "pred" / nm)]
        start += size
    if workers == 1:
        _decode_chunk(per[0])
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_decode_chunk, per, chunksize=1)


def detectron2_style(root: Path, preds: list, workers: int) -> dict:
    """detectron2's COCOPanopticEvaluator: write prediction PNGs + JSON to a temp dir, evaluate the files."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        anns = []
        for image_id, (pred_map, segments) in preds:
            name = f"{image_id:012d}.png"
            Image.fromarray(id2rgb(pred_map)).save(os.path.join(tmp, name))
            anns.append({"image_id": image_id, "file_name": name, "segments_info": segments})
        pred_json = os.path.join(tmp, "predictions.json")
        with open(pred_json, "w") as f:
            json.dump({"annotations": anns}, f)
        return pq_compute(str(root / "gt.json"), pred_json, str(root / "gt"), tmp, num_workers=workers)


def in_memory(gts: list, preds: list) -> dict:
    ev = PanopticEvaluator(CATEGORIES)
    for (gt_map, gt_segments), (image_id, (pred_map, segments)) in zip(gts, preds):
        ev.process(gt_map, gt_segments, pred_map, segments, image_id=image_id)
    return ev.results()


def prepare(gts: list) -> list:
    """The GT in ``PanopticGT`` form (what a trainer keeps across evaluations of its validation set)."""
    ev = PanopticEvaluator(CATEGORIES)
    return [ev.prepare_gt(gt_map, gt_segments) for gt_map, gt_segments in gts]


def in_memory_prepared(prepared: list, preds: list) -> dict:
    ev = PanopticEvaluator(CATEGORIES)
    for gt, (image_id, (pred_map, segments)) in zip(prepared, preds):
        ev.process(gt, None, pred_map, segments, image_id=image_id)
    return ev.results()


_scratch = threading.local()


def _buffer(name: str, size: int, dtype) -> np.ndarray:
    """A per-thread reusable buffer, as the evaluator keeps (fresh large arrays cost page faults)."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        setattr(_scratch, name, buf)
    return buf[:size]


def pixel_floor(prepared: list, preds: list, threads: int) -> None:
    """The floor of the in-memory pass with prepared GT: the neighbouring-pixel comparisons of both maps
    that its kernel's vectorised flag pass makes (numpy, into reused buffers), split over ``threads``
    threads like the evaluator's images; nothing else (no scan of the flags, no histogram, no matching)."""
    def one(k: int) -> None:
        p, g = preds[k][1][0].reshape(-1), prepared[k].index
        a, b = _buffer("a", p.size, bool), _buffer("b", p.size, bool)
        np.not_equal(p[1:], p[:-1], out=a[1:])
        np.not_equal(g[1:], g[:-1], out=b[1:])
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(prepared))))


def copy_floor(preds: list, threads: int) -> None:
    """Memory bandwidth: one copy of every prediction map (int32) into a reused buffer, on ``threads`` threads."""
    def one(x) -> None:
        p = x[1][0].reshape(-1)
        np.copyto(_buffer("c", p.size, p.dtype), p)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, preds))


def hotcoco_files(root: Path) -> dict:
    """hotcoco's panopticapi-compatible ``pq_compute`` (its summary table goes to /dev/null)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        return hotcoco_pq_compute(str(root / "gt.json"), str(root / "pred.json"), str(root / "gt"), str(root / "pred"))


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its waited-for children (pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(paths: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Median wall times and median CPU seconds over ``repeats`` runs of several paths (after the warm-up
    in ``main``), run round-robin so that all see the same machine load."""
    walls: dict = {k: [] for k in paths}
    cpus: dict = {k: [] for k in paths}
    outs: dict = {}
    for _ in range(repeats):
        for k, fn in paths.items():
            c0, t0 = _cpu_seconds(), time.perf_counter()
            outs[k] = fn()
            walls[k].append(time.perf_counter() - t0)
            cpus[k].append(_cpu_seconds() - c0)
    return ({k: float(np.median(v)) for k, v in walls.items()}, {k: float(np.median(v)) for k, v in cpus.items()},
            outs)


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference over PQ/SQ/RQ/n of All/Things/Stuff and PQ/SQ/RQ per class (inf if the
    categories differ). hotcoco marks a category without TP/FP/FN, or an empty group, with -1 where
    panopticapi (and this project) has 0.0 with n = 0; those entries compare as 0.0."""
    def val(r, group, key, cat=None):
        d = r["per_class"][cat] if cat is not None else r[group]
        if cat is not None and "tp" in d and d["tp"] + d["fp"] + d["fn"] == 0:
            return 0.0
        if cat is None and r[group]["n"] == 0:
            return 0.0
        return float(d[key])
    if set(a["per_class"]) != set(b["per_class"]):
        return float("inf")
    diffs = [abs(val(a, g, k) - val(b, g, k)) for g in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq", "n")]
    diffs += [abs(val(a, None, k, c) - val(b, None, k, c)) for c in a["per_class"] for k in ("pq", "sq", "rq")]
    return max(diffs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--workers", type=int, default=None, help="processes of the numpy paths (default: usable cores)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per path (the median is shown)")
    ap.add_argument("--data-dir", help="generate into / reuse this folder (kept); default: a temp dir, removed")
    ap.add_argument("--pairs", type=int, default=0,
                    help="also time hotcoco and pq_compute (files) back to back N times and print the quartiles of "
                         "the per-pair ratio (steadier than separate medians on a shared machine)")
    args = ap.parse_args()
    workers = args.workers or default_num_workers()
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="pq_bench_"))
    try:
        t0 = time.perf_counter()
        marker = root / f"generated_{args.images}"
        if not marker.exists():
            if root.exists() and any(root.iterdir()):
                raise SystemExit(f"--data-dir {root} exists and was not generated by this script for "
                                 f"{args.images} images; give an empty or new folder")
            root.mkdir(parents=True, exist_ok=True)
            generate(root, args.images, workers)
            marker.touch()
        gen_s = time.perf_counter() - t0
        gt_json = json.loads((root / "gt.json").read_text())
        pred_json = json.loads((root / "pred.json").read_text())
        # in-memory inputs as the trainer has them: GT id maps int64 (the data loader's pan_seg), predictions
        # int32 id maps with their segments (the post-processor's panoptic_seg)
        gts = [(read_panoptic_png(str(root / "gt" / a["file_name"])).astype(np.int64), a["segments_info"])
               for a in gt_json["annotations"]]
        preds = [(a["image_id"], (read_panoptic_png(str(root / "pred" / a["file_name"])).astype(np.int32), a["segments_info"]))
                 for a in pred_json["annotations"]]
        gts32 = [(g.astype(np.uint32), segs) for g, segs in gts]
        files = (str(root / "gt.json"), str(root / "pred.json"), str(root / "gt"), str(root / "pred"))
        decode_floor(root, workers)  # warm the page cache
        hotcoco_files(root)  # and hotcoco's thread pool
        prepared = prepare(gts)
        threads = PanopticEvaluator(CATEGORIES).threads
        paths = {
            "hotcoco pq_compute (files)": lambda: hotcoco_files(root),
            "pq_compute (files; checks + hotcoco)": lambda: pq_compute(*files),
            "pq_compute engine=numpy (files)": lambda: pq_compute(*files, num_workers=workers, engine="numpy"),
            "in-memory PanopticEvaluator": lambda: in_memory(gts, preds),
            "  same, GT maps uint32 (PNG ids need 24 bits)": lambda: in_memory(gts32, preds),
            "  same, GT prepared once (PanopticGT, cached)": lambda: in_memory_prepared(prepared, preds),
            "  GT preparation (once per val set, not above)": lambda: prepare(gts),
            "  floor: compare neighbouring pixels (numpy)": lambda: pixel_floor(prepared, preds, threads),
            "  floor: copy the prediction maps (bandwidth)": lambda: copy_floor(preds, threads),
            "decode PNGs only (OpenCV)": lambda: decode_floor(root, workers),
            "detectron2-style: write PNG+JSON, pq_compute": lambda: detectron2_style(root, preds, workers),
        }
        for fn in paths.values():  # warm-up: every path once, untimed (imports, pools, caches)
            fn()
        med, cpu, outs = timed(paths, args.repeats)
        n = args.images
        ref_key = "hotcoco pq_compute (files)"
        ref = outs[ref_key]
        print(f"{n} images {H}x{W}, ~30 segments each; numpy engine on {workers} process(es), in-memory on "
              f"{threads} thread(s); median of {args.repeats} round-robin runs after a warm-up; data ready in "
              f"{gen_s:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
              f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}")
        print(f"{'path':46s} {'total s':>8s} {'ms/img':>8s} {'cpu s':>7s} {'vs hotcoco':>10s} {'PQ':>10s} {'SQ':>10s} "
              f"{'RQ':>10s} {'max |diff|':>10s}")
        for name, secs in med.items():
            res = outs[name]
            row = f"{name:46s} {secs:8.3f} {1000 * secs / n:8.2f} {cpu[name]:7.3f} {secs / med[ref_key]:9.3f}x"
            if isinstance(res, dict):
                row += (f" {100 * res['All']['pq']:10.6f} {100 * res['All']['sq']:10.6f} {100 * res['All']['rq']:10.6f} "
                        f"{max_difference(res, ref):10.2e}")
            print(row)
        results = [outs[k] for k in paths if isinstance(outs[k], dict)]
        same = all(max_difference(r, ref) <= 1e-9 for r in results)
        own = [outs[k] for k in ("pq_compute engine=numpy (files)", "in-memory PanopticEvaluator",
                                 "  same, GT prepared once (PanopticGT, cached)")]
        own_identical = all(r == own[0] for r in own)
        file_ratio = med["pq_compute (files; checks + hotcoco)"] / med[ref_key]
        mem_speedup = med[ref_key] / med["in-memory PanopticEvaluator"]
        cached_speedup = med[ref_key] / med["  same, GT prepared once (PanopticGT, cached)"]
        floor_speedup = med[ref_key] / med["  floor: compare neighbouring pixels (numpy)"]
        runs = sum(np.count_nonzero(np.diff(g.index) | np.diff(p[1][0].reshape(-1))) + 1
                   for g, p in zip(prepared, preds)) / n
        print(f"pq_compute (files) / hotcoco (files): {file_ratio:.3f} (goal <= 1)")
        print(f"in-memory speed-up over hotcoco (files): {mem_speedup:.1f}x; with the GT prepared once: "
              f"{cached_speedup:.1f}x (goal >= 5x); its pixel passes alone: {floor_speedup:.1f}x "
              f"({H * W / (med['  floor: compare neighbouring pixels (numpy)'] / n) / 1e9:.2f} Gpixel/s on {threads} "
              f"thread(s); 5x needs {5 * n * H * W / med[ref_key] / 1e9:.2f} Gpixel/s end to end; "
              f"{runs:.0f} joint runs per image)")
        print(f"CPU seconds (all threads and processes; steadier than wall time on a shared machine): hotcoco "
              f"{cpu[ref_key]:.3f}, in-memory with the GT prepared once "
              f"{cpu['  same, GT prepared once (PanopticGT, cached)']:.3f} "
              f"({cpu[ref_key] / cpu['  same, GT prepared once (PanopticGT, cached)']:.1f}x less)")
        print(f"in-memory speed-up over detectron2-style files: "
              f"{med['detectron2-style: write PNG+JSON, pq_compute'] / med['in-memory PanopticEvaluator']:.1f}x")
        if args.pairs:
            pairs = {"pq_compute (files)": lambda: pq_compute(*files),
                     "in-memory": lambda: in_memory(gts, preds),
                     "in-memory, GT prepared once": lambda: in_memory_prepared(prepared, preds)}
            for name, fn in pairs.items():
                ratios = []
                for k in range(args.pairs):  # alternate which one goes first
                    t0 = time.perf_counter()
                    (fn if k % 2 else (lambda: hotcoco_files(root)))()
                    t1 = time.perf_counter()
                    ((lambda: hotcoco_files(root)) if k % 2 else fn)()
                    t2 = time.perf_counter()
                    ours, ref_s = (t1 - t0, t2 - t1) if k % 2 else (t2 - t1, t1 - t0)
                    ratios.append(ours / ref_s)
                q1, mid, q3 = np.percentile(ratios, [25, 50, 75])
                print(f"{name} / hotcoco (files), {args.pairs} back-to-back pairs: median {mid:.3f} "
                      f"(quartiles {q1:.3f}-{q3:.3f}); speed-up {1 / mid:.1f}x")
        print(f"every path equal to hotcoco to 1e-9: {same}; numpy engine == in-memory bit for bit: {own_identical}")
        return 0 if same and own_identical else 1
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
