"""`python -m pipeline evaluate-panoptic|evaluate-semantic`: metrics of prediction files against GT files.

evaluate-panoptic: COCO panoptic format (JSON + PNG folders, id = R + 256 G + 256^2 B), PQ/SQ/RQ via
``maskformer_core.metrics.pq_compute`` (JSON checks, then the PNG work in hotcoco, or with --engine numpy
in maskformer_core). evaluate-semantic: folders of label-map PNGs (or 16-bit TIFF for ADE20K-Full)
matched by file stem; mIoU / fwIoU / mACC / pACC (2021 formula) and optionally PQ^St.
Both print a table and, with --out, write the metrics as JSON atomically (temp file + rename).
"""
from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from maskformer_core.metrics import PQStuffEvaluator, SemSegEvaluator, pq_compute, pq_summary
from maskformer_core.metrics.panoptic import ENGINES, default_num_workers
from pipeline.config import check_output_file
from pipeline.errors import UserError
from pipeline.runfolder import write_json

LABEL_SUFFIXES = (".png", ".tif", ".tiff")


def register(subparsers) -> None:
    pan = subparsers.add_parser(
        "evaluate-panoptic", help="PQ/SQ/RQ of COCO-format panoptic predictions (JSON + PNG folder)",
        description="Panoptic quality with the COCO panoptic API rules (a fast drop-in for pq_compute).")
    pan.add_argument("--gt-json", required=True, help="ground-truth panoptic JSON (with 'categories')")
    pan.add_argument("--gt-folder", required=True, help="folder of ground-truth panoptic PNGs")
    pan.add_argument("--pred-json", required=True, help="prediction panoptic JSON")
    pan.add_argument("--pred-folder", required=True, help="folder of prediction panoptic PNGs")
    pan.add_argument("--engine", choices=ENGINES, default="hotcoco",
                     help="hotcoco (default: Rust, one thread per core, RAYON_NUM_THREADS limits it) or numpy "
                          "(this project's PNG reader and rules on --workers processes); same numbers")
    pan.add_argument("--workers", type=int, default=None, help="processes of --engine numpy (default: the usable cores)")
    pan.add_argument("--out", help="write the metrics here as JSON")
    pan.add_argument("--overwrite", action="store_true", help="replace an existing output file (without it, an existing file is refused and left as it is)")
    pan.set_defaults(func=run_panoptic)

    sem = subparsers.add_parser(
        "evaluate-semantic", help="mIoU (and PQ^St) of label-map predictions against GT label maps",
        description="Semantic metrics of a folder of predicted label maps (PNG, same file stems as the GT). "
                    "Predicted values outside 0..K-1 count as 'no prediction'.")
    sem.add_argument("--gt-folder", required=True, help="folder of GT label maps (.png, or .tif for ADE20K-Full)")
    sem.add_argument("--pred-folder", required=True, help="folder of predicted label maps with the same stems")
    sem.add_argument("--num-classes", type=int, required=True, help="K")
    sem.add_argument("--ignore-label", type=int, required=True, help="GT value to ignore (255, 65535, ...)")
    sem.add_argument("--pq-stuff", action="store_true", help="also compute PQ^St (every class one stuff segment)")
    sem.add_argument("--workers", type=int, default=None, help="processes (default: the usable cores)")
    sem.add_argument("--out", help="write the metrics here as JSON")
    sem.add_argument("--overwrite", action="store_true", help="replace an existing output file (without it, an existing file is refused and left as it is)")
    sem.set_defaults(func=run_semantic)


def _require(path: str, kind: str, flag: str) -> None:
    p = Path(path)
    if kind == "file" and not p.is_file():
        raise UserError(f"{flag} {path}: file not found")
    if kind == "dir" and not p.is_dir():
        raise UserError(f"{flag} {path}: folder not found")


def _warn_unlisted_pngs(pred_json: str, pred_folder: str) -> None:
    """A counted warning for PNGs in the prediction folder that no entry of the prediction JSON names."""
    try:
        listed = {a.get("file_name") for a in json.loads(Path(pred_json).read_text()).get("annotations", [])}
    except (ValueError, AttributeError):
        return  # pq_compute reports a malformed JSON itself
    extra = sorted(p.name for p in Path(pred_folder).glob("*.png") if p.name not in listed)
    if extra:
        print(f"warning: --pred-folder {pred_folder}: {len(extra)} PNG(s) not named by {pred_json} are not "
              f"scored, e.g. {extra[:5]}", file=sys.stderr)


