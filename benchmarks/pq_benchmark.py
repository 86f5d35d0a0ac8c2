"""Benchmark of the PQ evaluation paths on COCO-sized synthetic panoptic data (issue 3).

Generates N deterministic 480x640 images with ~30 segments each (GT and a perturbed prediction, COCO
panoptic PNG + JSON format) in a temp dir and prints one table:

(a) file-based ``pq_compute`` vs the floor of merely decoding the same PNGs with the same decoder on the
    same number of processes (goal: <= 25 % above the floor);
(b) the in-memory ``PanopticEvaluator`` (predictions as id maps, GT already decoded, as in the trainer)
    vs detectron2's way: write every prediction as PNG + a JSON, then evaluate the files (goal: >= 10x).

Every path must report identical PQ numbers; the script checks this and exits 1 otherwise.

Usage: python benchmarks/pq_benchmark.py [--images 300] [--workers N] [--repeats 3] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskformer_core.metrics.panoptic import (PanopticEvaluator, default_num_workers, id2rgb, pq_compute,  # noqa: E402
                                              pq_summary, read_panoptic_png)

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


def timed_pair(fa, fb, repeats: int):
    """Best-of-N wall times of two paths, run alternately so that both see the same machine load."""
    best = [float("inf"), float("inf")]
    outs = [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((fa, fb)):
            t0 = time.perf_counter()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return (best[0], outs[0]), (best[1], outs[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=None, help="processes (default: usable cores)")
    ap.add_argument("--repeats", type=int, default=3, help="best of N timings")
    ap.add_argument("--data-dir", help="generate into / reuse this folder (kept); default: a temp dir, removed")
    args = ap.parse_args()
    workers = args.workers or default_num_workers()
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="pq_bench_"))
    try:
        t0 = time.perf_counter()
        marker = root / f"generated_{args.images}"
        if not marker.exists():
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            generate(root, args.images, workers)
            marker.touch()
        gen_s = time.perf_counter() - t0
        gt_json = json.loads((root / "gt.json").read_text())
        pred_json = json.loads((root / "pred.json").read_text())
        decode_floor(root, workers)  # warm the page cache
        (floor_s, _), (file_s, file_res) = timed_pair(
            lambda: decode_floor(root, workers),
            lambda: pq_compute(str(root / "gt.json"), str(root / "pred.json"), str(root / "gt"), str(root / "pred"),
                               num_workers=workers), args.repeats)
        # in-memory inputs: GT decoded once (the trainer gets it from the data loader), predictions as id maps
        gts = [(read_panoptic_png(str(root / "gt" / a["file_name"])), a["segments_info"]) for a in gt_json["annotations"]]
        preds = [(a["image_id"], (read_panoptic_png(str(root / "pred" / a["file_name"])).astype(np.int32), a["segments_info"]))
                 for a in pred_json["annotations"]]
        (mem_s, mem_res), (d2_s, d2_res) = timed_pair(lambda: in_memory(gts, preds),
                                                      lambda: detectron2_style(root, preds, workers), args.repeats)
        rows = [("decode PNGs only (floor)", floor_s, None), ("pq_compute (files)", file_s, file_res),
                ("detectron2-style: write PNG+JSON, pq_compute", d2_s, d2_res), ("in-memory PanopticEvaluator", mem_s, mem_res)]
        n = args.images
        print(f"{n} images {H}x{W}, ~30 segments each, {workers} process(es); best of {args.repeats} alternating runs; "
              f"data ready in {gen_s:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"{'path':48s} {'seconds':>8s} {'ms/img':>8s} {'PQ':>10s} {'SQ':>10s} {'RQ':>10s} {'PQ_th':>10s} {'PQ_st':>10s}")
        for name, secs, res in rows:
            if res is None:
                print(f"{name:48s} {secs:8.3f} {1000 * secs / n:8.2f}")
            else:
                s = pq_summary(res)
                print(f"{name:48s} {secs:8.3f} {1000 * secs / n:8.2f} {s['PQ']:10.6f} {s['SQ']:10.6f} {s['RQ']:10.6f} "
                      f"{s['PQ_th']:10.6f} {s['PQ_st']:10.6f}")
        identical = file_res == mem_res == d2_res
        print(f"(a) pq_compute vs decode floor: {100 * (file_s / floor_s - 1):+.1f} % above the floor (goal <= +25 %)")
        print(f"(b) in-memory vs detectron2-style files: {d2_s / mem_s:.1f}x faster (goal >= 10x)")
        print(f"identical results on every path: {identical}")
        return 0 if identical else 1
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
