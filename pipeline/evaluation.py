"""Evaluation of a trained model on the validation split: metrics, TTA, fps and per-query statistics (official
``mask_former_model.py``, detectron2 ``evaluation/``).

Everything numeric goes through maskformer_core (post-processors in `inference`, evaluators in
`metrics`); this module only loops over images and names the results. Result keys are flat, slash
separated (docs/ARCHITECTURE.md "Run folder"):

- single scale: `val/mIoU`, `val/fwIoU`, `val/mACC`, `val/pACC`, `val/IoU/<class>`, `val/ACC/<class>`,
  `val/PQSt`, `val/SQSt`, `val/RQSt` (semantic data: detectron2 SemSegEvaluator, official
tools/evaluate_pq_for_semantic_segmentation.py); `val/PQ`, `val/SQ`, `val/RQ`,
  `val/PQ_th`, `val/SQ_th`, `val/RQ_th`, `val/PQ_st`, `val/SQ_st`, `val/RQ_st` (panoptic data, panopticapi pq_compute;
  ADE20K panoptic also gets the semantic keys, as the official ade20k_panoptic_seg evaluators);
- multi scale + flip (`test.tta`): the semantic keys under `val_ms/` (official SemanticSegmentorWithTTA: only
sem_seg is augmented);
- `perf/fps` with `perf/fps_protocol` (paper Tables 1 and 3 captions: batch 1, including post-processing,
warm-up excluded);
- `analysis/query_categories` ({query index: sorted categories predicted with probability > 0.5})
  and `analysis/unique_categories_per_query` (list of counts, index = query).
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

QUERY_PROB_THRESHOLD = 0.5  # "predicted with prob > 0.5" for the per-query category analysis (paper Fig. 3 style)


PROGRESS_MININTERVAL_S = 2.0  # redraw at most every 2 s: negligible cost next to an iteration / image
# Prepared panoptic GT kept across a run's evaluations (GTCache): 1 GiB, ~3,500 COCO-sized 480x640 images;
# past it images are prepared again each evaluation (same numbers). Rank 0 only.
GT_CACHE_BYTES = 1 << 30


def progress_bar(total: int, desc: str, *, initial: int = 0, enabled: bool = True):
    """A tqdm bar on stderr for the main process.

    Off when `enabled` is False (ranks other than 0), when stderr is not a terminal (tqdm
    `disable=None`: logs, SLURM, subprocess pipes stay clean) and with `TQDM_DISABLE=1`.
    """
    from tqdm import tqdm

    off = not enabled or os.environ.get("TQDM_DISABLE", "") not in ("", "0", "false", "False")
    return tqdm(total=total, initial=initial, desc=desc, unit="it", file=sys.stderr, disable=True if off else None,
                mininterval=PROGRESS_MININTERVAL_S, leave=False, dynamic_ncols=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (which has no `preprocess`)."""
    return model.module if hasattr(model, "module") else model


def categories_contiguous(meta) -> list[dict]:
    """Panoptic categories keyed by contiguous id (the id space of the records and the post-processors)."""
    things = set(meta.thing_ids)
    return [{"id": i, "name": n, "isthing": int(i in things)} for i, n in enumerate(meta.class_names)]