def run_panoptic(args) -> int:
    _require(args.gt_json, "file", "--gt-json")
    _require(args.pred_json, "file", "--pred-json")
    _require(args.gt_folder, "dir", "--gt-folder")
    _require(args.pred_folder, "dir", "--pred-folder")
    check_output_file(args.out, "--out", args.overwrite)
    _warn_unlisted_pngs(args.pred_json, args.pred_folder)
    results = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder, num_workers=args.workers,
                         engine=args.engine)
    print(f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}")
    print("-" * 38)
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        print(f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}")
    if args.out:
        data = {"summary": pq_summary(results),
                "results": {k: v for k, v in results.items() if k != "per_class"},
                "per_class": {str(k): v for k, v in results["per_class"].items()}}
        write_json(args.out, data, sort_keys=False, allow_nan=True)
        print(f"wrote {args.out}")
    return 0


def _read_label_map(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        raise UserError(f"{path}: expected a single-channel label map, got {arr.shape[-1]} channels")
    return arr


def _stems(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in LABEL_SUFFIXES and p.is_file():
            if p.stem in out:
                raise UserError(f"{folder}: two label maps with the stem {p.stem!r} ({out[p.stem].name}, {p.name})")
            out[p.stem] = p
    return out


def _semantic_worker(job):
    pairs, num_classes, ignore_label, pq_stuff = job
    sem = SemSegEvaluator(num_classes, ignore_label)
    pqs = PQStuffEvaluator(num_classes, ignore_label) if pq_stuff else None
    for gt_path, pred_path in pairs:
        gt = _read_label_map(gt_path)
        pred = _read_label_map(pred_path)
        if gt.shape != pred.shape:
            raise UserError(f"{pred_path}: size {pred.shape} differs from the ground truth {gt_path} {gt.shape}")
        sem.process(pred, gt)
        if pqs is not None:
            pqs.process(pred, gt)
    return sem, pqs


def run_semantic(args) -> int:
    _require(args.gt_folder, "dir", "--gt-folder")
    _require(args.pred_folder, "dir", "--pred-folder")
    check_output_file(args.out, "--out", args.overwrite)
    if args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    gts, preds = _stems(Path(args.gt_folder)), _stems(Path(args.pred_folder))
    if not gts:
        raise UserError(f"--gt-folder {args.gt_folder}: no .png/.tif label maps")
    missing = [s for s in gts if s not in preds]
    if missing:
        raise UserError(f"--pred-folder {args.pred_folder}: no prediction for {len(missing)} GT file(s), e.g. {missing[:5]}")
    extra = [s for s in preds if s not in gts]
    if extra:  # scored nowhere: say so, with the count (a wrong folder or a renamed GT would hide here)
        print(f"warning: --pred-folder {args.pred_folder}: {len(extra)} prediction file(s) without a GT file are "
              f"not scored, e.g. {extra[:5]}", file=sys.stderr)
    pairs = [(gts[s], preds[s]) for s in gts]
    workers = min(default_num_workers() if args.workers is None else max(1, args.workers), len(pairs))
    chunks = [pairs[i::workers] for i in range(workers)]
    jobs = [(c, args.num_classes, args.ignore_label, args.pq_stuff) for c in chunks]
    if workers == 1:
        parts = [_semantic_worker(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_semantic_worker, jobs)
    sem, pqs = parts[0]
    for s, p in parts[1:]:
        sem.merge(s)
        if pqs is not None:
            pqs.merge(p)
    metrics = sem.evaluate()
    if pqs is not None:
        metrics.update({f"{k}_St": v for k, v in pqs.evaluate().items()})
    print(f"{len(pairs)} images, K = {args.num_classes}, ignore = {args.ignore_label}")
    keys = ["mIoU", "fwIoU", "mACC", "pACC"] + (["PQ_St", "SQ_St", "RQ_St"] if pqs is not None else [])
    print(" | ".join(f"{k:>6s}" for k in keys))
    print(" | ".join(f"{metrics[k]:6.2f}" for k in keys))
    if args.out:
        clean = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}
        write_json(args.out, clean, sort_keys=False, allow_nan=True)
        print(f"wrote {args.out}")
    return 0