def _to_numpy(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _build_evaluators(meta, strategy: str, panoptic: bool) -> dict[str, Any]:
    from maskformer_core.metrics import semantic as sem_metrics

    evaluators: dict[str, Any] = {}
    semantic_output = strategy in ("semantic", "general", "general_semantic", "per_pixel")
    if semantic_output:
        evaluators["sem"] = sem_metrics.SemSegEvaluator(meta.num_classes, meta.ignore_label, class_names=list(meta.class_names))
        if meta.task == "semantic":
            from maskformer_core.metrics import pq_stuff

            evaluators["pqst"] = pq_stuff.PQStuffEvaluator(meta.num_classes, meta.ignore_label)
    if panoptic:
        from maskformer_core.metrics import panoptic as pan_metrics

        evaluators["pan"] = pan_metrics.PanopticEvaluator(categories_contiguous(meta))
    return evaluators


def _semantic_names(res: dict[str, float], prefix: str) -> dict[str, float]:
    """SemSegEvaluator keys (`mIoU`, `IoU-<name>`) -> `prefix/mIoU`, `prefix/IoU/<name>`."""
    out = {}
    for key, value in res.items():
        if key.startswith("IoU-"):
            out[f"{prefix}/IoU/{key[4:]}"] = float(value)
        elif key.startswith("ACC-"):
            out[f"{prefix}/ACC/{key[4:]}"] = float(value)
        else:
            out[f"{prefix}/{key}"] = float(value)
    return out


def _pq_names(res: dict[str, float], prefix: str, suffix: str = "") -> dict[str, float]:
    """Flat PQ results ({"PQ", "PQ_th", ...} x100) -> `prefix/PQ`, `prefix/PQ_th`...; PQ^St uses suffix "St"."""
    return {f"{prefix}/{key}{suffix}": float(value) for key, value in res.items() if isinstance(value, (int, float))}


class QueryStats:
    """For every query index the set of categories it predicted (softmax prob > 0.5, no-object excluded)."""

    def __init__(self) -> None:
        self.sets: dict[int, set[int]] = {}

    def update(self, pred_logits: torch.Tensor) -> None:
        """pred_logits: [B, Q, K+1]."""
        prob = pred_logits.float().softmax(-1)[..., :-1]
        b, q, c = torch.nonzero(prob > QUERY_PROB_THRESHOLD, as_tuple=True)
        for qi, ci in zip(q.tolist(), c.tolist()):
            self.sets.setdefault(qi, set()).add(ci)

    def result(self, num_queries: int) -> dict[str, Any]:
        cats = {str(q): sorted(self.sets.get(q, ())) for q in range(num_queries)}
        return {
            "analysis/query_categories": cats,
            "analysis/unique_categories_per_query": [len(self.sets.get(q, ())) for q in range(num_queries)],
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GTCache(dict):
    """Prepared panoptic GT (`PanopticGT`) kept across the evaluations of one run, up to `max_bytes`.

    A 480x640 COCO image prepares to ~360 kB, a full-size COCO val image (800 x 1333) to ~1.3 MB: the
    5,000 images of COCO val would hold ~6.5 GB on rank 0. Images past the budget are prepared again
    at each evaluation (the same numbers, only slower), so the cache never grows past it.
    """

    def __init__(self, max_bytes: int = GT_CACHE_BYTES) -> None:
        super().__init__()
        self.max_bytes, self.nbytes = int(max_bytes), 0

    def offer(self, key: Any, gt: Any) -> bool:
        """Keep `gt` under `key` when it fits the budget; True when kept."""
        size = int(getattr(gt, "nbytes", 0))
        if key in self or self.nbytes + size > self.max_bytes:
            return False
        self[key] = gt
        self.nbytes += size
        return True


@torch.no_grad()
def evaluate(model: nn.Module, cfg, meta, device: torch.device, *, tta: bool | None = None,
             records: list[dict] | None = None, measure_fps: bool | None = None,
             progress: Callable[[int, int], None] | None = None,
             gt_cache: GTCache | None = None) -> dict[str, Any]:
    """Evaluate `model` on the validation split of `cfg.data` and return flat metrics (see module doc).

    cfg: resolved `RunConfig`; meta: the dataset's `DatasetMeta`. `tta` defaults to `cfg.test.tta`.
    gt_cache: panoptic ground truth prepared for the PQ evaluator (`PanopticGT`, about H x W bytes per
    image), keyed by the record's `pan_seg_file_name`; pass the same `GTCache` to every evaluation of a
    run (the trainer's periodic evaluations) and each image is prepared once, within its byte budget.
    """
    from maskformer_core.data.datasets import load_split
    from maskformer_core.data.mappers import build_mapper
    from maskformer_core.inference import build_postprocessor, sem_seg_to_label, tta_semantic

    model = unwrap(model)
    was_training = model.training
    model.eval()
    tta = cfg.test.tta if tta is None else tta
    measure_fps = cfg.run.measure_fps if measure_fps is None else measure_fps
    if records is None:
        records = load_split(cfg.data.dataset, cfg.data.root, cfg.data.val_split)
    if cfg.test.max_images is not None:
        records = records[: cfg.test.max_images]
    mapper = build_mapper(meta, is_train=False, test_short_size=cfg.data.test_short_size,
                          test_max_size=cfg.data.test_max_size)
    strategy = cfg.test.strategy
    pp = build_postprocessor(strategy, num_classes=meta.num_classes, thing_ids=list(meta.thing_ids),
                             object_mask_threshold=cfg.test.object_mask_threshold,
                             overlap_threshold=cfg.test.overlap_threshold)
    panoptic = meta.task == "panoptic" and strategy in ("general", "detr")
    evaluators = _build_evaluators(meta, strategy, panoptic)
    if strategy == "detr":
        evaluators.pop("sem", None)
    tta_evaluators = {}
    if tta:
        from maskformer_core.metrics import semantic as sem_metrics

        tta_evaluators["sem"] = sem_metrics.SemSegEvaluator(meta.num_classes, meta.ignore_label,
                                                            class_names=list(meta.class_names))
        if meta.task == "semantic":
            from maskformer_core.metrics import pq_stuff

            tta_evaluators["pqst"] = pq_stuff.PQStuffEvaluator(meta.num_classes, meta.ignore_label)
        tta_pp = build_postprocessor("per_pixel" if strategy == "per_pixel" else "semantic", num_classes=meta.num_classes)
    qstats = QueryStats()
    seen_sem = False  # COCO panoptic has no semantic GT: no mIoU there (official train_net.py build_evaluator)
    times: list[float] = []
    n_fps = cfg.test.fps_warmup + cfg.test.fps_images if measure_fps else 0
    bar = progress_bar(len(records), "evaluate")
    for i, record in enumerate(records):
        item = mapper(record)
        h, w = int(item["height"]), int(item["width"])
        _sync(device)
        t0 = time.perf_counter()
        batch, image_sizes = model.preprocess([item["image"].to(device)])
        outputs = model(batch)
        result = pp(outputs, image_sizes, [(h, w)], padded_size=tuple(batch.shape[-2:]))[0]
        _sync(device)
        if i < n_fps:
            times.append(time.perf_counter() - t0)
        if "pred_logits" in outputs:
            qstats.update(outputs["pred_logits"])
        gt_sem = _to_numpy(item["sem_seg"]).astype(np.int64) if "sem_seg" in item else None
        seen_sem = seen_sem or gt_sem is not None
        if gt_sem is not None and "sem" in evaluators:
            pred = _to_numpy(sem_seg_to_label(result, meta.ignore_label)).astype(np.int64)
            evaluators["sem"].process(pred, gt_sem)
            if "pqst" in evaluators:
                evaluators["pqst"].process(pred, gt_sem)
        if "pan" in evaluators:
            pan_ids, pan_segments = result["panoptic_seg"]
            image_id = record.get("image_id", i)
            if gt_cache is None:  # one evaluation: preparing the GT would cost more than it saves
                evaluators["pan"].process(_to_numpy(item["pan_seg"]), list(item["segments_info"]),
                                          _to_numpy(pan_ids), list(pan_segments), image_id=image_id)
            else:
                key = record.get("pan_seg_file_name", image_id)
                gt = gt_cache.get(key)
                if gt is None:
                    gt = evaluators["pan"].prepare_gt(_to_numpy(item["pan_seg"]),
                                                      list(item["segments_info"]), image_id=image_id)
                    gt_cache.offer(key, gt)
                evaluators["pan"].process(gt, None, _to_numpy(pan_ids), list(pan_segments), image_id=image_id)
        if tta and gt_sem is not None:
            # detectron2 DatasetMapperTTA resizes the test loader's (single-scale) image again, not the original
            scores = tta_semantic(model, item["image"].to(device), cfg.test.tta_sizes, bool(cfg.test.flip), tta_pp,
                                  max_size=cfg.test.tta_max_size, out_size=(h, w), factors=cfg.test.tta_scales)
            pred = _to_numpy(scores.argmax(0)).astype(np.int64)
            tta_evaluators["sem"].process(pred, gt_sem)
            if "pqst" in tta_evaluators:
                tta_evaluators["pqst"].process(pred, gt_sem)
        if progress is not None:
            progress(i + 1, len(records))
        bar.update(1)
    bar.close()
    metrics: dict[str, Any] = {}
    if not seen_sem:
        evaluators.pop("sem", None), evaluators.pop("pqst", None), tta_evaluators.clear()
    if "sem" in evaluators:
        metrics.update(_semantic_names(evaluators["sem"].evaluate(), "val"))
    if "pqst" in evaluators:
        metrics.update(_pq_names(evaluators["pqst"].evaluate(), "val", "St"))
    if "pan" in evaluators:
        metrics.update(_pq_names(evaluators["pan"].evaluate(), "val"))
    if "sem" in tta_evaluators:
        metrics.update(_semantic_names(tta_evaluators["sem"].evaluate(), "val_ms"))
    if "pqst" in tta_evaluators:
        metrics.update(_pq_names(tta_evaluators["pqst"].evaluate(), "val_ms", "St"))
    num_queries = outputs["pred_logits"].shape[1] if records and "pred_logits" in outputs else 0
    if num_queries:
        metrics.update(qstats.result(num_queries))
    timed = times[cfg.test.fps_warmup:]
    if measure_fps and timed:
        metrics["perf/fps"] = len(timed) / sum(timed)
        metrics["perf/fps_protocol"] = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "threads": torch.get_num_threads(),
            "batch_size": 1,
            "test_short_size": cfg.data.test_short_size,
            "test_max_size": cfg.data.test_max_size,
            "images": len(timed),
            "warmup_images": min(cfg.test.fps_warmup, len(times)),
            "includes": "preprocess + forward + post-processing (not data loading, not evaluation)",
        }
    model.train(was_training)
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
